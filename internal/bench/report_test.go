package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/irqstat"
)

// result builds a worker result with one dataspace whose every touch took
// ns, and irq interrupts counted on CPUs 0 and 1.
func result(name string, pages int, ns int64, node int, placement map[int]int, cal0, cal1 uint64) *WorkerResult {
	h := hist.New()
	for range pages {
		h.Record(ns)
	}
	return &WorkerResult{Node: node, TimerOverheadNS: 30, Dataspaces: []DataspaceResult{{
		Name: name, Pages: pages, Latency: h.Snapshot(), TouchNS: int64(pages) * ns, WallNS: int64(pages) * ns * 2,
		VerifiedPages: pages, Placement: placement,
		IRQ: &irqstat.Delta{CPUs: []hw.CPU{0, 1}, PerCPU: []irqstat.Counts{{CAL: cal0, Total: cal0 + 5}, {CAL: cal1, RES: 1, Total: cal1 + 6}}},
	}}}
}

// approx allows for the histograms' 3 significant digits on both sides.
func approx(a, b float64) bool { return math.Abs(a-b) <= 2e-3*math.Max(1e-3, math.Abs(b)) }

func syntheticSamples() []RunSample {
	var s []RunSample
	for rep := 1; rep <= 3; rep++ {
		local := result(LocalDataspace, 1000, 15000, 0, map[int]int{0: 1000}, 0, 10)
		shared := result(SharedDataspace, 1000, 60000, 0, nil, 0, 0).Dataspaces[0]
		local.Dataspaces = append(local.Dataspaces, shared)
		s = append(s,
			RunSample{Mode: ModeLocal, Rep: rep, Results: []*WorkerResult{local}, PagerFaults: 1000,
				PagerReadNS: 1000, PagerWorkNS: 2000, PagerIoctlNS: 5000,
				TrackingBytes: 8000, TrackedPages: 2000, VmHWM: map[string]uint64{"core": 20 << 20, "vcore0": 30 << 20}},
			RunSample{Mode: ModeCentral, Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, 150000, 0, map[int]int{0: 900, 1: 100}, 1000, 990)},
				VmHWM: map[string]uint64{"core": 45 << 20}},
			RunSample{Mode: ModeRaw, Rep: rep, Results: []*WorkerResult{result("anon", 1000, 13000, 0, map[int]int{0: 1000}, 0, 0)}},
			RunSample{Mode: ModeKernel, Rep: rep, Results: []*WorkerResult{result("anon", 1000, 2500, 0, map[int]int{0: 1000}, 0, 0)}},
			RunSample{Mode: ModeRawXproc, Rep: rep, Results: []*WorkerResult{result("anon", 1000, 12000, 0, map[int]int{0: 1000}, 0, 0)}},
			RunSample{Mode: ModeRawCross, Rep: rep, Results: []*WorkerResult{result("anon", 1000, 39000, 0, map[int]int{0: 1000}, 5, 5)}},
			RunSample{Mode: FaultAroundMode(ModeLocal, 16), Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, 2000, 0, map[int]int{0: 1000}, 0, 0)}},
			RunSample{Mode: FaultAroundMode(ModeRaw, 16), Rep: rep, Results: []*WorkerResult{result("anon", 1000, 1800, 0, map[int]int{0: 1000}, 0, 0)}},
			RunSample{Mode: ModeLocalPrefetch, Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, 1000, 0, map[int]int{0: 1000}, 0, 0)}},
			RunSample{Mode: ModeForwarded, Rep: rep, Results: []*WorkerResult{result(CoreDataspace, 1000, 60000, 0, map[int]int{0: 1000}, 0, 0)}},
			RunSample{Mode: ModeReplicated, Rep: rep, Results: []*WorkerResult{result(CoreDataspace, 1000, 16500, 0, map[int]int{0: 1000}, 0, 0)}},
		)
	}
	return s
}

