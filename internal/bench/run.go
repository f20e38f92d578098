package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/progress"
	"github.com/vcored/vcored/topology"
)

// Config is one bench run.
type Config struct {
	// Exe is the vcored binary run as worker and daemons (os.Executable()).
	Exe     string
	Machine *topology.Machine
	// Description is the Machine part of the report.
	Description Machine
	// Workers per vcore (and per partition for the directly run modes).
	Workers int
	// Pages each worker touches per dataspace.
	Pages   int
	Pattern Pattern
	Stride  int
	// FaultAround is the comparison's pages per fault (1 = no comparison).
	FaultAround int
	Reps        int
	Quick       bool
	// Modes restricts the run to these modes (nil = all).
	Modes []string
	// Seed is the content seed of every dataspace.
	Seed uint64
	// CkptPages, if positive, is the size in pages of the checkpoint
	// modes' persistent dataspace (default CkptPages, --quick
	// QuickCkptPages); their other sizes shrink with it (ckptSizes).
	CkptPages int
	// KeepTemp keeps the temp dir (configs, logs, results) for inspection.
	KeepTemp bool
	// Progress is where progress goes (nil: nowhere) and how.
	Progress     io.Writer
	ProgressMode progress.Mode
	Log          *slog.Logger
}

// Quick-mode sizes: the whole --quick run stays well under 20 s here.
const (
	QuickPages   = 2048
	DefaultPages = 16384
	DefaultReps  = 3
	// QuickReps: --quick runs 5 repetitions (each quick repetition takes
	// ~2 s here): the ratios taken rep by rep need pairs more than pages.
	QuickReps = 5
)

// run is one measured run in the plan.
type run struct {
	mode        string
	base        string           // the family it belongs to (--modes selects by it or by mode)
	daemon      config.PagerMode // "" for the direct raw/xproc/kernel workers
	worker      WorkerMode
	pattern     Pattern
	faultAround int
	shared      bool
	// zero gives the run zero-filled content instead of the pattern: the
	// fault-around runs compare a page copy with the kernel's zero fill.
	zero bool
	// crossCPU pins the raw handler to core's CPU instead of the toucher's.
	crossCPU bool
	// prefetch turns prefetch on in the workers' own dataspace.
	prefetch bool
	// coreOnly and warm: see ModeSpec.
	coreOnly, warm bool
	// ckpt and syncTracking: see ModeSpec.
	ckpt         string
	syncTracking bool
	optIn        bool
	// floorOf: see ModeSpec.FloorOf.
	floorOf []string
	// slot tells apart two runs of a mode in one repetition (the ratios
	// taken pair by pair match runs of the same repetition and slot).
	slot int
}

