package main

import (
	"context"
	"errors"
)

// runStatus is not built yet; see the issue that introduces it.
func runStatus(ctx context.Context, e *env, args []string) error {
	return errors.New("not implemented yet")
}