func TestBuildReportMath(t *testing.T) {
	r := Build(Machine{Kernel: "6.18", CPUs: 2, Nodes: 1, CgroupMode: "hybrid"},
		Params{Pages: 1000, Pattern: "seq", FaultAround: 16, Reps: 3}, syntheticSamples())

	local := r.Modes[ModeLocal]
	if local.Runs != 3 || local.Faults != 3000 || local.ServedFaults != 3000 || local.VerifiedPages != 3000 {
		t.Fatalf("local runs/faults/served/verified = %d/%d/%d/%d", local.Runs, local.Faults, local.ServedFaults, local.VerifiedPages)
	}
	// 15 µs at 3 significant digits.
	if local.MedianNS < 14990 || local.MedianNS > 15010 || local.P99NS != local.MedianNS {
		t.Errorf("local median %d p99 %d", local.MedianNS, local.P99NS)
	}
	if !approx(local.PerPageNS, 15000) || !approx(local.FaultsPerSec, 1e9/30000) {
		t.Errorf("local per page %v, faults/s %v", local.PerPageNS, local.FaultsPerSec)
	}
	// 10 CAL + 1 RES per run on 1000 faults.
	if !approx(local.IPIsPerFault, 0.011) || !approx(local.IPIs.CALPerFault, 0.01) || !approx(local.IPIs.PerCPU["1"].CAL, 0.01) ||
		!approx(local.IPIs.TotalPerFault, 0.021) {
		t.Errorf("local IPIs %v %+v", local.IPIsPerFault, local.IPIs)
	}
	if local.LocalNodeShare != 1 || len(local.RepMediansNS) != 3 {
		t.Errorf("local share %v, rep medians %v", local.LocalNodeShare, local.RepMediansNS)
	}
	if b := local.Breakdown; b == nil || !approx(b.WorkerMeanNS, 15000) || !approx(b.IoctlNS, 5000) || !approx(b.RestNS, 7000) {
		t.Errorf("local breakdown %+v, want worker 15000 = 1000 + 2000 + 5000 + rest 7000", local.Breakdown)
	}
	central := r.Modes[ModeCentral]
	if central.Breakdown != nil {
		t.Errorf("central breakdown %+v without pager numbers", central.Breakdown)
	}
	if !approx(central.LocalNodeShare, 0.9) || !approx(central.IPIsPerFault, 1.991) || central.ServedFaults != 0 {
		t.Errorf("central share %v IPIs %v served %d", central.LocalNodeShare, central.IPIsPerFault, central.ServedFaults)
	}

	rt := r.Ratios
	if !approx(rt.CentralOverLocalMedian, 10) || !approx(rt.CentralOverLocalP99, 10) {
		t.Errorf("central/local %v %v", rt.CentralOverLocalMedian, rt.CentralOverLocalP99)
	}
	if !approx(rt.LocalOverRawMedian, 15.0/13) || !approx(rt.RawOverKernelMedian, 5.2) {
		t.Errorf("local/raw %v raw/kernel %v", rt.LocalOverRawMedian, rt.RawOverKernelMedian)
	}
	if !approx(rt.FaultAroundPerPageOverKernel, 0.8) || !approx(rt.RawFaultAroundOverKernel, 0.72) {
		t.Errorf("fault-around ratios %v %v", rt.FaultAroundPerPageOverKernel, rt.RawFaultAroundOverKernel)
	}
	if fa := r.FaultAround; fa == nil || fa.Pages != 16 || !approx(fa.KernelPerPageNS, 2500) || !approx(fa.LocalFA1PerPageNS, 15000) {
		t.Errorf("fault-around report %+v", r.FaultAround)
	}
	if f := r.Forwarded; f == nil || f.Faults != 3000 || f.MedianNS < 59900 || f.MedianNS > 60100 {
		t.Errorf("forwarded %+v", r.Forwarded)
	}
	if r.Memory == nil || r.Memory.VmHWM[ModeCentral]["core"] != 45<<20 || !approx(r.Memory.TrackingBytesPerPage, 4) {
		t.Errorf("memory %+v", r.Memory)
	}

	status := map[string]string{}
	for _, tg := range r.Targets {
		status[tg.Name] = tg.Status
	}
	want := map[string]string{
		"local median ÷ raw floor median": "PASS", // 1.15 ≤ 1.2
		"(central ÷ local) ÷ (raw_cross ÷ raw_xproc), medians: local wins by what the machine allows": "PASS", // 10 ÷ 3.25
		"local_prefetch per page ÷ kernel first touch (seq)":                                          "PASS", // 0.4
		"prefetch on ÷ off per page (non-sequential --pattern; rep by rep, adjacent runs)":            "n/a",
		// forwarded ÷ local = 4 > 3, and so is its floor raw_cross ÷
		// raw_xproc = 3.25: not attainable; forwarded ÷ raw_cross = 1.54
		// is judged instead.
		"forwarded median ÷ local median (first fault of a core-owned page)":                        "UNATTAINABLE",
		"forwarded median ÷ raw_cross median (the forward path over the bare cross-CPU round trip)": "MISS",
		"local IPIs per fault": "PASS",
		"local fault-around 16 per page ÷ kernel first touch (seq)": "PASS",
		"peak RSS of core and each vcore (MiB)":                     "MISS", // core 45 MiB in central runs
	}
	for k, v := range want {
		if status[k] != v {
			t.Errorf("target %q: %q, want %q (all: %v)", k, status[k], v, status)
		}
	}
	if !approx(rt.CentralOverLocalVsFloors, 10/3.25) || !approx(rt.PrefetchPerPageOverKernel, 0.4) || rt.PrefetchOnOverOff != 0 {
		t.Errorf("central/local vs floors %v, prefetch/kernel %v, prefetch on/off %v", rt.CentralOverLocalVsFloors, rt.PrefetchPerPageOverKernel, rt.PrefetchOnOverOff)
	}
	if !approx(rt.ReplicatedOverLocalMedian, 1.1) || !approx(rt.ForwardedOverLocalMedian, 4) {
		t.Errorf("replicated/local %v forwarded/local %v", rt.ReplicatedOverLocalMedian, rt.ForwardedOverLocalMedian)
	}
	if !approx(rt.RawCrossOverRawXprocMedian, 3.25) || !approx(rt.ForwardedOverRawCrossMedian, 60.0/39) {
		t.Errorf("raw_cross/raw_xproc %v, forwarded/raw_cross %v", rt.RawCrossOverRawXprocMedian, rt.ForwardedOverRawCrossMedian)
	}
	want2 := []string{ModeLocal, ModeCentral, ModeRaw, ModeRawXproc, ModeRawCross, ModeKernel, ModeLocalPrefetch, ModeForwarded, ModeReplicated, "local_fa16", "raw_floor_fa16"}
	if got := r.ModeOrder(); !slices.Equal(got, want2) {
		t.Errorf("mode order %v", got)
	}
}