// Plan returns the runs of one repetition, in order. The registered modes
// come first; with fault-around > 1, the local and raw fault-around runs on
// sequential access follow; if the main pattern is not sequential, the
// sequential baselines too.
func Plan(c Config) []run {
	var all []run
	nonSeq := c.Pattern != PatternSeq && c.Pattern != ""
	for _, m := range Registry {
		pattern := c.Pattern
		if m.Pattern != "" {
			pattern = m.Pattern
		}
		floorOf := m.FloorOf
		if nonSeq {
			// local_prefetch is compared with kernel_seq, not with the
			// kernel's first touch in the main pattern; local_prefetch_<p>
			// with local.
			switch m.Name {
			case ModeKernel:
				floorOf = slices.DeleteFunc(slices.Clone(floorOf), func(s string) bool { return s == ModeLocalPrefetch })
			case ModeLocal:
				floorOf = append(slices.Clone(floorOf), ModeLocalPrefetch)
			}
		}
		all = append(all, run{mode: m.Name, base: m.Family, daemon: m.Daemon, worker: m.Worker, pattern: pattern,
			faultAround: max(m.FaultAround, 1), shared: m.Shared, crossCPU: m.CrossCPU, prefetch: m.Prefetch, zero: m.Zero,
			coreOnly: m.CoreOnly, warm: m.Warm, ckpt: m.Ckpt, syncTracking: m.SyncTracking, optIn: m.OptIn,
			floorOf: floorOf})
		if m.Name == ModeLocal && nonSeq {
			// Prefetch on the main pattern, compared with local (prefetch
			// off) rep by rep: right after it, so that the pair sees the
			// same machine (Run reverses every other repetition, so the
			// pair's order alternates).
			on := run{mode: PrefetchPatternMode(c.Pattern), base: ModeLocalPrefetch, daemon: config.PagerLocal,
				worker: WorkerUffd, pattern: c.Pattern, faultAround: 1, prefetch: true}
			// More pairs, alternating the order (off on, on off, off on,
			// on off): randomPairs per repetition, each taken as a ratio
			// of its own. One pair's ratio moves ±20 % on this VM class;
			// the goal is 5 %, and the median of 10 pairs (2 per
			// repetition of --quick) still missed it in half the runs
			// where 24 pairs put prefetch on below off every time.
			off := all[len(all)-1]
			all = append(all, on)
			for slot := 1; slot < randomPairs; slot++ {
				o, n := off, on
				o.slot, n.slot = slot, slot
				if slot%2 == 1 {
					all = append(all, n, o)
				} else {
					all = append(all, o, n)
				}
			}
		}
	}
	// raw_xproc runs right before local: local's framework targets
	// (median and p99) compare the two, so they should see the same
	// machine (repOrder then alternates which goes first).
	if i := slices.IndexFunc(all, func(r run) bool { return r.mode == ModeRawXproc }); i >= 0 {
		x := all[i]
		all = slices.Delete(all, i, i+1)
		if j := slices.IndexFunc(all, func(r run) bool { return r.mode == ModeLocal }); j >= 0 {
			all = slices.Insert(all, j, x)
		} else {
			all = slices.Insert(all, i, x)
		}
	}
	if nonSeq {
		// The kernel's sequential first touch local_prefetch is compared
		// with (unless the fault-around runs add it below).
		if c.FaultAround <= 1 {
			all = append(all, run{mode: SeqMode(ModeKernel), base: ModeLocalPrefetch, worker: WorkerKernel, pattern: PatternSeq, faultAround: 1})
		}
	}
	if c.FaultAround > 1 {
		all = append(all,
			run{mode: FaultAroundMode(ModeLocal, c.FaultAround), base: ModeLocal, daemon: config.PagerLocal, worker: WorkerUffd, pattern: PatternSeq, faultAround: c.FaultAround, zero: true},
			// local_faN's floor (a pager outside the worker), next to it.
			run{mode: FaultAroundMode(ModeRawXproc, c.FaultAround), base: ModeRawXproc, worker: WorkerXproc, pattern: PatternSeq, faultAround: c.FaultAround, zero: true,
				floorOf: []string{ModeLocal}},
			run{mode: FaultAroundMode(ModeRaw, c.FaultAround), base: ModeRaw, worker: WorkerRaw, pattern: PatternSeq, faultAround: c.FaultAround, zero: true},
		)
		if c.Pattern != PatternSeq {
			all = append(all,
				run{mode: SeqMode(ModeLocal), base: ModeLocal, daemon: config.PagerLocal, worker: WorkerUffd, pattern: PatternSeq, faultAround: 1},
				run{mode: SeqMode(ModeRaw), base: ModeRaw, worker: WorkerRaw, pattern: PatternSeq, faultAround: 1},
				run{mode: SeqMode(ModeKernel), base: ModeKernel, worker: WorkerKernel, pattern: PatternSeq, faultAround: 1,
					floorOf: []string{ModeLocalPrefetch}},
			)
		}
	}
	if c.Modes == nil {
		return slices.DeleteFunc(all, func(r run) bool { return r.optIn })
	}
	var out []run
	for _, r := range all {
		floor := slices.ContainsFunc(r.floorOf, func(m string) bool { return slices.Contains(c.Modes, m) })
		if floor || slices.Contains(c.Modes, r.base) || slices.Contains(c.Modes, r.mode) {
			out = append(out, r)
		}
	}
	return out
}

// randomPairs is how many prefetch on/off pairs (local_prefetch_<pattern>
// next to local) each repetition of a non-sequential --pattern runs.
const randomPairs = 4

