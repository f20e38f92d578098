package main

import (
	"context"
	"errors"
	"log/slog"
	"os"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/vcore"
)

// runVcore is `vcored vcore --config FILE`: the per-node daemon. It claims
// its partition from core, runs its subsystems in their cgroups and serves
// their workers' page faults until SIGTERM/SIGINT, then stops them, removes
// their cgroups and releases the lease. A bad configuration or a refused
// claim exits 2 having created nothing.
func runVcore(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "vcore", "--config FILE")
	path := fs.String("config", "", "the vcore `file` (e.g. configs/node0.toml)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" || fs.NArg() > 0 {
		return usagef("need --config FILE and no arguments")
	}
	cfg, err := config.LoadVCore(*path)
	if err != nil {
		return asUsage(err)
	}
	log := e.log
	if lvl, ok := vcoreLogLevel(cfg.LogLevel); ok && os.Getenv("VCORED_DEBUG") == "" {
		log = slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: lvl}))
	}
	v, err := vcore.New(vcore.Options{Config: cfg, Log: log})
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

// vcoreLogLevel maps a config log level to slog's.
func vcoreLogLevel(l config.LogLevel) (slog.Level, bool) {
	switch l {
	case config.LogDebug:
		return slog.LevelDebug, true
	case config.LogInfo:
		return slog.LevelInfo, true
	case config.LogWarn:
		return slog.LevelWarn, true
	case config.LogError:
		return slog.LevelError, true
	}
	return 0, false
}
