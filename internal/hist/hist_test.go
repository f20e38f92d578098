package hist

import (
	"encoding/json"
	"errors"
	"math"
	"testing"
	"time"
)

// within reports whether got is within 0.1% (3 significant digits) of want.
func within(got, want int64) bool {
	return math.Abs(float64(got-want)) <= math.Max(1, float64(want)/1000)
}

func TestQuantilesOfUniform(t *testing.T) {
	h := New()
	for v := int64(1); v <= 10000; v++ {
		h.Record(v * 100) // 100ns .. 1ms
	}
	if h.Count() != 10000 {
		t.Fatalf("Count = %d, want 10000", h.Count())
	}
	for _, tc := range []struct {
		q    float64
		want int64
	}{{0.5, 500000}, {0.9, 900000}, {0.99, 990000}, {0.999, 999000}, {1, 1000000}, {0, 100}} {
		if got := h.Quantile(tc.q); !within(got, tc.want) {
			t.Errorf("Quantile(%v) = %d, want ≈%d", tc.q, got, tc.want)
		}
	}
	if m := h.Mean(); math.Abs(m-500050) > 500 {
		t.Errorf("Mean = %v, want ≈500050", m)
	}
	if !within(h.Min(), 100) || !within(h.Max(), 1000000) {
		t.Errorf("Min/Max = %d/%d", h.Min(), h.Max())
	}
}

func TestEmpty(t *testing.T) {
	h := New()
	if h.Count() != 0 || h.Quantile(0.5) != 0 || h.Mean() != 0 || h.Min() != 0 || h.Max() != 0 || h.CDF() != nil {
		t.Fatalf("empty histogram not zero: count %d q50 %d mean %v cdf %v", h.Count(), h.Quantile(0.5), h.Mean(), h.CDF())
	}
}

func TestClampOutOfRange(t *testing.T) {
	h := New()
	h.Record(-5)
	h.Record(0)
	h.Record(int64(2 * time.Minute))
	if h.Count() != 3 {
		t.Fatalf("Count = %d, want 3 (out-of-range values clamped, not dropped)", h.Count())
	}
	if got := h.Quantile(0); got != 1 {
		t.Errorf("min = %d, want 1", got)
	}
	if got := h.Quantile(1); !within(got, HighestNS) {
		t.Errorf("max = %d, want ≈%d", got, HighestNS)
	}
	if h.Quantile(-1) != h.Quantile(0) || h.Quantile(2) != h.Quantile(1) || h.Quantile(math.NaN()) != h.Quantile(0) {
		t.Error("quantiles outside [0,1] not clamped")
	}
}

func TestMerge(t *testing.T) {
	a, b := New(), New()
	for i := 0; i < 100; i++ {
		a.Record(1000)
		b.Record(3000)
	}
	a.Merge(b)
	a.Merge(nil)
	if a.Count() != 200 || b.Count() != 100 {
		t.Fatalf("counts after merge: a=%d b=%d", a.Count(), b.Count())
	}
	if a.Quantile(0.25) != 1000 || !within(a.Quantile(0.75), 3000) {
		t.Errorf("merged quantiles %d %d", a.Quantile(0.25), a.Quantile(0.75))
	}
	a.Merge(a)
	if a.Count() != 400 {
		t.Errorf("self-merge count %d, want 400", a.Count())
	}
	a.Reset()
	if a.Count() != 0 {
		t.Errorf("Reset left %d values", a.Count())
	}
}

func TestSnapshotJSONRoundTrip(t *testing.T) {
	h := New()
	for i := int64(1); i <= 5000; i++ {
		h.Record(i*i + 700)
	}
	s := h.Snapshot()
	h.Record(42) // a later record must not change s
	if s.Count != 5000 {
		t.Fatalf("snapshot count %d", s.Count)
	}
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) > 100_000 {
		t.Errorf("snapshot JSON is %d bytes; want compact", len(data))
	}
	var back Snapshot
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	r, err := FromSnapshot(back)
	if err != nil {
		t.Fatal(err)
	}
	if r.Count() != 5000 {
		t.Fatalf("restored count %d", r.Count())
	}
	orig, _ := FromSnapshot(s)
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
		if got, want := r.Quantile(q), orig.Quantile(q); got != want {
			t.Errorf("q%v: restored %d, original %d", q, got, want)
		}
	}
	if math.Abs(r.Mean()-orig.Mean()) > 1e-6*orig.Mean() {
		t.Errorf("mean %v vs %v", r.Mean(), orig.Mean())
	}
}

func TestFromSnapshotRejects(t *testing.T) {
	good := New()
	good.Record(1234)
	base := good.Snapshot()
	for name, mut := range map[string]func(*Snapshot){
		"geometry":  func(s *Snapshot) { s.Digits = 2 },
		"index":     func(s *Snapshot) { s.Bins = [][2]int64{{1 << 40, 1}} },
		"negidx":    func(s *Snapshot) { s.Bins = [][2]int64{{-1, 1}} },
		"negcount":  func(s *Snapshot) { s.Bins = [][2]int64{{3, -1}}; s.Count = -1 },
		"count":     func(s *Snapshot) { s.Count = 7 },
		"overflow":  func(s *Snapshot) { s.Bins = [][2]int64{{1, math.MaxInt64}, {2, math.MaxInt64}}; s.Count = 0 },
		"zerovalue": func(s *Snapshot) { *s = Snapshot{} },
	} {
		t.Run(name, func(t *testing.T) {
			s := base
			s.Bins = append([][2]int64(nil), base.Bins...)
			mut(&s)
			if _, err := FromSnapshot(s); !errors.Is(err, ErrSnapshot) {
				t.Fatalf("FromSnapshot = %v, want ErrSnapshot", err)
			}
		})
	}
}

func TestCDF(t *testing.T) {
	h := New()
	for i := 0; i < 3; i++ {
		h.Record(100)
	}
	h.Record(10000)
	pts := h.CDF()
	if len(pts) != 2 {
		t.Fatalf("CDF = %v, want 2 points", pts)
	}
	if pts[0].Fraction != 0.75 || !within(pts[0].NS, 100) || pts[1].Fraction != 1 || !within(pts[1].NS, 10000) {
		t.Errorf("CDF = %+v", pts)
	}
}

func BenchmarkRecord(b *testing.B) {
	h := New()
	v := int64(1500)
	for b.Loop() {
		h.Record(v)
		v = (v*7 + 13) % 1_000_000
	}
}

func BenchmarkQuantile(b *testing.B) {
	h := New()
	for i := int64(0); i < 100000; i++ {
		h.Record(1000 + i%5000)
	}
	for b.Loop() {
		_ = h.Quantile(0.99)
	}
}
