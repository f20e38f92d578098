package main

import (
	"context"
	"errors"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/vcore"
)

// runVcore is `vcored vcore --config FILE`: the per-node daemon. It claims
// its partition from core, runs its subsystems in their cgroups and serves
// their workers' page faults until SIGTERM/SIGINT, then stops them, removes
// their cgroups and releases the lease. A bad configuration or a refused
// claim exits 2 having created nothing. Until core answers it logs
// "waiting for core" and retries for --core-timeout, then exits 1.
func runVcore(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "vcore", "--config FILE [--core-timeout DURATION]")
	path := fs.String("config", "", "the vcore `file` (e.g. configs/node0.toml)")
	coreTimeout := fs.Duration("core-timeout", vcore.DefaultDialTimeout,
		"how long to keep trying to reach core at start before giving up (exit 1)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" || fs.NArg() > 0 {
		return usagef("need --config FILE and no arguments")
	}
	if *coreTimeout <= 0 {
		return usagef("--core-timeout %v: must be positive", *coreTimeout)
	}
	if err := needRoot(e, "it creates cgroups, starts subsystems in them, pins threads and serves workers' userfaultfds"); err != nil {
		return err
	}
	cfg, err := config.LoadVCore(*path)
	if err != nil {
		return asUsage(err)
	}
	v, err := vcore.New(vcore.Options{Config: cfg, Log: daemonLogger(e, cfg.LogLevel), DialTimeout: *coreTimeout})
	if err != nil {
		if errors.Is(err, vcore.ErrConfig) {
			return asUsage(err)
		}
		return err
	}
	err = v.Run(ctx)
	if errors.Is(err, vcore.ErrClaimRefused) || errors.Is(err, vcore.ErrConfig) {
		return asUsage(err)
	}
	return err
}
