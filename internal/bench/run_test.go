package bench_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/bench/worker"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/progress"
	"github.com/vcored/vcored/topology"
)

// workerEnv makes this test binary act as `vcored worker` when the bench
// runs it as a child (os.Args[0] worker …).
const workerEnv = "VCORED_BENCH_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "exec-in-cgroup" {
		// The shim the bench starts its direct workers through (vcored
		// exec-in-cgroup): join the groups, exec this binary's worker.
		var procs []string
		args := os.Args[2:]
		for len(args) >= 2 && args[0] == "--procs" {
			procs, args = append(procs, args[1]), args[2:]
		}
		if len(args) == 0 || args[0] != "--" {
			fmt.Fprintln(os.Stderr, "exec-in-cgroup: want --procs FILE... -- command")
			os.Exit(127)
		}
		fmt.Fprintln(os.Stderr, "exec-in-cgroup:", cgroups.JoinAndExec(procs, args[1:]))
		os.Exit(127)
	}
	if os.Getenv(workerEnv) == "1" && (len(os.Args) < 2 || os.Args[1] != "worker") {
		// A child that is not a worker must never run the tests again.
		fmt.Fprintln(os.Stderr, "bench test helper: unknown role", os.Args[1:])
		os.Exit(2)
	}
	if os.Getenv(workerEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "worker" {
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		f := worker.BindFlags(fs)
		if err := fs.Parse(os.Args[2:]); err != nil {
			os.Exit(2)
		}
		cfg, err := f.Config(nil)
		if err == nil {
			err = f.Main(context.Background(), cfg, os.Stdout)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRunRawAndKernelForReal runs the engine for real on the raw floor and
// kernel modes (the worker is this test binary): counts, verification,
// placement and the report's text, JSON and SVG.
func TestRunRawAndKernelForReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the raw floor uses userfaultfd (vm.unprivileged_userfaultfd=0)")
	}
	t.Setenv(workerEnv, "1")
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bench.PlanLayout(m); err != nil {
		t.Skipf("machine too small for the bench layout: %v", err)
	}
	// Temp dirs in a directory of this test's own (other benches on the
	// machine make theirs in /tmp meanwhile).
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	var prog bytes.Buffer
	const pages = 128
	rep, err := bench.Run(context.Background(), bench.Config{
		Exe: os.Args[0], Machine: m, Description: bench.DescribeMachine(m, os.DirFS("/proc"), os.DirFS("/sys"), "test"),
		Workers: 2, Pages: pages, Pattern: bench.PatternRandom, FaultAround: 16, Reps: 2,
		Modes:    []string{bench.ModeRaw, bench.ModeKernel},
		Progress: &prog, ProgressMode: progress.Lines,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	layout, _ := bench.PlanLayout(m)
	workers := 2 * len(layout.Partitions)
	for _, mode := range []string{"raw_floor", "raw_xproc", "kernel", "raw_cross", "raw_floor_fa16", "raw_floor_seq", "kernel_seq"} {
		md, ok := rep.Modes[mode]
		if !ok {
			t.Fatalf("mode %s missing; have %v", mode, rep.ModeOrder())
		}
		want := int64(2 * workers * pages)
		if md.Runs != 2 || md.Faults != want || md.VerifiedPages != want || md.Hist().Count() != want {
			t.Errorf("%s: runs %d faults %d verified %d timed %d, want 2 runs and %d", mode, md.Runs, md.Faults, md.VerifiedPages, md.Hist().Count(), want)
		}
		if md.LocalNodeShare != 1 || md.MedianNS <= 0 || md.IPIs == nil || len(md.Errors) > 0 {
			t.Errorf("%s: local share %v, median %d, ipis %v, errors %v", mode, md.LocalNodeShare, md.MedianNS, md.IPIs, md.Errors)
		}
	}
	// A fault may be raised twice (served twice) but every page needs one.
	for mode, min := range map[string]int64{"raw_floor": int64(2 * workers * pages), "raw_xproc": int64(2 * workers * pages), "raw_floor_fa16": int64(2 * workers * pages / 16)} {
		if got := rep.Modes[mode].ServedFaults; got < min {
			t.Errorf("%s: served faults %d, want at least %d", mode, got, min)
		}
	}
	rt := rep.Ratios
	if rt.RawOverKernelMedian <= 0 || rt.RawFaultAroundOverKernel <= 0 || rt.LocalOverRawMedian != 0 || rt.RawCrossOverRawMedian <= 0 ||
		rt.RawXprocOverRawMedian <= 0 || rt.LocalOverRawXprocMedian != 0 {
		t.Errorf("ratios %+v", rt)
	}
	if got := strings.Count(prog.String(), "\n"); got != 1+2*7 {
		t.Errorf("progress lines %d, want %d:\n%s", got, 1+2*7, prog.String())
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"raw_floor", "raw_xproc", "kernel_seq", "targets (", "not measured", "summary: local vs central not measured", "raw_xproc  floor of any pager outside the worker"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, text.String())
		}
	}
	dir := t.TempDir()
	if err := rep.WriteJSON(filepath.Join(dir, "r.json")); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteSVG(filepath.Join(dir, "r.svg")); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "vcored-bench-*")); len(left) > 0 {
		t.Errorf("temp dirs left behind: %v", left)
	}
}
