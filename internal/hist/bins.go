package hist

// How a Snapshot's bin index maps to nanoseconds. With this package's
// geometry (lowest 1 ns, 3 significant digits) HdrHistogram uses 2048
// sub-buckets per bucket (the power of two ≥ 2×10³), half of them new in
// each bucket after the first, and a unit of 1 ns:
//
//	index i < 2048:  the bin holds exactly i ns             [i, i]
//	index i ≥ 2048:  b = i/1024 − 1, s = i mod 1024 + 1024  [s·2^b, (s+1)·2^b − 1]
//
// so every bin's width is at most 1/1024 of its lowest value.
const (
	subBucketHalfMagnitude = 10 // log2(1024)
	subBucketHalf          = 1 << subBucketHalfMagnitude
)

// BinRange returns the lowest and highest nanosecond value (inclusive) that
// bin index i of a Snapshot counts. It is the formula above;
// TestBinRangeMatchesHdr checks it against HdrHistogram for every index.
func BinRange(i int64) (lo, hi int64) {
	if i < 2*subBucketHalf {
		return i, i
	}
	b := i>>subBucketHalfMagnitude - 1
	s := i&(subBucketHalf-1) + subBucketHalf
	return s << b, (s+1)<<b - 1
}

// RangesNS returns the bins of s as [lowest ns, highest ns, count], in the
// order of s.Bins.
func (s Snapshot) RangesNS() [][3]int64 {
	if len(s.Bins) == 0 {
		return nil
	}
	out := make([][3]int64, len(s.Bins))
	for i, b := range s.Bins {
		lo, hi := BinRange(b[0])
		out[i] = [3]int64{lo, hi, b[1]}
	}
	return out
}
