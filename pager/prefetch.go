package pager

import (
	"errors"
	"sync"

	"github.com/vcored/vcored/internal/linux"
)

// Prefetch (Region.Prefetch): the pager detects sequential and strided
// streams of faults per region and maps the pages ahead of the stream
// itself, after waking the faulting thread.
//
// A stream is a run of faults each one step (its stride) after the last;
// a sequential stream's step is the fault-around window, so its pages are
// contiguous. Three faults in a row make a stream (the second gives the
// stride, the third confirms it); from then on every fault that continues
// the stream (one stride on, or inside what was mapped ahead of it) doubles
// the window mapped ahead, up to Options.PrefetchMax pages, and a fault
// that does not halves it (at 0 nothing is mapped ahead). Random access
// therefore costs the comparisons of one fault and nothing else.
//
// The pages ahead are copied in chunks of prefetchChunk pages with
// UFFDIO_COPY_MODE_DONTWAKE (nobody waits on them; a page already present
// ends the copy with EEXIST and is skipped). Between chunks the pager
// thread polls its epoll set without blocking and serves every pending
// event first: a real fault always jumps the queue. Pages are only ever
// mapped inside the region, whose memory the holder charged at attach (a
// subsystem's quota), so prefetch never maps more than the region holds.

// DefaultPrefetchMax is Options.PrefetchMax's default: 1 MiB of 4 KiB pages.
const DefaultPrefetchMax = 256

// prefetchChunk is the pages copied per UFFDIO_COPY of prefetch, between
// two polls for real faults.
const prefetchChunk = 16

// prefetchFirst is the window (pages) mapped ahead once a stream is seen.
const prefetchFirst = 16

// stridedSync is how many pages of a strided stream a fault maps ahead
// before its own page (and the wake-up): a worker that outruns the
// prefetch (its next step comes before the pager's next chunk) still
// finds the next steps mapped.
const stridedSync = 4

// maxStridePages bounds what counts as a stride: faults further apart are
// not a stream.
const maxStridePages = 64

// stream is a region's fault-stream detector.
type stream struct {
	mu     sync.Mutex
	prev   uintptr // the last fault's page (0: none yet)
	stride uintptr // bytes between the stream's faults (0: no stream)
	ahead  uintptr // end of what was mapped ahead of the stream (0: nothing)
	window int     // pages to map ahead of the next fault of the stream
}

// prefetchJob is what a thread still has to map ahead of one stream.
type prefetchJob struct {
	e        *uffdEntry
	r        *region
	cur, end uintptr // next page to map; end of the range
	stride   uintptr // 0: contiguous; else one fault-around window every stride
}

// observe feeds the fault at addr (its fault-around window [lo, hi)) to
// r's detector. It returns the window to resolve now: [lo, hi), or up to
// prefetchChunk pages when a sequential stream caught up with what was
// being mapped ahead of it (the thread would fault again right away), and
// the range to map ahead, if any (ok false: none). Called on a pager
// thread.
func (p *Pager) observe(r *region, addr, lo, hi uintptr) (newHi uintptr, job prefetchJob, ok bool) {
	s := r.stream
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := p.ps
	step := hi - lo // a sequential stream's stride
	hit := false
	switch {
	case s.stride != 0 && s.prev != 0 && addr == s.prev+s.stride:
		hit = true
	case s.stride != 0 && s.ahead != 0 && addr > s.prev && addr <= s.ahead && (s.stride <= step || (addr-s.prev)%s.stride == 0):
		// Inside (or right after) what was mapped ahead: the stream
		// caught up with the prefetch.
		hit = true
	}
	if hit {
		s.window = min(max(2*s.window, prefetchFirst), p.opts.PrefetchMax)
	} else {
		s.window /= 2
		s.ahead = 0
		s.stride = 0
		if s.prev != 0 && addr > s.prev && addr-s.prev <= maxStridePages*ps {
			s.stride = addr - s.prev
		}
	}
	s.prev = addr
	if !hit || s.window == 0 {
		return hi, prefetchJob{}, false
	}
	// What a pending job of the stream mapped already is skipped when
	// the job is replaced (queuePrefetch).
	if s.stride <= step {
		if addr < s.ahead {
			hi = max(hi, min(lo+prefetchChunk*ps, s.ahead, r.end))
		}
		// Sequential: the pages after the window, contiguous.
		end := min(hi+uintptr(s.window)*ps, r.end)
		if hi >= end {
			return hi, prefetchJob{}, false
		}
		s.ahead = end
		return hi, prefetchJob{r: r, cur: hi, end: end}, true
	}
	// Strided: the next window steps, one fault-around window each.
	steps := max(s.window/max(int(step/ps), 1), 1)
	next := addr + s.stride
	end := min(addr+uintptr(steps+1)*s.stride, r.end)
	if next >= end {
		return hi, prefetchJob{}, false
	}
	s.ahead = end
	return hi, prefetchJob{r: r, cur: next, end: end, stride: s.stride}, true
}

