package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/progress"
	"github.com/vcored/vcored/topology"
)

// runBench implements `vcored bench`: it starts core and the vcores itself
// with configs fitted to this machine, runs workers under local pagers,
// the central pager, the reference floors (bench.Registry) and plain
// kernel first touch, interleaved, and prints the table, the ratios, the
// targets and a summary line. --check turns a missed target into exit 1.
// See docs/BENCHMARKS.md.
func runBench(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "bench", benchSynopsis)
	flagsUsage := fs.Usage
	fs.Usage = func() {
		flagsUsage()
		writeBenchHelp(e.stdout)
	}
	workers := fs.Int("workers", 1, "workers per vcore")
	pages := fs.Int("pages", 0, fmt.Sprintf("pages each worker touches (default %d, --quick %d)", bench.DefaultPages, bench.QuickPages))
	patternS := fs.String("pattern", "seq", "access pattern: seq, random or stride")
	stride := fs.Int("stride", 16, "page stride for --pattern stride")
	faultAround := fs.Int("fault-around", 16, "pages per fault in the fault-around comparison (sequential access); 1 skips it")
	reps := fs.Int("reps", 0, fmt.Sprintf("repetitions of each mode (interleaved, every second one in reverse order; default %d, --quick %d)", bench.DefaultReps, bench.QuickReps))
	quick := fs.Bool("quick", false, fmt.Sprintf("small run: %d pages per worker (how long it takes varies ~10× between days on a shared VM)", bench.QuickPages))
	modesS := fs.String("modes", "", "comma-separated modes to run (default all fault modes; see modes below); raw_floor also selects raw_xproc and raw_cross, checkpoint also checkpoint_sync")
	ckptPages := fs.Int("ckpt-pages", 0, fmt.Sprintf("pages of the checkpoint modes' persistent dataspace (default %d = 1 GiB, --quick %d); the write loop and the restore's small size shrink with it",
		bench.CkptPages, bench.QuickCkptPages))
	jsonPath := fs.String("json", "", "write every figure and the machine description as JSON to `FILE`")
	svgPath := fs.String("svg", "", "write the latency CDF of all modes to `FILE` (SVG)")
	keepTemp := fs.Bool("keep-temp", false, "keep the temp dir (configs, daemon logs, worker results)")
	noProgress := fs.Bool("no-progress", false, "no progress bar or lines")
	check := fs.Bool("check", false, "exit 1 when a measured target is missed (see targets below); without it a finished run exits 0")
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
	if *reps < 0 || *workers < 1 || *pages < 0 || *faultAround < 1 || *ckptPages < 0 {
		return usagef("--workers and --fault-around must be at least 1, --reps, --pages and --ckpt-pages not negative")
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
	// The move mode (internal/bench/move.go) runs on its own.
	modes, move, moveOnly := takeMoveMode(modes)
	if moveOnly {
		return runMoveMode(ctx, e, exe, m, *quick, *jsonPath)
	}
	pm := progress.Auto
	if *noProgress {
		pm = progress.Off
	}
	cfg := bench.Config{
		Exe: exe, Machine: m,
		Description: bench.DescribeMachine(m, os.DirFS("/proc"), os.DirFS("/sys"), cgroups.HostMode()),
		Workers:     *workers, Pages: *pages, Pattern: pattern, Stride: *stride, FaultAround: *faultAround,
		Reps: *reps, Quick: *quick, Modes: modes, KeepTemp: *keepTemp, CkptPages: *ckptPages,
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
	if move {
		res, err := runMoveBench(ctx, e, exe, m, *quick)
		runErr = errors.Join(runErr, err)
		if res != nil {
			rep.SetMove(&bench.MoveReport{Live: moveFigures(res.Live), Restart: moveFigures(res.Restart)})
		}
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
	return benchOutcome(rep, *check, runErr)
}

// benchSynopsis is the usage line of `vcored bench`: every flag.
const benchSynopsis = "[--quick] [--check] [--modes MODE,…] [--workers N] [--pages N] [--pattern seq|random|stride] [--stride N] " +
	"[--fault-around N] [--reps N] [--ckpt-pages N] [--json FILE] [--svg FILE] [--keep-temp] [--no-progress]"

// writeBenchHelp lists the modes and the targets after the flags.
func writeBenchHelp(w io.Writer) {
	modeW := len(bench.ModeMove)
	for _, m := range bench.Registry {
		modeW = max(modeW, len(m.Name))
	}
	fmt.Fprintf(w, "\nmodes (all fault modes run, interleaved, unless --modes names some; the checkpoint modes only when named):\n")
	for _, m := range bench.Registry {
		fmt.Fprintf(w, "  %-*s %s\n", modeW, m.Name, m.Doc)
	}
	fmt.Fprintf(w, "  %-*s %s\n", modeW, bench.ModeMove, bench.MoveDoc)
	fmt.Fprintf(w, "  with --fault-around N > 1 also local_faN, raw_xproc_faN and raw_floor_faN (sequential, N pages per fault), and with a\n"+
		"  non-sequential --pattern the sequential baselines local_seq, raw_floor_seq and kernel_seq.\n")
	fmt.Fprintf(w, "\ntargets (ratios measured within the run; --check exits 1 when a measured one is missed,\n"+
		"one whose modes did not run is \"not measured\" and not checked; a goal whose floor, measured in the\n"+
		"same run, misses it is UNATTAINABLE on this machine and its floor-relative target is judged instead):\n")
	targets := bench.TargetList()
	keyW := 0
	for _, t := range targets {
		keyW = max(keyW, len(t.Key))
	}
	for _, t := range targets {
		fmt.Fprintf(w, "  %-*s %s %s\n", keyW, t.Key, t.Name, t.Goal)
		if t.FloorKey != "" {
			fmt.Fprintf(w, "  %-*s   floor: %s; judged instead when the floor misses the goal: %s\n", keyW, "", t.FloorKey, t.Instead)
		}
	}
}

// errTargetsMissed is what --check returns when a target was missed (exit 1).
var errTargetsMissed = errors.New("targets missed")

// benchOutcome is the error `vcored bench` ends with: the run's own error
// (exit 1), else with check the missed targets (exit 1), else none.
func benchOutcome(rep *bench.Report, check bool, runErr error) error {
	if runErr != nil || !check {
		return runErr
	}
	missed := rep.Missed()
	if len(missed) == 0 {
		return nil
	}
	var parts []string
	for _, t := range missed {
		parts = append(parts, fmt.Sprintf("%s = %.3g (goal %s)", t.Key, t.Value, t.Goal))
	}
	return fmt.Errorf("%w (--check): %s", errTargetsMissed, strings.Join(parts, "; "))
}
