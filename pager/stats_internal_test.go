package pager

import (
	"testing"

	"github.com/vcored/vcored/internal/hist"
)

func TestLatRecorderBuckets(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 31, 32, 33, 63, 64, 1000, 13_000, 1 << 30, 1 << 36, 1<<37 - 1} {
		i := latIndex(v)
		if i < prev || i >= latBuckets {
			t.Fatalf("latIndex(%d) = %d after %d", v, i, prev)
		}
		prev = i
		if mid := latValue(i); v >= 32 && (float64(mid) < float64(v)*0.968 || float64(mid) > float64(v)*1.032) {
			t.Errorf("value %d lands in bucket %d of middle %d: more than 3.2%% off", v, i, mid)
		}
	}
}

// TestLatSnapshotMatchesHist: the snapshot built from the HDR layout equals
// what the hist package gives for the same values.
func TestLatSnapshotMatchesHist(t *testing.T) {
	if !hdrGeometryOK() {
		t.Fatal("hdrIndex disagrees with the hist package's geometry")
	}
	var r latRecorder
	h := hist.New()
	for v := int64(1); v < 50_000_000_000; v = v*3/2 + 1 {
		for range 3 {
			r.record(v)
			h.Record(latValue(latIndex(v)))
		}
	}
	got, want := r.snapshot(), h.Snapshot()
	if got.Count != want.Count || len(got.Bins) != len(want.Bins) {
		t.Fatalf("snapshot: %d values in %d bins, hist says %d in %d", got.Count, len(got.Bins), want.Count, len(want.Bins))
	}
	for i := range got.Bins {
		if got.Bins[i] != want.Bins[i] {
			t.Fatalf("bin %d: %v, hist says %v", i, got.Bins[i], want.Bins[i])
		}
	}
	back, err := hist.FromSnapshot(got)
	if err != nil {
		t.Fatal(err)
	}
	if q := back.Quantile(0.5); q != h.Quantile(0.5) {
		t.Errorf("median %d, want %d", q, h.Quantile(0.5))
	}
}
