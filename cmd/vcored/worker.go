package main

import (
	"context"
	"errors"
)

// runWorker is not built yet; see the issue that introduces it.
func runWorker(ctx context.Context, e *env, args []string) error {
	return errors.New("not implemented yet")
}
