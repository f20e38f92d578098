package bench

import (
	"strings"
	"testing"
)

// floorSamples are nreps repetitions of the modes of the two floor-judged
// goals: forwarded (fw µs) over local (5 µs), with the bare cross-CPU
// round trip raw_cross (cross µs) over raw_xproc (5 µs); local_prefetch
// (pf ns per page) over the kernel's first touch (1000 ns) and
// prefetch_floor_xproc (floor ns per page).
func floorSamples(nreps int, fw, cross int64, pf, floor int64) []RunSample {
	var s []RunSample
	for rep := 1; rep <= nreps; rep++ {
		s = append(s,
			RunSample{Mode: ModeLocal, Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, 5000, 0, nil, 0, 0)}},
			RunSample{Mode: ModeRawXproc, Rep: rep, Results: []*WorkerResult{result("anon", 1000, 5000, 0, nil, 0, 0)}},
			RunSample{Mode: ModeRawCross, Rep: rep, Results: []*WorkerResult{result("anon", 1000, cross*1000, 0, nil, 0, 0)}},
			RunSample{Mode: ModeForwarded, Rep: rep, Results: []*WorkerResult{result(CoreDataspace, 1000, fw*1000, 0, nil, 0, 0)}},
			RunSample{Mode: ModeKernel, Rep: rep, Results: []*WorkerResult{result("anon", 1000, 1000, 0, nil, 0, 0)}},
			RunSample{Mode: ModeLocalPrefetch, Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, pf, 0, nil, 0, 0)}},
			RunSample{Mode: ModePrefetchFloorXproc, Rep: rep, Results: []*WorkerResult{result("anon", 1000, floor, 0, nil, 0, 0)}},
		)
	}
	return s
}

func targetsByKey(r *Report) map[string]Target {
	out := map[string]Target{}
	for _, t := range r.Targets {
		out[t.Key] = t
	}
	return out
}

