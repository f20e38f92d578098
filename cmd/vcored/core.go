package main

import (
	"context"
	"errors"
)

// runCore is not built yet; see the issue that introduces it.
func runCore(ctx context.Context, e *env, args []string) error {
	return errors.New("not implemented yet")
}
