package main

import (
	"context"
	"errors"

	"github.com/vcored/vcored/core"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/topology"
)

func runCore(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "core", "--config FILE [--pager local|central]")
	path := fs.String("config", "/etc/vcored/core.toml", "core configuration file")
	mode := fs.String("pager", "", `override the config's pager mode for this run: "local" or "central"`)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments: %v", fs.Args())
	}
	if *mode != "" && *mode != "local" && *mode != "central" {
		return usagef("--pager %q: want local or central", *mode)
	}
	if err := needRoot(e, "it creates cgroups, writes its ledger under state_dir, listens on a socket under /run and serves workers' userfaultfds"); err != nil {
		return err
	}
	cfg, err := config.LoadCore(*path)
	if err != nil {
		return asUsage(err)
	}
	log := daemonLogger(e, cfg.LogLevel)
	m, err := topology.Host()
	if err != nil {
		return err
	}
	for _, n := range m.Notes {
		log.Info("topology inferred", "note", n)
	}
	c, err := core.New(core.Options{Config: cfg, Machine: m, PagerMode: *mode, Log: log.With("daemon", "core")})
	if errors.Is(err, core.ErrConfig) {
		return asUsage(err)
	}
	if err != nil {
		return err
	}
	return c.Run(ctx)
}