// queuePrefetch adds job, replacing a pending one of the same region (and
// starting where that one got to, if it is inside the new range).
func (t *thread) queuePrefetch(job prefetchJob) {
	for i := range t.jobs {
		if old := t.jobs[i]; old.r == job.r {
			if old.e == job.e && old.stride == job.stride && old.cur > job.cur && old.cur < job.end {
				job.cur = old.cur
			}
			t.jobs[i] = job
			return
		}
	}
	if len(t.jobs) >= 8 {
		t.jobs = t.jobs[1:] // the oldest stream waits longest: drop it
	}
	t.jobs = append(t.jobs, job)
}

// prefetchStep maps the next chunk of the first pending job. Pages that
// are present already are skipped; a region that changed (cut, moved,
// removed) or any other error ends the job.
func (t *thread) prefetchStep() {
	if len(t.jobs) == 0 {
		return
	}
	j := &t.jobs[0]
	done, pages := t.p.prefetchChunkOf(j, t)
	if pages > 0 {
		t.stats.mu.Lock()
		st := t.stats.get(j.r.ds)
		st.prefetched += uint64(pages)
		st.pages += uint64(pages)
		t.stats.mu.Unlock()
	}
	if done {
		t.jobs[0] = prefetchJob{}
		t.jobs = t.jobs[1:]
	}
}

// prefetchChunkOf maps up to prefetchChunk pages of j; it reports whether
// the job is over and how many pages it mapped.
func (p *Pager) prefetchChunkOf(j *prefetchJob, t *thread) (done bool, pages int) {
	e := j.e
	e.use.RLock()
	defer e.use.RUnlock()
	if e.closed || e.find(j.cur) != j.r {
		return true, 0
	}
	return p.mapAhead(j, t, prefetchChunk)
}

// mapAhead maps up to limit pages of j (j.e.use held, the region
// current); it reports whether the job is over and how many pages it
// mapped.
func (p *Pager) mapAhead(j *prefetchJob, t *thread, limit int) (done bool, pages int) {
	e := j.e
	r := j.r
	ps := p.ps
	var cmode uint64 = linux.UFFDIO_COPY_MODE_DONTWAKE
	if r.Track {
		cmode |= linux.UFFDIO_COPY_MODE_WP
	}
	copyRange := func(lo, hi uintptr) error {
		for lo < hi {
			var src []byte
			if r.Content.IsZero() {
				src = p.zero[:hi-lo]
			} else {
				src = t.pbuf[:hi-lo]
				if err := r.Content.Fill(src, r.Offset+uint64(lo-r.Start)); err != nil {
					return err
				}
			}
			n, err := e.u.Copy(lo, src, cmode)
			pages += int(uintptr(n) / ps)
			if err == nil {
				return nil
			}
			if !errors.Is(err, linux.EEXIST) {
				return err
			}
			lo += uintptr(n) + ps // skip the present page
		}
		return nil
	}
	if j.stride == 0 {
		hi := min(j.cur+uintptr(limit)*ps, j.end)
		err := copyRange(j.cur, hi)
		j.cur = hi
		return err != nil || j.cur >= j.end, pages
	}
	for n := 0; n < limit && j.cur < j.end; {
		lo, hi := p.window(r, j.cur)
		if err := copyRange(lo, hi); err != nil {
			return true, pages
		}
		n += int((hi - lo) / ps)
		j.cur += j.stride
	}
	return j.cur >= j.end, pages
}

// window is the fault-around window of the page addr of r.
func (p *Pager) window(r *region, addr uintptr) (lo, hi uintptr) {
	ps := p.ps
	lo, hi = addr, addr+ps
	if p.around > 1 {
		idx := (addr - r.Start) / ps
		lo = r.Start + (idx-idx%uintptr(p.around))*ps
		hi = min(lo+uintptr(p.around)*ps, r.end)
	}
	return lo, hi
}