func TestBuildMissingModes(t *testing.T) {
	var s []RunSample
	for _, smp := range syntheticSamples() {
		if smp.Mode == ModeRaw || smp.Mode == ModeKernel {
			s = append(s, smp)
		}
	}
	s = append(s, RunSample{Mode: ModeLocal, Rep: 1, Err: os.ErrNotExist})
	r := Build(Machine{}, Params{Pattern: "seq", FaultAround: 16}, s)
	if r.Ratios.CentralOverLocalMedian != 0 || r.Ratios.LocalOverRawMedian != 0 || r.Ratios.FaultAroundPerPageOverKernel != 0 {
		t.Errorf("ratios of unmeasured modes: %+v", r.Ratios)
	}
	if !approx(r.Ratios.RawOverKernelMedian, 5.2) {
		t.Errorf("raw/kernel %v", r.Ratios.RawOverKernelMedian)
	}
	for _, tg := range r.Targets {
		if tg.Status != "n/a" {
			t.Errorf("target %q is %s without data", tg.Name, tg.Status)
		}
	}
	if len(r.Errors) != 1 || !strings.Contains(r.Errors[0], "local: rep 1") {
		t.Errorf("errors %v", r.Errors)
	}
	var buf bytes.Buffer
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "n/a") {
		t.Errorf("text without n/a:\n%s", buf.String())
	}
}

