package pager

import (
	"math/bits"
	"sync"

	"github.com/vcored/vcored/internal/hist"
)

// DataspaceStats are the counters of one dataspace.
type DataspaceStats struct {
	// Faults read (or resolved through Resolve).
	Faults uint64
	// Pages mapped (more than Faults with fault-around).
	Pages uint64
	// Prefetched pages mapped ahead of a fault stream (counted in Pages
	// too).
	Prefetched uint64
	// Replicated faults of Forward regions served from Options.Replica
	// instead of being forwarded.
	Replicated uint64
	// Forwarded faults handed to Options.Forward.
	Forwarded uint64
	// Errors: faults that could not be resolved (outside every region,
	// worker gone, kernel refusal).
	Errors uint64
	// Breakdown of the faults resolved here (not forwarded, not from a
	// replica): Timed faults, and the summed time of the read(2) that
	// returned them (each fault's share of its batch), of the pager's own
	// work (region lookup, content fill, bookkeeping) and of the
	// UFFDIO_COPY/ZEROPAGE/WAKE ioctls, in ns.
	Timed                   uint64
	ReadNS, WorkNS, IoctlNS uint64
	// Latency of resolved faults, from reading the fault to the end of
	// UFFDIO_COPY/ZEROPAGE (for Resolve: the call's duration), in ns, as a
	// compact snapshot (a live HDR histogram is >200 KiB; with a thousand
	// dataspaces that adds up). LatencyHistogram restores it.
	Latency hist.Snapshot
}

// LatencyHistogram returns Latency as a histogram the caller owns.
func (s DataspaceStats) LatencyHistogram() *hist.Histogram {
	h, err := hist.FromSnapshot(s.Latency)
	if err != nil {
		return hist.New() // only a zero-value Snapshot gets here
	}
	return h
}

// UnknownDataspace is the Stats key of faults outside every region.
const UnknownDataspace = "(unknown)"

// Stats returns the counters per dataspace, merged over the pager threads.
// Dataspaces that have had no fault are listed with zero counts.
func (p *Pager) Stats() map[string]DataspaceStats {
	p.stats.mu.Lock()
	names := append([]string(nil), p.stats.names...)
	p.stats.mu.Unlock()
	merged := make([]*dsCounters, len(names))
	add := func(cs []*dsCounters) {
		for i, c := range cs {
			if c == nil || i >= len(merged) {
				continue
			}
			if merged[i] == nil {
				merged[i] = new(dsCounters)
			}
			merged[i].add(c)
		}
	}
	for _, t := range p.threads {
		t.stats.mu.Lock()
		add(t.stats.ds)
		t.stats.mu.Unlock()
	}
	p.stats.sharedMu.Lock()
	add(p.stats.sharedC)
	p.stats.sharedMu.Unlock()

	out := make(map[string]DataspaceStats, len(names))
	for i, name := range names {
		c := merged[i]
		if c == nil {
			if i == 0 {
				continue // no unknown faults: leave it out
			}
			out[name] = DataspaceStats{Latency: emptySnapshot()}
			continue
		}
		out[name] = DataspaceStats{
			Faults: c.faults, Pages: c.pages, Prefetched: c.prefetched, Replicated: c.replicated,
			Timed: c.timed, ReadNS: c.readNS, WorkNS: c.workNS, IoctlNS: c.ioctlNS, Forwarded: c.forwarded, Errors: c.errors,
			Latency: c.lat.snapshot(),
		}
	}
	return out
}

// statsTable maps dataspace names to indexes and holds the counters of
// Resolve calls (which run on any goroutine).
type statsTable struct {
	mu    sync.Mutex
	names []string // index → name; 0 is UnknownDataspace
	index map[string]int

	sharedMu sync.Mutex
	sharedC  []*dsCounters
}

func (s *statsTable) init() {
	s.names = []string{UnknownDataspace}
	s.index = map[string]int{UnknownDataspace: 0}
}

// indexOf returns the index of dataspace name, adding it if new.
func (s *statsTable) indexOf(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[name]; ok {
		return i
	}
	s.names = append(s.names, name)
	s.index[name] = len(s.names) - 1
	return len(s.names) - 1
}

// shared updates the Resolve counters of dataspace ds.
func (s *statsTable) shared(f func(*dsCounters), ds int) {
	s.sharedMu.Lock()
	f(getCounters(&s.sharedC, ds))
	s.sharedMu.Unlock()
}

func getCounters(cs *[]*dsCounters, ds int) *dsCounters {
	if ds >= len(*cs) {
		*cs = append(*cs, make([]*dsCounters, ds+1-len(*cs))...)
	}
	c := (*cs)[ds]
	if c == nil {
		c = new(dsCounters)
		(*cs)[ds] = c
	}
	return c
}

