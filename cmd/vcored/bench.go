package main

import (
	"context"
	"errors"
)

// runBench is not built yet; see the issue that introduces it.
func runBench(ctx context.Context, e *env, args []string) error {
	return errors.New("not implemented yet")
}