func (c *Config) defaults() error {
	if c.Workers < 1 {
		c.Workers = 1
	}
	if c.Pages < 1 {
		c.Pages = DefaultPages
		if c.Quick {
			c.Pages = QuickPages
		}
	}
	if c.Reps < 1 {
		c.Reps = DefaultReps
		if c.Quick {
			c.Reps = QuickReps
		}
	}
	if c.Pattern == "" {
		c.Pattern = PatternSeq
	}
	if c.Stride < 1 {
		c.Stride = 16
	}
	if c.FaultAround < 1 {
		c.FaultAround = 16
	}
	if c.FaultAround > config.MaxFaultAround {
		return fmt.Errorf("%w: fault-around %d (at most %d)", ErrUsage, c.FaultAround, config.MaxFaultAround)
	}
	if c.Seed == 0 {
		c.Seed = 0x5eed
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	for _, m := range c.Modes {
		if !slices.Contains(ValidModes, m) {
			return fmt.Errorf("%w: mode %q (want %s)", ErrUsage, m, strings.Join(ValidModes, ", "))
		}
	}
	if c.Exe == "" || c.Machine == nil {
		return fmt.Errorf("%w: no executable or machine", ErrUsage)
	}
	return nil
}

// Run measures every planned mode, interleaved (A B C D A B C D …), and
// builds the report. Ctrl-C (ctx cancelled) stops the children, lets the
// daemons remove their cgroups, removes the temp dir, and returns the
// partial report with ctx's error. Runs that fail are recorded in the
// report; Run then returns an error naming them as well as the report.
func Run(ctx context.Context, c Config) (*Report, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	layout, err := PlanLayout(c.Machine)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "vcored-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	cgParent := fmt.Sprintf("vcored-bench-%d", os.Getpid())
	defer func() {
		leftovers := removeCgroupTrees(cgParent)
		for _, l := range leftovers {
			c.Log.Warn("cgroup left behind", "path", l)
		}
		if c.KeepTemp {
			c.Log.Info("kept temp dir", "dir", tmp)
			return
		}
		if err := os.RemoveAll(tmp); err != nil {
			c.Log.Warn("remove temp dir", "dir", tmp, "err", err)
		}
	}()

	plan := Plan(c)
	if len(plan) == 0 {
		return nil, fmt.Errorf("%w: no mode selected", ErrUsage)
	}
	// The bench is not pinned: its children (core, the vcores) inherit its
	// affinity and must see every CPU they may lease. It stays out of the
	// measured CPUs' way by polling files, not the daemons (waitWorkers).
	params := Params{Workers: c.Workers, Pages: c.Pages, PageSize: os.Getpagesize(), Pattern: string(c.Pattern),
		FaultAround: c.FaultAround, Reps: c.Reps, Quick: c.Quick, CoreCPU: int(layout.CoreCPU)}
	if c.Pattern == PatternStride {
		params.Stride = c.Stride
	}
	sizes := ckptSizes(c.Quick, c.CkptPages)
	if slices.ContainsFunc(plan, func(r run) bool { return r.ckpt != "" }) {
		params.Checkpoint = &sizes
	}
	for _, p := range layout.Partitions {
		params.Partitions = append(params.Partitions, struct {
			Node int    `json:"node"`
			CPUs string `json:"cpus"`
		}{int(p.Node), p.CPUs.String()})
	}

	bar := progress.New(progressWriter(c.Progress), len(plan)*c.Reps, c.ProgressMode, "vcored bench")
	defer bar.Finish()
	start := time.Now()
	var samples []RunSample
	k := 0
	var failed []string
loop:
	for rep := 1; rep <= c.Reps; rep++ {
		for _, r := range repOrder(plan, rep) {
			if ctx.Err() != nil {
				break loop
			}
			k++
			bar.Start(fmt.Sprintf("rep %d/%d %s", rep, c.Reps, r.mode))
			dir := filepath.Join(tmp, fmt.Sprintf("r%d", k))
			var s RunSample
			switch {
			case r.ckpt != "":
				sz := sizes
				if r.syncTracking {
					// Only its write loop is reported: the persistent
					// dataspace need not be larger than the loop.
					sz.Pages = sz.TrackPages
				}
				cr := &CkptRun{DaemonRun: DaemonRun{Dir: dir, Exe: c.Exe, CgroupParent: fmt.Sprintf("%s/r%d", cgParent, k),
					Pager: config.PagerLocal, FaultAround: 1, Layout: layout, Workers: 1, Pages: sz.Pages, Seed: c.Seed},
					Role: r.ckpt, Sync: r.syncTracking, Sizes: sz, DDFirst: rep%2 == 0}
				s = runCheckpoint(ctx, cr, c.Log)
			case r.daemon != "":
				dr := &DaemonRun{Dir: dir, Exe: c.Exe, CgroupParent: fmt.Sprintf("%s/r%d", cgParent, k), Pager: r.daemon,
					FaultAround: r.faultAround, Layout: layout, Workers: c.Workers, Pages: c.Pages,
					Pattern: r.pattern, Stride: c.Stride, Seed: c.Seed, Shared: r.shared, Zero: r.zero, Prefetch: r.prefetch,
					CoreOnly: r.coreOnly, Warm: r.warm}
				s = runDaemons(ctx, dr, c.Log)
			default:
				s = runDirect(ctx, c, layout, r, dir, fmt.Sprintf("%s/r%d", cgParent, k))
			}
			s.Mode, s.Rep, s.Slot = r.mode, rep, r.slot
			if s.Err != nil {
				failed = append(failed, fmt.Sprintf("%s rep %d: %v", r.mode, rep, s.Err))
				c.Log.Warn("run failed", "mode", r.mode, "rep", rep, "err", s.Err)
			}
			samples = append(samples, s)
			bar.Done()
		}
	}
	bar.Finish()
	rep := Build(c.Description, params, samples)
	rep.DurationS = time.Since(start).Seconds()
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("bench: interrupted: %w", err)
	}
	if len(failed) > 0 {
		return rep, fmt.Errorf("bench: %d of %d runs failed: %s", len(failed), len(samples), strings.Join(failed, "; "))
	}
	return rep, nil
}