// TestFloorJudgedGoals: a goal whose floor, measured in the same run,
// misses it is reported UNATTAINABLE (with the floor) and its
// floor-relative target is judged instead (--check follows it); a goal
// whose floor meets it is judged as written and the floor-relative
// target only reported (info).
func TestFloorJudgedGoals(t *testing.T) {
	params := Params{Pages: 1000, Pattern: "seq", FaultAround: 1, Reps: 3}
	for _, tc := range []struct {
		name             string
		fw, cross        int64 // µs
		pf, floor        int64 // ns per page
		want             map[string]string
		missed           string
		floorFw, floorPf float64
	}{
		{
			// This machine: raw_cross 11× raw_xproc; the prefetch floor
			// 0.55× the kernel. Forwarded 0.8× raw_cross passes its
			// floor-relative target, local_prefetch 2× its floor misses.
			name: "floors miss the goals", fw: 44, cross: 55, pf: 1100, floor: 550,
			want: map[string]string{
				"forwarded_over_local_median": StatusUnattainable, "forwarded_over_raw_cross_median": StatusPass,
				"prefetch_per_page_over_kernel": StatusUnattainable, "prefetch_per_page_over_xproc_floor": StatusMiss,
			},
			missed: "prefetch_per_page_over_xproc_floor", floorFw: 11, floorPf: 0.55,
		},
		{
			// A machine whose cross-CPU round trip is 2× its local floor
			// and whose prefetch floor is 0.3× the kernel: the goals are
			// judged as written. Forwarded 4× local misses, whatever its
			// floor-relative ratio (2× raw_cross) would say.
			name: "floors meet the goals", fw: 20, cross: 10, pf: 450, floor: 300,
			want: map[string]string{
				"forwarded_over_local_median": StatusMiss, "forwarded_over_raw_cross_median": StatusInfo,
				"prefetch_per_page_over_kernel": StatusPass, "prefetch_per_page_over_xproc_floor": StatusInfo,
			},
			missed: "forwarded_over_local_median", floorFw: 2, floorPf: 0.3,
		},
		{
			// Same floors, implementation within the goals.
			name: "floors meet the goals, goals met", fw: 14, cross: 10, pf: 400, floor: 300,
			want: map[string]string{
				"forwarded_over_local_median": StatusPass, "forwarded_over_raw_cross_median": StatusInfo,
				"prefetch_per_page_over_kernel": StatusPass, "prefetch_per_page_over_xproc_floor": StatusInfo,
			},
			floorFw: 2, floorPf: 0.3,
		},
		{
			// Unattainable goals, implementation over its floors by more
			// than the slack on the forward path, within it on prefetch.
			name: "floors miss, forward path too slow", fw: 70, cross: 55, pf: 600, floor: 550,
			want: map[string]string{
				"forwarded_over_local_median": StatusUnattainable, "forwarded_over_raw_cross_median": StatusMiss,
				"prefetch_per_page_over_kernel": StatusUnattainable, "prefetch_per_page_over_xproc_floor": StatusPass,
			},
			missed: "forwarded_over_raw_cross_median", floorFw: 11, floorPf: 0.55,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Build(Machine{}, params, floorSamples(3, tc.fw, tc.cross, tc.pf, tc.floor))
			ts := targetsByKey(r)
			for k, want := range tc.want {
				if ts[k].Status != want {
					t.Errorf("%s: %s (value %.3g, floor %.3g), want %s", k, ts[k].Status, ts[k].Value, ts[k].Floor, want)
				}
			}
			if f := ts["forwarded_over_local_median"]; !approx(f.Floor, tc.floorFw) || f.FloorKey != "raw_cross_over_raw_xproc_median" ||
				f.Instead != "forwarded_over_raw_cross_median" {
				t.Errorf("forwarded target %+v, want floor %v", f, tc.floorFw)
			}
			if f := ts["prefetch_per_page_over_kernel"]; !approx(f.Floor, tc.floorPf) || f.FloorKey != "prefetch_xproc_floor_per_page_over_kernel" {
				t.Errorf("prefetch target %+v, want floor %v", f, tc.floorPf)
			}
			if !approx(r.Ratios.RawCrossOverRawXprocMedian, tc.floorFw) || !approx(r.Ratios.PrefetchXprocFloorPerPageOverKernel, tc.floorPf) {
				t.Errorf("ratios %+v", r.Ratios)
			}
			var missed []string
			for _, m := range r.Missed() {
				missed = append(missed, m.Key)
			}
			if strings.Join(missed, ",") != tc.missed {
				t.Errorf("missed %v, want %q", missed, tc.missed)
			}
			// The text and the summary say what was judged and why.
			var b strings.Builder
			if err := r.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			unattainable := tc.want["forwarded_over_local_median"] == StatusUnattainable
			if got := strings.Contains(b.String(), "not attainable on this machine (its floor, raw_cross_over_raw_xproc_median"); got != unattainable {
				t.Errorf("text says forwarded goal unattainable: %v, want %v:\n%s", got, unattainable, b.String())
			}
			if got := strings.Contains(r.Summary, "forwarded_over_local_median ≤ 3 is beyond this machine"); got != unattainable {
				t.Errorf("summary %q", r.Summary)
			}
			if unattainable && !strings.Contains(r.Summary, "judged instead forwarded_over_raw_cross_median") {
				t.Errorf("summary lacks the judged target: %q", r.Summary)
			}
		})
	}
}

// TestFloorNotMeasured: without its floor's modes the goal is judged as
// written; the floor alone decides even when the goal itself was not
// measured (its floor-relative target is judged then).
func TestFloorNotMeasured(t *testing.T) {
	var s []RunSample
	for _, x := range floorSamples(3, 44, 55, 1100, 550) {
		if x.Mode != ModeRawCross && x.Mode != ModePrefetchFloorXproc {
			s = append(s, x)
		}
	}
	ts := targetsByKey(Build(Machine{}, Params{Pages: 1000, Pattern: "seq", FaultAround: 1, Reps: 3}, s))
	if ts["forwarded_over_local_median"].Status != StatusMiss || ts["forwarded_over_raw_cross_median"].Status != StatusNotMeasured ||
		ts["prefetch_per_page_over_kernel"].Status != StatusMiss || ts["prefetch_per_page_over_xproc_floor"].Status != StatusNotMeasured {
		t.Errorf("without floors: %+v", ts)
	}
	if !strings.Contains(ts["forwarded_over_local_median"].Text(), "not measured: judged as written") {
		t.Errorf("text %q", ts["forwarded_over_local_median"].Text())
	}
	s = nil
	for _, x := range floorSamples(3, 44, 55, 1100, 550) {
		if x.Mode != ModeLocal {
			s = append(s, x)
		}
	}
	ts = targetsByKey(Build(Machine{}, Params{Pages: 1000, Pattern: "seq", FaultAround: 1, Reps: 3}, s))
	if ts["forwarded_over_local_median"].Status != StatusNotMeasured || ts["forwarded_over_raw_cross_median"].Status != StatusPass {
		t.Errorf("without local: %+v", ts)
	}
}

