package hist

import (
	"os"
	"regexp"
	"strconv"
	"testing"
)

// TestBinRangeMatchesHdr: the documented index → ns formula (BinRange) is
// HdrHistogram's own bucket range for every index of the counts array.
func TestBinRangeMatchesHdr(t *testing.T) {
	h := New()
	h.Record(HighestNS) // Distribution walks every index up to the last non-empty one
	bars := h.h.Distribution()
	n := len(h.h.Export().Counts)
	// The bars end at the bucket of HighestNS, the last one a value can
	// be recorded in (the counts array has a few unused slots after it).
	if len(bars) > n || len(bars) < n-2*subBucketHalf {
		t.Fatalf("%d bars for %d counts", len(bars), n)
	}
	if last := bars[len(bars)-1]; last.From > HighestNS || last.To < HighestNS {
		t.Fatalf("the last bar [%d, %d] does not hold HighestNS", last.From, last.To)
	}
	for i, bar := range bars {
		lo, hi := BinRange(int64(i))
		if lo != bar.From || hi != bar.To {
			t.Fatalf("index %d: BinRange [%d, %d], hdr [%d, %d]", i, lo, hi, bar.From, bar.To)
		}
		if i >= 2048 && (hi-lo+1)*1024 > lo {
			t.Fatalf("index %d: [%d, %d] is wider than 1/1024 of its value", i, lo, hi)
		}
	}
}

// TestRangesNS: every recorded value lies in the range of the bin that
// counts it.
func TestRangesNS(t *testing.T) {
	values := []int64{1, 2, 999, 2047, 2048, 2049, 4095, 12345, 12345, 37_570, 1_000_000, HighestNS}
	h := New()
	for _, v := range values {
		h.Record(v)
	}
	s := h.Snapshot()
	rs := s.RangesNS()
	if len(rs) != len(s.Bins) {
		t.Fatalf("%d ranges for %d bins", len(rs), len(s.Bins))
	}
	var total int64
	for i, r := range rs {
		var in int64
		for _, v := range values {
			if r[0] <= v && v <= r[1] {
				in++
			}
		}
		if in != r[2] || r[2] != s.Bins[i][1] {
			t.Errorf("bin %d [%d, %d]: count %d (bins says %d), %d recorded values in it", i, r[0], r[1], r[2], s.Bins[i][1], in)
		}
		total += r[2]
	}
	if total != int64(len(values)) {
		t.Errorf("ranges count %d values, want %d", total, len(values))
	}
}

// TestBinRangeDocExample: the conversion example in docs/PROTOCOL.md
// ("Histogram bins") is what BinRange gives.
func TestBinRangeDocExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`e\.g\. index (\d+): .*so \[(\d+), (\d+)\] ns`).FindSubmatch(doc)
	if m == nil {
		t.Fatal(`docs/PROTOCOL.md has no "e.g. index N: ... so [LO, HI] ns" example`)
	}
	i, _ := strconv.ParseInt(string(m[1]), 10, 64)
	lo, _ := strconv.ParseInt(string(m[2]), 10, 64)
	hi, _ := strconv.ParseInt(string(m[3]), 10, 64)
	if gotLo, gotHi := BinRange(i); gotLo != lo || gotHi != hi {
		t.Errorf("doc: index %d is [%d, %d] ns; BinRange says [%d, %d]", i, lo, hi, gotLo, gotHi)
	}
	h := New()
	h.Record(lo)
	h.Record(hi)
	if s := h.Snapshot(); len(s.Bins) != 1 || s.Bins[0][0] != i {
		t.Errorf("values %d and %d land in bins %v, want one bin of index %d", lo, hi, s.Bins, i)
	}
}
