package main

import (
	"context"
	"errors"
)

// runTopology is not built yet; see the issue that introduces it.
func runTopology(ctx context.Context, e *env, args []string) error {
	return errors.New("not implemented yet")
}