// repOrder is the order of repetition rep's runs: the plan, reversed in
// every second repetition (A B C, C B A, A B C, …), so that neighbours
// in the plan — a mode and its floor, prefetch on and off — run next to
// each other and each goes first as often as the other; a drift of the
// machine during a repetition then favours neither.
func repOrder(plan []run, rep int) []run {
	if rep%2 == 1 {
		return plan
	}
	r := slices.Clone(plan)
	slices.Reverse(r)
	return r
}

func progressWriter(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// runDirect runs the raw or kernel workers as children of the bench: Workers
// per partition at once, each pinned like a vcore's worker would be and in
// cgroups like a vcore's worker's (directCgroups), under cgParent.
func runDirect(ctx context.Context, c Config, layout Layout, r run, dir, cgParent string) RunSample {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return RunSample{Err: err}
	}
	var extra hw.CPUSet
	if r.crossCPU {
		// raw_cross's handler runs on core's CPU, as the central pager.
		extra = hw.NewSet(layout.CoreCPU)
	}
	procs, cleanup, err := directCgroups(cgParent, layout, c.Workers, c.Pages, extra)
	if err != nil {
		return RunSample{Err: err}
	}
	defer cleanup()
	verify := Verify{Kind: "pattern", Seed: c.Seed}
	if r.worker == WorkerKernel || r.zero {
		verify = Verify{Kind: "zero"}
	}
	type job struct {
		path string
		args []string
	}
	var jobs []job
	for _, p := range layout.Partitions {
		cpus := p.CPUs.Slice()
		for w := range c.Workers {
			path := filepath.Join(dir, fmt.Sprintf("worker-n%d-%d.json", p.Node, w))
			args := []string{"worker", "--mode", string(r.worker), "--dataspace", "anon",
				"--pages", strconv.Itoa(c.Pages), "--pattern", string(r.pattern), "--stride", strconv.Itoa(c.Stride),
				"--verify", verify.String(), "--cpu", strconv.Itoa(int(cpus[w%len(cpus)])), "--result", path}
			if r.worker == WorkerRaw || r.worker == WorkerXproc {
				args = append(args, "--fault-around", strconv.Itoa(r.faultAround))
			}
			if r.crossCPU {
				args = append(args, "--handler-cpu", strconv.Itoa(int(layout.CoreCPU)))
			}
			// Through the same shim a vcore starts its subsystems with:
			// the worker is in its cgroups before its first instruction.
			shim := []string{"exec-in-cgroup"}
			for _, f := range procs[p.Node][w] {
				shim = append(shim, "--procs", f)
			}
			args = append(append(shim, "--", c.Exe), args...)
			jobs = append(jobs, job{path: path, args: args})
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(jobs))
	for j, jb := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[j] = runChild(ctx, c.Exe, jb.args)
		}()
	}
	wg.Wait()
	s := RunSample{}
	for j, jb := range jobs {
		if errs[j] != nil {
			s.Err = errors.Join(s.Err, errs[j])
		}
		res, err := ReadWorkerResult(jb.path)
		if err != nil {
			if errs[j] == nil {
				s.Err = errors.Join(s.Err, err)
			}
			continue
		}
		s.Results = append(s.Results, res)
	}
	return s
}

