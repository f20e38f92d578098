package worker

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/vcored/vcored/internal/bench"
)

// TestResultBinsNS: a worker result carries its latency bins with explicit
// nanosecond bounds (latency_bins_ns), the same counts as the indexed bins.
func TestResultBinsNS(t *testing.T) {
	needRoot(t)
	const pages = 64
	v, err := bench.ParseVerify("zero:0")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), Config{Mode: bench.WorkerKernel, Dataspaces: []string{"a"}, Pages: pages, Pattern: bench.PatternSeq, Verify: v, CPU: 0, FaultAround: 1})
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var back struct {
		Dataspaces []struct {
			Latency struct {
				Bins [][2]int64 `json:"bins"`
			} `json:"latency"`
			BinsNS [][3]int64 `json:"latency_bins_ns"`
		} `json:"dataspaces"`
	}
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	ds := back.Dataspaces[0]
	if len(ds.BinsNS) == 0 || len(ds.BinsNS) != len(ds.Latency.Bins) {
		t.Fatalf("%d latency_bins_ns for %d bins", len(ds.BinsNS), len(ds.Latency.Bins))
	}
	var n int64
	for i, b := range ds.BinsNS {
		if b[2] != ds.Latency.Bins[i][1] || b[0] > b[1] || b[0] <= 0 {
			t.Errorf("bin %d: %v for index bin %v", i, b, ds.Latency.Bins[i])
		}
		n += b[2]
	}
	if n != pages {
		t.Errorf("latency_bins_ns count %d touches, want %d", n, pages)
	}
	if !slices.Equal(res.Dataspaces[0].LatencyBinsNS, res.Dataspaces[0].Latency.RangesNS()) {
		t.Errorf("latency_bins_ns differs from Latency.RangesNS()")
	}
}
