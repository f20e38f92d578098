package bench

import (
	"strings"
	"testing"
)

// summaryReport is a report with only the ratios the summary reads.
func summaryReport(central, central99, xas, fwLocal, cross, fwCentral float64) *Report {
	return &Report{Ratios: Ratios{
		CentralOverLocalMedian: central, CentralOverLocalP99: central99,
		RawXprocOverRawMedian: xas, LocalOverRawXprocMedian: fwLocal,
		RawCrossOverRawMedian: cross, CentralOverRawCrossMedian: fwCentral,
	}}
}

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    *Report
		want []string
		not  []string
	}{
		{"local wins on the cross-CPU hand-off", summaryReport(3.2, 5, 1.1, 1.05, 3.5, 1.0),
			[]string{"local wins", "3.20×", "p99 5.00×", "floor × 1.10", "× 1.05 (framework, local ÷ raw_xproc)", "floor × 3.50", "cross-CPU hand-off costs more than its address-space switch"},
			[]string{"LOSES", "no clear winner", "not measured"}},
		{"local wins on the central framework", summaryReport(2, 2, 1.5, 1.0, 1.2, 2.5),
			[]string{"local wins", "2.00×", "single pager's framework costs more"}, []string{"hand-off costs more"}},
		// The slow day: central ÷ local 0.5, the address-space
		// switch (44 ÷ 19 µs) dearer than the cross-CPU hand-off.
		{"local loses on the address-space switch", summaryReport(0.5, 0.8, 2.3, 1.1, 1.4, 1.3),
			[]string{"local LOSES", "2.00× as long as the single pager's", "p99 1.25×", "floor × 2.30", "floor × 1.40",
				"address-space switch on the faulting CPU costs more than a hand-off to another CPU"},
			[]string{"local wins", "framework eats"}},
		{"local loses on its framework", summaryReport(0.8, 0.9, 1.1, 3.0, 1.8, 1.0),
			[]string{"local LOSES", "1.25×", "machine favours local", "local's framework eats"},
			[]string{"local wins", "costs more than a hand-off"}},
		{"tie", summaryReport(1.05, 1.2, 1.3, 1.0, 1.4, 1.0),
			[]string{"no clear winner", "1.05×", "±10%", "cost about the same"}, []string{"wins", "LOSES"}},
		{"no floors", summaryReport(0.5, 0.4, 0, 0, 0, 0),
			[]string{"local LOSES", "why: not measured"}, []string{"floor ×"}},
		{"no central", summaryReport(0, 0, 1.2, 1.1, 3, 0),
			[]string{"local vs central not measured", "cross-CPU penalty is 3.00×", "cross-address-space penalty 1.20×", "1.10× its floor raw_xproc"}, []string{"wins", "LOSES"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := summary(tc.r)
			if !strings.HasPrefix(got, "summary: ") || strings.Contains(got, "\n") {
				t.Errorf("not one summary line: %q", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("lacks %q:\n%s", w, got)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(got, n) {
					t.Errorf("has %q:\n%s", n, got)
				}
			}
		})
	}
}

// TestTargetsAndMissed checks the target table: the framework targets of
// issue H.2 against raw_xproc, "not measured" for modes that did not run,
// and Missed listing exactly the misses.
func TestTargetsAndMissed(t *testing.T) {
	r := &Report{Modes: map[string]*ModeReport{}}
	r.Ratios.LocalOverRawXprocMedian = 1.10 // PASS (≤ 1.15)
	r.Ratios.LocalOverRawXprocP99 = 1.6     // MISS (≤ 1.5)
	r.Ratios.CentralOverLocalVsFloors = 0.5 // MISS (≥ 0.8)
	r.Ratios.CentralOverLocalMedian = 0.5   // reported, no target
	r.Targets = targets(r)
	status := map[string]string{}
	for _, tg := range r.Targets {
		status[tg.Key] = tg.Status
	}
	want := map[string]string{
		"local_over_raw_xproc_median": StatusPass, "local_over_raw_xproc_p99": StatusMiss,
		"central_over_local_vs_floors": StatusMiss, "local_over_raw_median": StatusNotMeasured,
		"local_ipis_per_fault": StatusNotMeasured, "fault_around_per_page_over_kernel": StatusNotMeasured,
		"daemon_peak_rss_mib": StatusNotMeasured, "prefetch_per_page_over_kernel": StatusNotMeasured,
		"prefetch_on_over_off_per_page": StatusNotMeasured, "replicated_over_local_median": StatusNotMeasured,
		"forwarded_over_local_median": StatusNotMeasured, "forwarded_over_raw_cross_median": StatusNotMeasured,
		"prefetch_per_page_over_xproc_floor": StatusNotMeasured, "fault_around_per_page_over_raw_xproc": StatusNotMeasured,
		// The checkpoint scenario's, without a Checkpoint report.
		"tracking_overhead": StatusNotMeasured, "incremental_frozen_ms": StatusNotMeasured,
		"incremental_over_full": StatusNotMeasured, "full_write_over_dd": StatusNotMeasured,
		"restore_first_touch_over_local": StatusNotMeasured, "restore_throughput_over_read": StatusNotMeasured,
		"restart_start_big_over_small": StatusNotMeasured,
	}
	for k, s := range want {
		if status[k] != s {
			t.Errorf("target %s: %q, want %q", k, status[k], s)
		}
	}
	if len(status) != len(want) {
		t.Errorf("targets %v, want %v", status, want)
	}
	var missed []string
	for _, tg := range r.Missed() {
		missed = append(missed, tg.Key)
	}
	if strings.Join(missed, ",") != "local_over_raw_xproc_p99,central_over_local_vs_floors" {
		t.Errorf("missed %v", missed)
	}
	// At the limits: ≤ passes, ≥ passes.
	r.Ratios.LocalOverRawXprocMedian, r.Ratios.LocalOverRawXprocP99, r.Ratios.CentralOverLocalVsFloors =
		TargetLocalOverRawXprocMedian, TargetLocalOverRawXprocP99, TargetCentralOverLocalVsFloors
	r.Ratios.PrefetchPerPageOverKernel, r.Ratios.PrefetchOnOverOff = TargetPrefetchOverKernel, TargetPrefetchOnOverOff
	r.Targets = targets(r)
	if m := r.Missed(); len(m) != 0 {
		t.Errorf("missed at the limits: %+v", m)
	}
}
