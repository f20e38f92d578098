package main

import (
	"context"
	"errors"
)

// runVcore is not built yet; see the issue that introduces it.
func runVcore(ctx context.Context, e *env, args []string) error {
	return errors.New("not implemented yet")
}