// TestJSONShape checks the keys the issue requires.
func TestJSONShape(t *testing.T) {
	r := Build(Machine{Kernel: "6.18", CPUs: 2, Nodes: 1, CgroupMode: "hybrid"},
		Params{Pages: 1000, Pattern: "seq", FaultAround: 16, Reps: 3}, syntheticSamples())
	path := filepath.Join(t.TempDir(), "r.json")
	if err := r.WriteJSON(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	obj := func(v any, path string) map[string]any {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s is %T, want an object", path, v)
		}
		return m
	}
	machine := obj(doc["machine"], "machine")
	for _, k := range []string{"kernel", "cpus", "nodes", "cgroup_mode"} {
		if _, ok := machine[k]; !ok {
			t.Errorf("machine lacks %q", k)
		}
	}
	modes := obj(doc["modes"], "modes")
	for _, m := range []string{"local", "central", "raw_floor", "raw_xproc", "raw_cross", "kernel"} {
		mm := obj(modes[m], "modes."+m)
		for _, k := range []string{"faults", "median_ns", "p90_ns", "p99_ns", "p999_ns", "faults_per_sec", "ipis_per_fault", "local_node_share"} {
			if _, ok := mm[k]; !ok {
				t.Errorf("modes.%s lacks %q", m, k)
			}
		}
		if s := mm["local_node_share"].(float64); s < 0 || s > 1 {
			t.Errorf("modes.%s.local_node_share = %v", m, s)
		}
	}
	ratios := obj(doc["ratios"], "ratios")
	for _, k := range []string{"central_over_local_median", "central_over_local_p99", "local_over_raw_median", "fault_around_per_page_over_kernel",
		"local_over_raw_xproc_median", "local_over_raw_xproc_p99", "raw_xproc_over_raw_median", "raw_cross_over_raw_median"} {
		if _, ok := ratios[k]; !ok {
			t.Errorf("ratios lacks %q", k)
		}
	}
	// local 15 µs, raw_xproc 12 µs, raw_floor 13 µs.
	if v, _ := ratios["local_over_raw_xproc_median"].(float64); !approx(v, 15.0/12) {
		t.Errorf("local_over_raw_xproc_median = %v, want %v", v, 15.0/12)
	}
	if v, _ := ratios["local_over_raw_xproc_p99"].(float64); !approx(v, 15.0/12) {
		t.Errorf("local_over_raw_xproc_p99 = %v, want %v", v, 15.0/12)
	}
	if v, _ := ratios["raw_xproc_over_raw_median"].(float64); !approx(v, 12.0/13) {
		t.Errorf("raw_xproc_over_raw_median = %v, want %v", v, 12.0/13)
	}
	if s, _ := doc["summary"].(string); !strings.HasPrefix(s, "summary: local wins") {
		t.Errorf("summary %q", doc["summary"])
	}
	targets, _ := doc["targets"].([]any)
	keys := map[string]string{}
	for i, tv := range targets {
		tg := obj(tv, fmt.Sprintf("targets[%d]", i))
		for _, k := range []string{"key", "name", "goal", "value", "status"} {
			if _, ok := tg[k]; !ok {
				t.Errorf("targets[%d] lacks %q", i, k)
			}
		}
		k, _ := tg["key"].(string)
		keys[k], _ = tg["status"].(string)
	}
	if keys["local_over_raw_xproc_median"] != "MISS" || keys["local_over_raw_xproc_p99"] != "PASS" {
		t.Errorf("framework targets %v (1.25 ≤ 1.15 misses, 1.25 ≤ 1.5 passes)", keys)
	}

	svg := filepath.Join(t.TempDir(), "r.svg")
	if err := r.WriteSVG(svg); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(svg)
	for _, name := range []string{"local  n=3000", "central  n=3000", "raw_floor  n=3000", "kernel  n=3000", "forwarded"} {
		if !bytes.Contains(b, []byte(name)) {
			t.Errorf("svg lacks series %q", name)
		}
	}
}

func TestParseVmHWM(t *testing.T) {
	got, err := parseVmHWM(strings.NewReader("Name:\tvcored\nVmPeak:\t  100 kB\nVmHWM:\t   20480 kB\n"))
	if err != nil || got != 20480*1024 {
		t.Fatalf("parseVmHWM = %d, %v", got, err)
	}
	if _, err := parseVmHWM(strings.NewReader("Name: x\n")); err == nil {
		t.Error("no error without a VmHWM line")
	}
	if _, err := parseVmHWM(strings.NewReader("VmHWM: lots\n")); err == nil {
		t.Error("no error on a bad VmHWM line")
	}
	if b, err := vmHWM(os.Getpid()); err != nil || b == 0 {
		t.Errorf("own VmHWM = %d, %v", b, err)
	}
}