// threadStats are one pager thread's counters; mu is held by the thread
// while it handles a batch and by Stats while it reads.
type threadStats struct {
	mu sync.Mutex
	ds []*dsCounters
}

func (s *threadStats) get(ds int) *dsCounters { return getCounters(&s.ds, ds) }

// dsCounters are the counters of one dataspace on one thread.
type dsCounters struct {
	faults, pages, prefetched, replicated, forwarded, errors uint64
	timed, readNS, workNS, ioctlNS                           uint64
	lat                                                      latRecorder
}

func (c *dsCounters) add(o *dsCounters) {
	c.faults += o.faults
	c.pages += o.pages
	c.prefetched += o.prefetched
	c.replicated += o.replicated
	c.timed += o.timed
	c.readNS += o.readNS
	c.workNS += o.workNS
	c.ioctlNS += o.ioctlNS
	c.forwarded += o.forwarded
	c.errors += o.errors
	for i, n := range o.lat.counts {
		c.lat.counts[i] += n
	}
}

// latRecorder is a compact log-linear latency histogram (about 4 KiB, ±1.6%
// resolution, 1 ns .. 137 s) for the fault path: an HDR histogram of the
// hist package's precision takes over 200 KiB, too much per dataspace and
// thread. It becomes a hist.Histogram when read.
type latRecorder struct {
	counts [latBuckets]uint32
}

const (
	latSubBits = 5 // 32 sub-buckets per power of two
	latSub     = 1 << latSubBits
	latMaxBit  = 36 // values up to 2^37-1 ns
	latBuckets = latSub + (latMaxBit-latSubBits+1)*latSub
)

func latIndex(ns int64) int {
	if ns < latSub {
		return int(max(ns, 0))
	}
	o := bits.Len64(uint64(ns)) - 1
	if o > latMaxBit {
		return latBuckets - 1
	}
	return latSub + (o-latSubBits)*latSub + int((uint64(ns)>>(o-latSubBits))&(latSub-1))
}

// latValue is the middle of bucket i.
func latValue(i int) int64 {
	if i < latSub {
		return int64(i)
	}
	o := (i-latSub)/latSub + latSubBits
	sub := int64((i - latSub) % latSub)
	width := int64(1) << (o - latSubBits)
	return (latSub+sub)*width + width/2
}

func (r *latRecorder) record(ns int64) { r.counts[latIndex(ns)]++ }

func emptySnapshot() hist.Snapshot {
	return hist.Snapshot{Lowest: hist.LowestNS, Highest: hist.HighestNS, Digits: hist.SignificantDigits}
}

// snapshot converts r to a hist.Snapshot, each bucket recorded at its middle
// value: built directly with the HDR bucket layout (cheap whatever the
// count), or through a histogram, value by value, if hist's geometry is not
// the one hdrIndex assumes.
func (r *latRecorder) snapshot() hist.Snapshot {
	if !hdrGeometryOK() {
		h := hist.New()
		for i, n := range r.counts {
			for range n {
				h.Record(latValue(i))
			}
		}
		return h.Snapshot()
	}
	s := emptySnapshot()
	last := int64(-1)
	for i, n := range r.counts {
		if n == 0 {
			continue
		}
		idx := hdrIndex(min(latValue(i), hist.HighestNS))
		if idx == last { // buckets only merge, in increasing order
			s.Bins[len(s.Bins)-1][1] += int64(n)
		} else {
			s.Bins = append(s.Bins, [2]int64{idx, int64(n)})
			last = idx
		}
		s.Count += int64(n)
	}
	return s
}

// hdrIndex is the counts index HdrHistogram gives value v for the geometry
// 1 ns .. 60 s, 3 significant digits (unit magnitude 0, 2048 sub-buckets).
func hdrIndex(v int64) int64 {
	const (
		subBucketHalfCountMagnitude = 10
		subBucketHalfCount          = 1 << subBucketHalfCountMagnitude
		subBucketMask               = 2*subBucketHalfCount - 1
	)
	pow2Ceiling := int64(64 - bits.LeadingZeros64(uint64(v|subBucketMask)))
	bucket := pow2Ceiling - (subBucketHalfCountMagnitude + 1)
	sub := v >> uint(bucket)
	return (bucket+1)<<subBucketHalfCountMagnitude + sub - subBucketHalfCount
}

// hdrGeometryOK checks once that hdrIndex matches the hist package.
var hdrGeometryOK = sync.OnceValue(func() bool {
	if hist.LowestNS != 1 || hist.SignificantDigits != 3 {
		return false
	}
	for _, v := range []int64{1, 999, 2047, 2048, 5000, 13_000, 1 << 20, 59_000_000_000} {
		h := hist.New()
		h.Record(v)
		s := h.Snapshot()
		if len(s.Bins) != 1 || s.Bins[0][0] != hdrIndex(v) {
			return false
		}
	}
	return true
})
