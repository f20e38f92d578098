package pager

import (
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// Prefetch (Region.Prefetch): the pager detects sequential and strided
// streams of faults per region and maps the pages ahead of the stream
// itself.
//
// A stream is a run of faults each one step (its stride) after the last;
// a sequential stream's step is the fault-around window, so its pages are
// contiguous. Three faults in a row make a stream (the second gives the
// stride, the third confirms it); from then on every fault that continues
// the stream (one stride on, or inside what was mapped ahead of it) doubles
// the window mapped ahead (prefetchFirst pages at first), up to
// Options.PrefetchMax pages, and a fault that does not halves it (at 0
// nothing is mapped ahead). Random access therefore costs the comparisons
// of one fault and nothing else.
//
// A fault that continues a sequential stream is resolved together with the
// next prefetchSync pages after its window, in one UFFDIO_COPY from one
// prepared source (the zero buffer, or the thread's buffer filled once):
// the faulting thread wakes to find them mapped, and on a one-CPU
// partition (pager and worker on the same CPU) that saves a round trip
// per prefetchSync pages, the larger part of a fault's cost. The rest of
// the window is queued and copied in chunks of prefetchChunk pages
// (without UFFDIO_COPY_MODE_DONTWAKE, so a thread that faulted on a page
// of the chunk in the meantime is woken by the copy itself; a page
// already present is skipped). Between chunks the pager thread polls its
// epoll set without blocking and serves every pending event first: a real
// fault always jumps the queue. Pages are only ever mapped inside the
// region, whose memory the holder charged at attach (a subsystem's
// quota), so prefetch never maps more than the region holds, and never
// more than PrefetchMax pages ahead of the stream.

// DefaultPrefetchMax is Options.PrefetchMax's default: 2 MiB of 4 KiB pages.
const DefaultPrefetchMax = 512

// prefetchChunk is the pages copied per UFFDIO_COPY of queued prefetch,
// between two polls for real faults. A copy of 64 pages costs ~60% of 16
// single-page copies' per-page cost on this machine class.
const prefetchChunk = 64

// prefetchSync is the most pages after its window a fault continuing a
// sequential stream maps in its own UFFDIO_COPY, before the faulting
// thread wakes.
const prefetchSync = 64

// prefetchFirst is the window (pages) mapped ahead once a stream is seen.
const prefetchFirst = 64

// prefetchBufPages is the size (pages) a source buffer for prefetch copies
// needs besides the fault-around window.
const prefetchBufPages = max(prefetchChunk, prefetchSync)

// stridedSync is how many pages of a strided stream a fault maps ahead
// before its own page (and the wake-up): a worker that outruns the
// prefetch (its next step comes before the pager's next chunk) still
// finds the next steps mapped.
const stridedSync = 4

// maxStridePages bounds what counts as a stride: faults further apart are
// not a stream.
const maxStridePages = 64

// hookEvent is what prefetchHook is told about.
type hookEvent int

const (
	hookFault hookEvent = iota // a fault of a Prefetch region was handled (addr)
	hookChunk                  // a chunk of queued prefetch was mapped (addr: where the job got to)
)

// prefetchHook, if set (by tests, before any Pager starts), is called on
// the pager thread after each fault of a Prefetch region and each chunk of
// queued prefetch, with the jobs still queued.
var prefetchHook func(ev hookEvent, r *region, addr uintptr, jobs []prefetchJob)

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
// r's detector. It returns the end of the range to resolve now (hi, or up
// to prefetchSync pages further when the fault continues a sequential
// stream) and the range to map ahead after it, if any (ok false: none).
// Called on a pager thread.
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
		// Sequential: the pages after the window, contiguous; the first
		// prefetchSync of them with the fault itself.
		end := min(hi+uintptr(s.window)*ps, r.end)
		if hi >= end {
			return hi, prefetchJob{}, false
		}
		s.ahead = end
		sync := min(hi+uintptr(min(s.window, prefetchSync))*ps, end)
		if sync >= end {
			return sync, prefetchJob{}, false
		}
		return sync, prefetchJob{r: r, cur: sync, end: end}, true
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

// streamFault handles a fault of a Prefetch region (fault's tail: e.use
// and t.stats.mu held): the detector may extend the range resolved now
// and queue what to map ahead once the faulting thread is awake.
func (t *thread) streamFault(e *uffdEntry, r *region, addr, lo, hi uintptr, write bool, start time.Time, st *dsCounters) error {
	p := t.p
	tu := t.timing(e)
	whi, job, ok := p.observe(r, addr, lo, hi)
	if ok && job.stride != 0 {
		// A strided stream: the next steps first (no wake-up), so that
		// a worker outrunning the prefetch finds them mapped.
		job.e = e
		done, n := p.mapAhead(&job, t, stridedSync)
		st.prefetched += uint64(n)
		st.pages += uint64(n)
		ok = !done
	}
	var pages int
	var err error
	if whi > hi && !(write && r.Track) {
		// (A tracked region's write fault goes through resolveRange:
		// its page is recorded as written and mapped unprotected.)
		var ahead int
		pages, ahead, err = p.copyWithAhead(e, r, addr, lo, hi, whi, t.pbuf, write, tu)
		st.prefetched += uint64(ahead)
	} else {
		pages, err = p.resolveRange(e, r, addr, lo, hi, t.pbuf, write, write, tu)
	}
	st.pages += uint64(pages)
	t.breakdown(st, start, tu.ns, err)
	if err == nil && ok {
		job.e = e
		t.queuePrefetch(job)
	}
	if h := prefetchHook; h != nil {
		h(hookFault, r, addr, t.jobs)
	}
	return t.settle(e, r, addr, write, start, err, st)
}

// copyWithAhead resolves the fault at addr (window [lo, hi)) together with
// the pages up to whi after it: one UFFDIO_COPY of [lo, whi), which wakes
// the faulting thread. If a page of the range is present already before
// the faulting page was copied, the window alone is resolved as any fault
// (resolveRange). It returns the pages mapped and how many of them lie
// after the window.
func (p *Pager) copyWithAhead(e *uffdEntry, r *region, addr, lo, hi, whi uintptr, buf []byte, write bool, tu *timedUffd) (pages, ahead int, err error) {
	src, err := p.source(r, lo, whi, buf)
	if err != nil {
		return 0, 0, err
	}
	var cmode uint64
	if r.Track {
		cmode = linux.UFFDIO_COPY_MODE_WP
	}
	n, err := tu.Copy(lo, src, cmode)
	if lo+uintptr(n) > addr {
		// The faulting page is mapped and woken; a copy cut short (a page
		// present further on: EAGAIN with a count) mapped the rest of
		// what it could.
		end := lo + uintptr(n)
		return int(uintptr(n) / p.ps), int(max(end, hi)-hi) / int(p.ps), nil
	}
	if err != nil && !errors.Is(err, linux.EEXIST) && !errors.Is(err, linux.EAGAIN) {
		return int(uintptr(n) / p.ps), 0, err
	}
	m, err := p.resolveRange(e, r, addr, lo, hi, buf, write, write, tu)
	return int(uintptr(n)/p.ps) + m, 0, err
}

// source returns the bytes of r's content for [lo, hi): the zero buffer
// for zero content, else buf filled.
func (p *Pager) source(r *region, lo, hi uintptr, buf []byte) ([]byte, error) {
	if r.Content.IsZero() {
		return p.zero[:hi-lo], nil
	}
	src := buf[:hi-lo]
	if err := r.Content.Fill(src, r.Offset+uint64(lo-r.Start)); err != nil {
		return nil, err
	}
	return src, nil
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
		t.jobs = slices.Delete(t.jobs, 0, 1) // the oldest stream waits longest: drop it
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
	if h := prefetchHook; h != nil {
		h(hookChunk, j.r, j.cur, t.jobs)
	}
	if pages > 0 {
		t.stats.mu.Lock()
		st := t.stats.get(j.r.ds)
		st.prefetched += uint64(pages)
		st.pages += uint64(pages)
		t.stats.mu.Unlock()
	}
	if done {
		// In place: reslicing from the front would shrink the capacity
		// and make a later append allocate.
		t.jobs = slices.Delete(t.jobs, 0, 1)
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
	// Without DONTWAKE: a thread that faulted on a page of the chunk
	// meanwhile is woken by the copy (its fault message goes with it).
	var cmode uint64
	if r.Track {
		cmode |= linux.UFFDIO_COPY_MODE_WP
	}
	copyRange := func(lo, hi uintptr) error {
		for lo < hi {
			src, err := p.source(r, lo, hi, t.pbuf)
			if err != nil {
				return err
			}
			n, err := e.u.Copy(lo, src, cmode)
			pages += int(uintptr(n) / ps)
			switch {
			case err == nil:
				return nil
			case n > 0:
				lo += uintptr(n) // cut short by a present page: the next copy skips it
			case errors.Is(err, linux.EEXIST):
				lo += ps // skip the present page
			default:
				return err
			}
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