func TestOrder(t *testing.T) {
	for _, tc := range []struct {
		p      Pattern
		n, k   int
		prefix []int
	}{
		{PatternSeq, 10, 0, []int{0, 1, 2, 3}},
		{PatternStride, 10, 4, []int{0, 4, 8, 1, 5, 9, 2, 6, 3, 7}},
		{PatternStride, 3, 8, []int{0, 1, 2}},
		{PatternRandom, 1000, 0, nil},
	} {
		o := Order(tc.p, tc.n, tc.k, 7)
		sorted := slices.Sorted(slices.Values(o))
		for i := range tc.n {
			if sorted[i] != i {
				t.Fatalf("%s: not a permutation of 0..%d: %v", tc.p, tc.n-1, o)
			}
		}
		if !slices.Equal(o[:len(tc.prefix)], tc.prefix) {
			t.Errorf("%s: order starts %v, want %v", tc.p, o[:len(tc.prefix)], tc.prefix)
		}
	}
	a, b := Order(PatternRandom, 100, 0, 7), Order(PatternRandom, 100, 0, 7)
	if !slices.Equal(a, b) || slices.IsSorted(a) {
		t.Error("random order not reproducible or not shuffled")
	}
}

func TestParseVerifyAndModes(t *testing.T) {
	for in, want := range map[string]Verify{"zero": {Kind: "zero"}, "zero:0": {Kind: "zero"}, "pattern:42": {Kind: "pattern", Seed: 42}, "pattern:0x10": {Kind: "pattern", Seed: 16}} {
		got, err := ParseVerify(in)
		if err != nil || got != want {
			t.Errorf("ParseVerify(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "pattern", "pattern:x", "zero:3", "ones:1"} {
		if _, err := ParseVerify(bad); err == nil {
			t.Errorf("ParseVerify(%q) accepted", bad)
		}
	}
	if _, err := ParseWorkerMode("tcg"); err == nil {
		t.Error("bad mode accepted")
	}
	if _, err := ParsePattern("zigzag"); err == nil {
		t.Error("bad pattern accepted")
	}
}

func TestPlanInterleavesAndFilters(t *testing.T) {
	names := func(rs []run) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.mode)
		}
		return out
	}
	got := names(Plan(Config{Pattern: PatternSeq, FaultAround: 16}))
	want := []string{"raw_xproc", "local", "central", "raw_floor", "raw_cross", "kernel", "local_prefetch", "prefetch_floor_xproc", "prefetch_floor", "forwarded", "replicated", "local_fa16", "raw_xproc_fa16", "raw_floor_fa16"}
	if !slices.Equal(got, want) {
		t.Errorf("plan %v, want %v", got, want)
	}
	got = names(Plan(Config{Pattern: PatternRandom, FaultAround: 16, Modes: []string{ModeRaw, ModeKernel}}))
	want = []string{"raw_xproc", "raw_floor", "raw_cross", "kernel", "raw_floor_fa16", "raw_floor_seq", "kernel_seq"}
	if !slices.Equal(got, want) {
		t.Errorf("filtered plan %v, want %v", got, want)
	}
	// A mode may be named on its own, not only by its family.
	got = names(Plan(Config{Pattern: PatternSeq, FaultAround: 16, Modes: []string{ModeLocal, ModeRawXproc}}))
	want = []string{"raw_xproc", "local", "local_fa16", "raw_xproc_fa16"} // local_fa16's floor comes with it
	if !slices.Equal(got, want) {
		t.Errorf("plan of local,raw_xproc %v, want %v", got, want)
	}
	// A mode's targets pull in their floors and references: forwarded
	// needs local, raw_xproc and raw_cross; local_prefetch the kernel
	// and prefetch_floor (its family).
	got = names(Plan(Config{Pattern: PatternSeq, FaultAround: 1, Modes: []string{ModeForwarded}}))
	want = []string{"raw_xproc", "local", "raw_cross", "forwarded", "replicated"}
	if !slices.Equal(got, want) {
		t.Errorf("plan of forwarded %v, want %v", got, want)
	}
	got = names(Plan(Config{Pattern: PatternSeq, FaultAround: 1, Modes: []string{ModeLocalPrefetch}}))
	want = []string{"kernel", "local_prefetch", "prefetch_floor_xproc", "prefetch_floor"}
	if !slices.Equal(got, want) {
		t.Errorf("plan of local_prefetch %v, want %v", got, want)
	}
	for _, r := range Plan(Config{Pattern: PatternSeq, FaultAround: 1, Modes: []string{ModeLocalPrefetch}}) {
		if r.mode == ModePrefetchFloor && (r.worker != WorkerRaw || r.faultAround != PrefetchFloorPages || !r.zero || r.pattern != PatternSeq || r.crossCPU) {
			t.Errorf("prefetch_floor run %+v", r)
		}
		if r.mode == ModePrefetchFloorXproc && (r.worker != WorkerXproc || r.faultAround != PrefetchFloorPages || !r.zero || r.pattern != PatternSeq || r.crossCPU) {
			t.Errorf("prefetch_floor_xproc run %+v", r)
		}
	}
	// The checkpoint modes are opt-in: the default plan is the fault modes.
	optIn := 0
	for _, m := range Registry {
		if m.OptIn {
			optIn++
		}
	}
	if got := names(Plan(Config{Pattern: PatternSeq, FaultAround: 1})); len(got) != len(Registry)-optIn || optIn != 3 {
		t.Errorf("plan without fault-around %v (%d opt-in modes)", got, optIn)
	}
}

