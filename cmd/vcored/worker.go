package main

import (
	"context"
	"errors"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/bench/worker"
	"github.com/vcored/vcored/vcore/client"
)

// runWorker implements `vcored worker`: attach dataspaces (or map memory),
// touch every page once in a pattern, time each first touch, verify the
// content, and write the measurements as JSON (bench.WorkerResult). Used by
// `vcored bench` and by tests; see docs/BENCHMARKS.md.
func runWorker(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "worker", worker.Synopsis)
	flags := worker.BindFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	cfg, err := flags.Config(func(ctx context.Context, name string, size int) (worker.Mapping, error) {
		if flags.Unbound() {
			return client.Attach(ctx, name, size, client.Unbound())
		}
		return client.Attach(ctx, name, size)
	})
	if err != nil {
		return asUsage(err)
	}
	cfg.Log = e.log
	err = flags.Main(ctx, cfg, e.stdout)
	if errors.Is(err, bench.ErrUsage) {
		return asUsage(err)
	}
	return err
}
