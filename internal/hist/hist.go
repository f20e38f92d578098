// Package hist is vcored's latency histogram: an HDR histogram of
// nanosecond values from 1 ns to 60 s with 3 significant digits.
//
// It is the only package that imports github.com/HdrHistogram/hdrhistogram-go.
// A Histogram is not safe for concurrent use: keep one per thread (pager
// thread, touching thread) and Merge them to combine. Snapshot gives a
// compact JSON-able value that FromSnapshot turns back into a Histogram,
// which is how workers hand their measurements to the bench and how pagers
// export theirs.
package hist

import (
	"errors"
	"fmt"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Range and precision of every Histogram.
const (
	// LowestNS is the lowest value told apart from zero, in nanoseconds.
	LowestNS = 1
	// HighestNS is the highest trackable value (60 s); larger values are
	// recorded as HighestNS.
	HighestNS = int64(60 * time.Second)
	// SignificantDigits is the precision of every recorded value.
	SignificantDigits = 3
)

// ErrSnapshot is wrapped by FromSnapshot when a snapshot cannot be restored.
var ErrSnapshot = errors.New("hist: invalid snapshot")

// Histogram records nanosecond latencies. The zero value is not usable;
// call New. It is not safe for concurrent use.
type Histogram struct {
	h *hdr.Histogram
}

// New returns an empty histogram covering 1 ns .. 60 s with 3 significant
// digits.
func New() *Histogram {
	return &Histogram{h: hdr.New(LowestNS, HighestNS, SignificantDigits)}
}

// Record adds one value in nanoseconds. Values below 1 are recorded as 1 and
// values above 60 s as 60 s, so a count is never lost.
func (h *Histogram) Record(ns int64) {
	if ns < LowestNS {
		ns = LowestNS
	} else if ns > HighestNS {
		ns = HighestNS
	}
	// Cannot fail: ns is within the trackable range.
	_ = h.h.RecordValue(ns)
}

// RecordDuration adds d as nanoseconds (see Record).
func (h *Histogram) RecordDuration(d time.Duration) { h.Record(int64(d)) }

// Merge adds every value of o to h. o is unchanged; merging nil is a no-op.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil {
		return
	}
	src := o.h
	if o == h {
		src = o.h.Clone() // merging into itself doubles every count
	}
	// Cannot drop values: both histograms have the same range.
	h.h.Merge(src)
}

// Count is the number of recorded values.
func (h *Histogram) Count() int64 { return h.h.TotalCount() }

// Quantile returns the value at quantile q in [0,1] (0.5 = median,
// 0.99 = p99), at the histogram's precision. It returns 0 for an empty
// histogram; q outside [0,1] is clamped.
func (h *Histogram) Quantile(q float64) int64 {
	if h.h.TotalCount() == 0 {
		return 0
	}
	switch {
	case q < 0 || q != q: // NaN too
		q = 0
	case q > 1:
		q = 1
	}
	return h.h.ValueAtQuantile(q * 100)
}

// Mean is the arithmetic mean of the recorded values (0 when empty).
func (h *Histogram) Mean() float64 {
	if h.h.TotalCount() == 0 {
		return 0
	}
	return h.h.Mean()
}

// Min is the smallest recorded value at the histogram's precision (0 when empty).
func (h *Histogram) Min() int64 {
	if h.h.TotalCount() == 0 {
		return 0
	}
	return h.h.Min()
}

// Max is the largest recorded value at the histogram's precision (0 when empty).
func (h *Histogram) Max() int64 {
	if h.h.TotalCount() == 0 {
		return 0
	}
	return h.h.Max()
}

// Reset forgets every recorded value.
func (h *Histogram) Reset() { h.h.Reset() }

// Point is one step of a cumulative distribution: Fraction of the values are
// at most NS nanoseconds.
type Point struct {
	NS       int64
	Fraction float64
}

// CDF returns the cumulative distribution, one point per non-empty bucket,
// in increasing NS order; the last point has Fraction 1. Empty → nil.
func (h *Histogram) CDF() []Point {
	total := h.h.TotalCount()
	if total == 0 {
		return nil
	}
	var pts []Point
	var seen int64
	for _, b := range h.h.Distribution() {
		if b.Count == 0 {
			continue
		}
		seen += b.Count
		pts = append(pts, Point{NS: b.To, Fraction: float64(seen) / float64(total)})
	}
	return pts
}

// Snapshot is a histogram as a plain value: its geometry and its non-empty
// buckets. It marshals to compact JSON.
type Snapshot struct {
	// Lowest, Highest and Digits are the histogram's geometry.
	Lowest  int64 `json:"lowest"`
	Highest int64 `json:"highest"`
	Digits  int64 `json:"digits"`
	// Count is the total number of values (a check on Bins).
	Count int64 `json:"count"`
	// Bins holds [bucket index, count] for every non-empty bucket.
	Bins [][2]int64 `json:"bins,omitempty"`
}

// Snapshot returns h's content as a value; later Records do not change it.
func (h *Histogram) Snapshot() Snapshot {
	ex := h.h.Export()
	s := Snapshot{
		Lowest:  ex.LowestTrackableValue,
		Highest: ex.HighestTrackableValue,
		Digits:  ex.SignificantFigures,
		Count:   h.h.TotalCount(),
	}
	for i, c := range ex.Counts {
		if c != 0 {
			s.Bins = append(s.Bins, [2]int64{int64(i), c})
		}
	}
	return s
}

// FromSnapshot restores a histogram from s. It fails (wrapping ErrSnapshot)
// when the geometry is not this package's, when a bin is out of range or
// negative, or when the bins do not add up to s.Count.
func FromSnapshot(s Snapshot) (*Histogram, error) {
	if s.Lowest != LowestNS || s.Highest != HighestNS || s.Digits != SignificantDigits {
		return nil, fmt.Errorf("%w: geometry %d..%d/%d digits, want %d..%d/%d",
			ErrSnapshot, s.Lowest, s.Highest, s.Digits, LowestNS, HighestNS, SignificantDigits)
	}
	h := New()
	ex := h.h.Export()
	n := len(ex.Counts)
	counts := make([]int64, n)
	var total int64
	for _, b := range s.Bins {
		idx, c := b[0], b[1]
		if idx < 0 || idx >= int64(n) {
			return nil, fmt.Errorf("%w: bin index %d outside 0..%d", ErrSnapshot, idx, n-1)
		}
		if c < 0 {
			return nil, fmt.Errorf("%w: bin %d has negative count %d", ErrSnapshot, idx, c)
		}
		counts[idx] += c
		total += c
		if total < 0 {
			return nil, fmt.Errorf("%w: counts overflow", ErrSnapshot)
		}
	}
	if total != s.Count {
		return nil, fmt.Errorf("%w: bins add up to %d values, snapshot says %d", ErrSnapshot, total, s.Count)
	}
	hs := &hdr.Snapshot{
		LowestTrackableValue:  s.Lowest,
		HighestTrackableValue: s.Highest,
		SignificantFigures:    s.Digits,
		Counts:                counts,

		IntegerToDoubleConversionRatio: ex.IntegerToDoubleConversionRatio,
	}
	if err := hs.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSnapshot, err)
	}
	return &Histogram{h: hdr.Import(hs)}, nil
}