func TestMedianOf(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{1.5, 9, 1.4}, 1.5}, // one disturbed run does not move it
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := medianOf(tc.in); got != tc.want {
			t.Errorf("medianOf(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// TestPrefetchRandomPlanAndRatio: a non-sequential --pattern adds the
// prefetch-on run of that pattern (and the kernel's sequential first touch
// local_prefetch is compared with); the on ÷ off ratio is per page.
func TestPrefetchRandomPlanAndRatio(t *testing.T) {
	// With fault-around (the default) kernel_seq comes from the
	// fault-around block, and is still run for local_prefetch.
	var fa []string
	for _, r := range Plan(Config{Pattern: PatternRandom, FaultAround: 16, Modes: []string{ModeLocalPrefetch}}) {
		fa = append(fa, r.mode)
	}
	if want := []string{ModeLocal, "local_prefetch_random", "local_prefetch_random", ModeLocal, ModeLocal, "local_prefetch_random", "local_prefetch_random", ModeLocal, ModeLocalPrefetch, ModePrefetchFloorXproc, ModePrefetchFloor, "kernel_seq"}; !slices.Equal(fa, want) {
		t.Errorf("plan with fault-around %v, want %v", fa, want)
	}
	var got []string
	for _, r := range Plan(Config{Pattern: PatternRandom, FaultAround: 1, Modes: []string{ModeLocalPrefetch}}) {
		got = append(got, r.mode)
		if r.mode == ModeLocalPrefetch && (r.pattern != PatternSeq || !r.prefetch || !r.zero) {
			t.Errorf("local_prefetch run %+v: want sequential, prefetch on, zero content", r)
		}
		if r.mode == "local_prefetch_random" && (r.pattern != PatternRandom || !r.prefetch) {
			t.Errorf("local_prefetch_random run %+v", r)
		}
	}
	// local_prefetch_random right after local (its off run), then three
	// more pairs, alternating the order (slots 1-3), kernel_seq (not the random
	// kernel) as local_prefetch's reference.
	if want := []string{ModeLocal, "local_prefetch_random", "local_prefetch_random", ModeLocal, ModeLocal, "local_prefetch_random", "local_prefetch_random", ModeLocal, ModeLocalPrefetch, ModePrefetchFloorXproc, ModePrefetchFloor, "kernel_seq"}; !slices.Equal(got, want) {
		t.Errorf("plan %v, want %v", got, want)
	}
	var slots []int
	for _, r := range Plan(Config{Pattern: PatternRandom, FaultAround: 1, Modes: []string{ModeLocalPrefetch}}) {
		slots = append(slots, r.slot)
	}
	if !slices.Equal(slots, []int{0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 0, 0}) { // randomPairs pairs, alternating order
		t.Errorf("slots %v", slots)
	}
	var s []RunSample
	for rep := 1; rep <= 3; rep++ {
		// Pair by pair: slot 0 at 1.03, slot 1 at 1.01 except one
		// disturbed on run (2×) — which a pooled per-page mean would
		// carry, the median of the six pairs' ratios not.
		on1 := int64(10100)
		if rep == 2 {
			on1 = 20000
		}
		s = append(s,
			RunSample{Mode: ModeLocal, Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, 10000, 0, nil, 0, 0)}},
			RunSample{Mode: "local_prefetch_random", Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, 10300, 0, nil, 0, 0)}},
			RunSample{Mode: "local_prefetch_random", Rep: rep, Slot: 1, Results: []*WorkerResult{result(LocalDataspace, 1000, on1, 0, nil, 0, 0)}},
			RunSample{Mode: ModeLocal, Rep: rep, Slot: 1, Results: []*WorkerResult{result(LocalDataspace, 1000, 10000, 0, nil, 0, 0)}},
			RunSample{Mode: ModeLocalPrefetch, Rep: rep, Results: []*WorkerResult{result(LocalDataspace, 1000, 1500, 0, nil, 0, 0)}},
			RunSample{Mode: "kernel_seq", Rep: rep, Results: []*WorkerResult{result("anon", 1000, 2000, 0, nil, 0, 0)}},
		)
	}
	r := Build(Machine{}, Params{Pages: 1000, Pattern: "random", FaultAround: 1, Reps: 3}, s)
	if !approx(r.Ratios.PrefetchOnOverOff, 1.03) || !approx(r.Ratios.PrefetchPerPageOverKernel, 0.75) { // median of 1.01, 1.01, 1.03, 1.03, 1.03, 2
		t.Errorf("prefetch on/off %v, prefetch/kernel %v", r.Ratios.PrefetchOnOverOff, r.Ratios.PrefetchPerPageOverKernel)
	}
	status := map[string]string{}
	for _, tg := range r.Targets {
		status[tg.Key] = tg.Status
	}
	if status["prefetch_on_over_off_per_page"] != StatusPass || status["prefetch_per_page_over_kernel"] != StatusMiss {
		t.Errorf("targets %v", status)
	}
}

