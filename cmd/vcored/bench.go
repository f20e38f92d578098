package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/progress"
	"github.com/vcored/vcored/topology"
)

// runBench implements `vcored bench`: it starts core and the vcores itself
// with configs fitted to this machine, runs workers under local pagers,
// the central pager, a raw userfaultfd floor and plain kernel first touch,
// interleaved, and prints the table, the ratios and the targets. See
// docs/BENCHMARKS.md.
func runBench(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "bench", "[--quick] [--workers N] [--pages N] [--pattern seq|random|stride] [--fault-around N] [--reps N] [--json FILE] [--svg FILE]")
	workers := fs.Int("workers", 1, "workers per vcore")
	pages := fs.Int("pages", 0, fmt.Sprintf("pages each worker touches (default %d, --quick %d)", bench.DefaultPages, bench.QuickPages))
	patternS := fs.String("pattern", "seq", "access pattern: seq, random or stride")
	stride := fs.Int("stride", 16, "page stride for --pattern stride")
	faultAround := fs.Int("fault-around", 16, "pages per fault in the fault-around comparison (sequential access); 1 skips it")
	reps := fs.Int("reps", bench.DefaultReps, "repetitions of each mode (interleaved), at least 3 for a report")
	quick := fs.Bool("quick", false, "small run (under 20 s)")
	modesS := fs.String("modes", "", "comma-separated subset of local,central,raw_floor,kernel (default all)")
	jsonPath := fs.String("json", "", "write every figure and the machine description as JSON to `FILE`")
	svgPath := fs.String("svg", "", "write the latency CDF of all modes to `FILE` (SVG)")
	keepTemp := fs.Bool("keep-temp", false, "keep the temp dir (configs, daemon logs, worker results)")
	noProgress := fs.Bool("no-progress", false, "no progress bar or lines")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	pattern, err := bench.ParsePattern(*patternS)
	if err != nil {
		return asUsage(err)
	}
	if *reps < 1 || *workers < 1 || *pages < 0 || *faultAround < 1 {
		return usagef("--reps, --workers and --fault-around must be at least 1, --pages not negative")
	}
	var modes []string
	if *modesS != "" {
		for m := range strings.SplitSeq(*modesS, ",") {
			modes = append(modes, strings.TrimSpace(m))
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("vcored bench needs root (userfaultfd, cgroups, the daemons): run it with sudo")
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	m, err := topology.Host()
	if err != nil {
		return err
	}
	pm := progress.Auto
	if *noProgress {
		pm = progress.Off
	}
	cfg := bench.Config{
		Exe: exe, Machine: m,
		Description: bench.DescribeMachine(m, os.DirFS("/proc"), os.DirFS("/sys"), cgroups.HostMode()),
		Workers:     *workers, Pages: *pages, Pattern: pattern, Stride: *stride, FaultAround: *faultAround,
		Reps: *reps, Quick: *quick, Modes: modes, KeepTemp: *keepTemp,
		Progress: e.stderr, ProgressMode: pm, Log: e.log,
	}
	rep, runErr := bench.Run(ctx, cfg)
	if errors.Is(runErr, bench.ErrUsage) {
		return asUsage(runErr)
	}
	if rep == nil {
		return runErr
	}
	if err := rep.WriteText(e.stdout); err != nil {
		return errors.Join(runErr, err)
	}
	if *jsonPath != "" {
		if err := rep.WriteJSON(*jsonPath); err != nil {
			return errors.Join(runErr, err)
		}
	}
	if *svgPath != "" {
		if err := rep.WriteSVG(*svgPath); err != nil {
			return errors.Join(runErr, err)
		}
	}
	return runErr
}