// directCgroups makes, for the directly run workers of one run, the
// cgroups a vcore gives its workers: per partition a group with its CPUs,
// its node's memory and the memory a vcore would lease (cpuset, memory,
// pids), and in it one group per worker with a subsystem's memory limit.
// A page the floors' and the kernel's workers fault in is then charged
// through as many memory-cgroup levels as a local worker's (on this VM,
// v1 memcg, ~0.2–0.3 µs a page): the comparison is of pagers, not of
// cgroup accounting. It returns the cgroup.procs files per node and
// worker, and a func that removes the groups.
func directCgroups(cgParent string, layout Layout, workers, pages int, extraCPUs hw.CPUSet) (map[hw.Node][][]string, func(), error) {
	m, err := cgroups.New(cgroups.Options{})
	if err != nil {
		return nil, func() {}, fmt.Errorf("bench: cgroups for the direct workers: %w", err)
	}
	dr := DaemonRun{Pages: pages}
	sub := dr.workerMemory()
	procs := map[hw.Node][][]string{}
	cleanup := func() { _ = removeCgroupTrees(cgParent) } // the run's whole tree, parents Create made included
	for _, p := range layout.Partitions {
		res := cgroups.Resources{CPUs: p.CPUs.Union(extraCPUs), Mems: hw.NewSet(p.Node), MemoryLimit: hw.Bytes(workers)*sub + 64*hw.MiB}
		part := fmt.Sprintf("%s/node%d", cgParent, p.Node)
		if _, err := m.Create(part, res); err != nil {
			cleanup()
			return nil, func() {}, fmt.Errorf("bench: cgroup for the direct workers: %w", err)
		}
		for w := range workers {
			res.MemoryLimit = sub
			wg, err := m.Create(fmt.Sprintf("%s/w%d", part, w), res)
			if err != nil {
				cleanup()
				return nil, func() {}, fmt.Errorf("bench: cgroup for a direct worker: %w", err)
			}
			procs[p.Node] = append(procs[p.Node], wg.ProcsFiles())
		}
	}
	return procs, cleanup, nil
}

// runChild runs exe args to completion; SIGTERM on cancellation.
func runChild(ctx context.Context, exe string, args []string) error {
	cmd := exec.CommandContext(ctx, exe, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = childAttr()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		what := args
		if i := slices.Index(args, "--"); i >= 0 && len(args) > i+4 {
			what = args[i+2 : i+5] // the command the exec-in-cgroup shim runs
		} else if len(args) > 3 {
			what = args[:3]
		}
		return fmt.Errorf("%s %s: %w: %s", filepath.Base(exe), strings.Join(what, " "), err, tail(stderr.String(), 400))
	}
	return nil
}

// childAttr puts a child in its own process group (a terminal's Ctrl-C
// reaches only the bench, which then stops children in order) and sends it
// SIGTERM if the bench dies.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