// TestReplicatedRunConfig: the replicated mode's files declare the
// core-owned read-only dataspace, a warm-up subsystem per vcore, and make
// the measured workers wait for it; they parse with the daemons' parsers.
func TestReplicatedRunConfig(t *testing.T) {
	r := &DaemonRun{Dir: "/tmp/x", Exe: "/bin/vcored", CgroupParent: "b/r1", Pager: "local", FaultAround: 1,
		Layout:  Layout{CoreCPU: 0, Partitions: []Partition{{Node: 0, CPUs: hw.NewSet[hw.CPU](1)}}},
		Workers: 1, Pages: 16, Pattern: PatternSeq, Seed: 9, CoreOnly: true, Warm: true}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	core, vc := r.CoreTOML(), r.VCoreTOML(0)
	for _, want := range []string{`name = "core_ro"`, `content = "pattern"`} {
		if !strings.Contains(core, want) {
			t.Errorf("core.toml lacks %s:\n%s", want, core)
		}
	}
	if strings.Contains(core, "writable") {
		t.Errorf("core.toml declares the dataspace writable:\n%s", core)
	}
	for _, want := range []string{`name = "warm-n0"`, `"--wait-file", "/tmp/x/results/warm-n0.json"`, `dataspaces = ["core_ro"]`, `"--dataspace", "core_ro"`} {
		if !strings.Contains(vc, want) {
			t.Errorf("vcore file lacks %s:\n%s", want, vc)
		}
	}
	if strings.Contains(vc, "replica_budget") {
		t.Errorf("the replicated run turns replicas off:\n%s", vc)
	}
	r.CoreOnly, r.Warm = false, false
	if vc := r.VCoreTOML(0); !strings.Contains(vc, `replica_budget = "0"`) {
		t.Errorf("a local run keeps replicas (its peak RSS is a target):\n%s", vc)
	}
	if cmd := strings.Join(r.workerArgs(0, 0, r.WarmResultPath(0)), " "); strings.Contains(cmd, "--wait-file") {
		t.Errorf("the warm-up worker waits: %s", cmd)
	}
}