// TestPairedRatio: ratios taken rep by rep ignore a repetition that only
// one mode measured, and one disturbed repetition does not move them.
func TestPairedRatio(t *testing.T) {
	a := &ModeReport{byRep: map[int]repFigures{1: {perPageNS: 110}, 2: {perPageNS: 300}, 3: {perPageNS: 105}, 4: {perPageNS: 100}}}
	b := &ModeReport{byRep: map[int]repFigures{1: {perPageNS: 100}, 2: {perPageNS: 100}, 3: {perPageNS: 100}, 5: {perPageNS: 1}}}
	if got := pairedRatio(a, b, perPage); !approx(got, 1.1) {
		t.Errorf("paired ratio %v, want 1.1 (median of 1.1, 3, 1.05)", got)
	}
	if got := pairedRatio(a, &ModeReport{}, perPage); got != 0 {
		t.Errorf("no common rep: %v", got)
	}
}

// TestRepOrder: every second repetition runs the plan in reverse, so
// neighbours alternate which goes first.
func TestRepOrder(t *testing.T) {
	plan := []run{{mode: "a"}, {mode: "b"}, {mode: "c"}}
	var got []string
	for rep := 1; rep <= 3; rep++ {
		for _, r := range repOrder(plan, rep) {
			got = append(got, r.mode)
		}
	}
	if strings.Join(got, "") != "abccbaabc" || plan[0].mode != "a" {
		t.Errorf("order %v (plan %v)", got, plan)
	}
}

// TestFaultAroundFloor: fault-around's goal (≤ 1.0× the kernel's first
// touch per page) has the floor of a pager outside the worker, the minimal
// handler in a process of its own copying as many pages per fault
// (raw_xproc_fa16). When that floor misses 1.0 the goal is UNATTAINABLE
// and local_fa16 ÷ raw_xproc_fa16 (≤ 1.2, rep by rep) is judged instead;
// when it meets 1.0 the goal is judged as written.
func TestFaultAroundFloor(t *testing.T) {
	params := Params{Pages: 1000, Pattern: "seq", FaultAround: 16, Reps: 3}
	for _, tc := range []struct {
		name         string
		local, xproc int64 // ns per page; the kernel's is 1000
		goal, judged string
		missed       string
	}{
		{name: "floor misses, local near it", local: 1300, xproc: 1200, goal: StatusUnattainable, judged: StatusPass},
		{name: "floor misses, local far above it", local: 1600, xproc: 1200, goal: StatusUnattainable, judged: StatusMiss,
			missed: "fault_around_per_page_over_raw_xproc"},
		{name: "floor meets, local too", local: 950, xproc: 800, goal: StatusPass, judged: StatusInfo},
		{name: "floor meets, local does not", local: 1100, xproc: 800, goal: StatusMiss, judged: StatusInfo,
			missed: "fault_around_per_page_over_kernel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s []RunSample
			for rep := 1; rep <= 3; rep++ {
				s = append(s,
					RunSample{Mode: ModeKernel, Rep: rep, Results: []*WorkerResult{result("anon", 1000, 1000, 0, nil, 0, 0)}},
					RunSample{Mode: FaultAroundMode(ModeLocal, 16), Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, tc.local, 0, nil, 0, 0)}},
					RunSample{Mode: FaultAroundMode(ModeRawXproc, 16), Rep: rep, Results: []*WorkerResult{result("anon", 1000, tc.xproc, 0, nil, 0, 0)}},
				)
			}
			r := Build(Machine{}, params, s)
			ts := targetsByKey(r)
			goal, judged := ts["fault_around_per_page_over_kernel"], ts["fault_around_per_page_over_raw_xproc"]
			if goal.Status != tc.goal || judged.Status != tc.judged {
				t.Errorf("goal %s (%.3g, floor %.3g), judged %s (%.3g); want %s, %s", goal.Status, goal.Value, goal.Floor,
					judged.Status, judged.Value, tc.goal, tc.judged)
			}
			if !approx(goal.Floor, float64(tc.xproc)/1000) || goal.FloorKey != "raw_xproc_fault_around_per_page_over_kernel" {
				t.Errorf("goal %+v, want floor %v", goal, float64(tc.xproc)/1000)
			}
			if !approx(judged.Value, float64(tc.local)/float64(tc.xproc)) {
				t.Errorf("local ÷ raw_xproc %v, want %v", judged.Value, float64(tc.local)/float64(tc.xproc))
			}
			var missed []string
			for _, m := range r.Missed() {
				missed = append(missed, m.Key)
			}
			if strings.Join(missed, ",") != tc.missed {
				t.Errorf("missed %v, want %q", missed, tc.missed)
			}
		})
	}
}
