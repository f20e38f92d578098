package main

import (
	"context"
	"errors"
)

// runCheck is not built yet; see the issue that introduces it.
func runCheck(ctx context.Context, e *env, args []string) error {
	return errors.New("not implemented yet")
}
