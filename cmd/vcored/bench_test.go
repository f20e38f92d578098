package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/hist"
)

// fakeReport builds a report from fake worker results: every first touch
// of a mode takes the given µs.
func fakeReport(us map[string]int64) *bench.Report {
	var samples []bench.RunSample
	for rep := 1; rep <= 3; rep++ {
		for mode, v := range us {
			h := hist.New()
			for range 100 {
				h.Record(v * 1000)
			}
			samples = append(samples, bench.RunSample{Mode: mode, Rep: rep, Results: []*bench.WorkerResult{{
				Dataspaces: []bench.DataspaceResult{{Name: bench.LocalDataspace, Pages: 100, Latency: h.Snapshot(), TouchNS: 100 * v * 1000, WallNS: 200 * v * 1000, VerifiedPages: 100}},
			}}})
		}
	}
	return bench.Build(bench.Machine{}, bench.Params{Pattern: "seq", FaultAround: 1}, samples)
}

// TestBenchCheckExitCodes: a plain run exits 0 whatever the targets say;
// --check exits 1 when a measured target is missed and 0 when all measured
// ones pass (unmeasured ones are not checked); a failed run exits 1.
func TestBenchCheckExitCodes(t *testing.T) {
	// local 10 µs over raw_xproc 9 µs: 1.11 ≤ 1.15; central 100 µs: 10×, over
	// raw_cross ÷ raw_xproc = 50 ÷ 9: 1.8 ≥ 0.8.
	pass := fakeReport(map[string]int64{bench.ModeLocal: 10, bench.ModeCentral: 100, bench.ModeRawXproc: 9, bench.ModeRawCross: 50})
	// local 20 µs over raw_xproc 9 µs: 2.2× misses ≤ 1.15 and the p99 goal.
	miss := fakeReport(map[string]int64{bench.ModeLocal: 20, bench.ModeCentral: 200, bench.ModeRawXproc: 9})
	// Only the floors: no target measured.
	none := fakeReport(map[string]int64{bench.ModeRaw: 5, bench.ModeRawXproc: 9})
	runFailed := errors.New("bench: 1 of 18 runs failed")
	for _, tc := range []struct {
		name   string
		rep    *bench.Report
		check  bool
		runErr error
		code   int
		msg    []string
	}{
		{"plain run, targets missed", miss, false, nil, exitOK, nil},
		{"check, all measured pass", pass, true, nil, exitOK, nil},
		{"check, nothing measured", none, true, nil, exitOK, nil},
		{"check, missed", miss, true, nil, exitFailure, []string{"targets missed (--check)", "local_over_raw_xproc_median = 2.2", "local_over_raw_xproc_p99"}},
		{"plain run failed", pass, false, runFailed, exitFailure, []string{"runs failed"}},
		{"check, run failed", miss, true, runFailed, exitFailure, []string{"runs failed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			e := &env{stdout: &bytes.Buffer{}, stderr: &stderr, log: newLogger(&stderr)}
			code := exitCode(e, "bench", benchOutcome(tc.rep, tc.check, tc.runErr))
			if code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, tc.code, stderr.String())
			}
			for _, m := range tc.msg {
				if !strings.Contains(stderr.String(), m) {
					t.Errorf("stderr lacks %q: %q", m, stderr.String())
				}
			}
		})
	}
	// The passing report really is measured (not a vacuous pass).
	var measured int
	for _, tg := range pass.Targets {
		if tg.Status == bench.StatusPass {
			measured++
		}
		if tg.Status == bench.StatusMiss {
			t.Errorf("passing report misses %s", tg.Key)
		}
	}
	if measured < 3 {
		t.Errorf("passing report measured %d targets, want the framework and central ones: %+v", measured, pass.Targets)
	}
}

// TestBenchHelpListsEveryFlagAndMode: --help names every flag in the usage
// line and every mode and target below the flags.
func TestBenchHelpListsEveryFlagAndMode(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"bench", "--help"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	help := out.String() // --help goes to stdout
	usage, _, _ := strings.Cut(help, "\n")
	for _, f := range []string{"quick", "check", "modes", "workers", "pages", "pattern", "stride", "fault-around", "reps", "ckpt-pages", "json", "svg", "keep-temp", "no-progress"} {
		if !strings.Contains(usage, "--"+f) {
			t.Errorf("usage line lacks --%s: %s", f, usage)
		}
		if !strings.Contains(help, "  -"+f) {
			t.Errorf("flag list lacks -%s", f)
		}
	}
	for _, m := range bench.ValidModes {
		if !strings.Contains(help, fmt.Sprintf("\n  %-15s ", m)) {
			t.Errorf("help lacks mode %s:\n%s", m, help)
		}
	}
	for _, tg := range bench.TargetList() {
		if !strings.Contains(help, tg.Key) {
			t.Errorf("help lacks target %s", tg.Key)
		}
	}
}
