package pager

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"github.com/vcored/vcored/internal/linux"
)

// Restore prefetch: a region whose content is a checkpoint image is
// restored lazily, page by page on first touch; PrefetchOrder also maps its
// pages ahead of the faults, in the order the previous run first touched
// them (ckpt's TOUCH-ORDER), in the background.
//
// The prefetch runs on an OS thread of its own, pinned to the pager's CPUs
// and scheduled SCHED_IDLE: a pager thread woken by a real fault preempts
// it at once, and it never takes CPU time the pager threads (or anything
// else there) want. It copies runs of consecutive pages of the order, at
// most prefetchChunk pages per UFFDIO_COPY (DONTWAKE: nobody waits on
// them; a page present already — faulted in meanwhile — ends its copy with
// EEXIST and is skipped, never overwritten). Pages of a Track region are
// copied write-protected: a prefetched page is clean until the worker
// writes it. Every page comes through the region's content source, which
// for an image verifies each page's checksum: a page that fails stops the
// prefetch and is not mapped. Pages beyond the region are dropped before
// the start; a region removed, moved or cut meanwhile ends the prefetch.

// OrderPrefetch is a running (or finished) PrefetchOrder.
type OrderPrefetch struct {
	// Pages is how many pages of the order are inside the region (the
	// pages the prefetch means to map); Dropped, how many were not.
	Pages, Dropped int

	done    chan struct{}
	stop    atomic.Bool
	mapped  atomic.Int64
	present atomic.Int64
	err     error // set before done is closed
	ended   bool  // the region went away before the end (set before done)
}

// OrderPrefetchResult is the progress of an OrderPrefetch.
type OrderPrefetchResult struct {
	// Mapped pages (copied in by the prefetch) and Present ones (found
	// mapped already: faulted in first, or mapped by fault-around).
	Mapped, Present int
	// Done: the prefetch is over (all pages handled, stopped, or failed).
	Done bool
	// Ended: it stopped early because the region or uffd went away, or
	// Stop was called.
	Ended bool
	// Err is why it failed (a page's content, an ioctl).
	Err error
}

// Done is closed when the prefetch is over.
func (o *OrderPrefetch) Done() <-chan struct{} { return o.done }

// Stop asks the prefetch to stop after the chunk it is copying; it does
// not wait (see Done).
func (o *OrderPrefetch) Stop() { o.stop.Store(true) }

// Result returns the progress so far; Err and Ended once Done.
func (o *OrderPrefetch) Result() OrderPrefetchResult {
	r := OrderPrefetchResult{Mapped: int(o.mapped.Load()), Present: int(o.present.Load())}
	select {
	case <-o.done:
		r.Done, r.Err, r.Ended = true, o.err, o.ended
	default:
	}
	return r
}

// PrefetchOrder starts mapping pages (indexes from start, the start of a
// region registered on uffd id) in the given order in the background, as
// described above. Indexes beyond the region and repeated ones are dropped.
func (p *Pager) PrefetchOrder(id uint64, start uintptr, pages []uint64) (*OrderPrefetch, error) {
	p.mu.Lock()
	e, err := p.entryLocked(id)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	e.use.RLock()
	r := e.find(start)
	closed := e.closed
	e.use.RUnlock()
	if closed {
		return nil, fmt.Errorf("%w: %d (removed)", ErrUnknownUffd, id)
	}
	if r == nil || r.Start != start {
		return nil, fmt.Errorf("%w: no region starts at %#x on uffd %d", ErrNoRegion, start, id)
	}
	if r.Content == nil || r.Forward {
		return nil, fmt.Errorf("%w: region %q at %#x is not served here", ErrBadRegion, r.Dataspace, start)
	}
	n := uint64(r.Length / p.ps)
	seen := make([]uint64, (n+63)/64)
	order := make([]uint64, 0, min(uint64(len(pages)), n))
	o := &OrderPrefetch{done: make(chan struct{})}
	for _, pg := range pages {
		if pg >= n || seen[pg/64]&(1<<(pg%64)) != 0 {
			o.Dropped++
			continue
		}
		seen[pg/64] |= 1 << (pg % 64)
		order = append(order, pg)
	}
	o.Pages = len(order)
	go p.runOrder(o, e, r, order)
	return o, nil
}

// restoreChunk is the most pages the restore prefetch reads (one pread
// through the image reader, each page checksummed) and maps (one
// UFFDIO_COPY) at a time: 512 KiB of 4 KiB pages. Bigger runs cut the
// per-run costs (syscalls, the region lookup, the hand-off between the
// threads); a real fault never waits for one (it is served by a pager
// thread, which preempts the idle-priority prefetch; at worst its page is
// being copied and is there when the copy ends, ~0.1 ms).
const restoreChunk = 128

// restoreBufs is how many chunk buffers circulate between the reading
// thread and the mapping thread: one being filled, one being mapped, one
// ready.
const restoreBufs = 3

// orderRun is one run of the order read by the prefetch's reading thread:
// n pages from lo (an address in the region), their content in buf (nil
// for zero content), or the error reading them.
type orderRun struct {
	lo  uintptr
	n   int
	buf []byte
	err error
}

// runOrder is the prefetch's goroutine: it maps the runs of the order
// that readOrder read and checked. Where the pager has more than one CPU,
// readOrder runs on a thread of its own, so that reading run k+1 (pread,
// checksums) overlaps mapping run k (UFFDIO_COPY); on one CPU the two
// would only take turns, so one thread reads and maps each run in turn
// (no hand-off). Each OS thread is pinned to the pager's CPUs and
// SCHED_IDLE; it is never unlocked, so it ends with its goroutine.
func (p *Pager) runOrder(o *OrderPrefetch, e *uffdEntry, r0 *region, order []uint64) {
	defer close(o.done)
	p.idleThread()
	ps := int(p.ps)
	mem, err := linux.Mmap(restoreBufs*restoreChunk*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		o.err = fmt.Errorf("pager: restore prefetch buffer: %w", err)
		return
	}
	free := make(chan []byte, restoreBufs)
	for k := range restoreBufs {
		free <- mem[k*restoreChunk*ps : (k+1)*restoreChunk*ps : (k+1)*restoreChunk*ps]
	}
	// mapRun maps one run; false: the prefetch is over (o says why).
	mapRun := func(run orderRun) bool {
		if o.stop.Load() {
			o.ended = true
			return false
		}
		gone, err := p.orderChunk(o, e, r0, run)
		if err != nil {
			o.err = err
			return false
		}
		if gone {
			o.ended = true
			return false
		}
		if run.buf != nil {
			free <- run.buf
		}
		return true
	}
	if p.restoreCPUs() < 2 {
		p.readOrder(o, r0, order, free, nil, mapRun)
		linux.Munmap(mem)
		return
	}
	runs := make(chan orderRun, restoreBufs)
	quit := make(chan struct{})
	reader := make(chan struct{})
	go func() {
		defer close(reader)
		defer close(runs)
		p.idleThread()
		p.readOrder(o, r0, order, free, quit, func(run orderRun) bool {
			select {
			case runs <- run:
				return true
			case <-quit:
				return false
			}
		})
	}()
	defer func() {
		close(quit)
		<-reader // the reader no longer touches mem
		linux.Munmap(mem)
	}()
	for run := range runs {
		if !mapRun(run) {
			return
		}
	}
}

// restoreCPUs is how many CPUs the restore prefetch's threads may run on.
func (p *Pager) restoreCPUs() int {
	if !p.opts.CPUs.IsEmpty() {
		return p.opts.CPUs.Len()
	}
	cpus, err := linux.ThreadAffinity()
	if err != nil {
		return 1
	}
	return cpus.Len()
}

// idleThread locks the calling goroutine to its OS thread, pins it to the
// pager's CPUs and makes it SCHED_IDLE (for good: the thread ends with
// the goroutine).
func (p *Pager) idleThread() {
	runtime.LockOSThread()
	if err := lockThread(p.opts.CPUs); err != nil {
		p.log.Debug("pager: restore prefetch: pin", "err", err)
	}
	if err := linux.SetThreadIdle(); err != nil {
		p.log.Debug("pager: restore prefetch: SCHED_IDLE", "err", err)
	}
}

// readOrder cuts the order into runs of consecutive pages (at most
// restoreChunk), reads each into a free buffer through the region's
// content source (which checks every page's checksum) and hands it to
// emit, until the order ends, a read fails (handed over as the run's
// error: nothing after it is read), emit returns false (Stop is seen
// there, so that it is reported), or quit is closed.
func (p *Pager) readOrder(o *OrderPrefetch, r0 *region, order []uint64, free chan []byte, quit <-chan struct{}, emit func(orderRun) bool) {
	for i := 0; i < len(order); {
		n := 1
		for n < restoreChunk && i+n < len(order) && order[i+n] == order[i]+uint64(n) {
			n++
		}
		run := orderRun{lo: r0.Start + uintptr(order[i])*p.ps, n: n}
		if !r0.Content.IsZero() {
			select {
			case run.buf = <-free:
			case <-quit: // runOrder is over (nil: readOrder runs in its thread)
				return
			}
			run.buf = run.buf[:n*int(p.ps)]
			// r0's region is immutable; the bytes past its end are
			// never mapped (orderChunk), so reading them is harmless.
			if hi := r0.Start + r0.Length; run.lo+uintptr(len(run.buf)) > hi {
				run.buf = run.buf[:hi-run.lo]
			}
			run.err = r0.Content.Fill(run.buf, r0.Offset+uint64(run.lo-r0.Start))
		}
		if !emit(run) || run.err != nil {
			return
		}
		i += n
	}
}

// orderChunk maps the run's pages, unless the region changed (gone) or
// their read failed (the error; none of them is mapped).
func (p *Pager) orderChunk(o *OrderPrefetch, e *uffdEntry, r0 *region, run orderRun) (gone bool, err error) {
	e.use.RLock()
	defer e.use.RUnlock()
	if e.closed {
		return true, nil
	}
	lo := run.lo
	r := e.find(lo)
	if r != r0 { // removed, moved or cut: the region's table entry is new
		return true, nil
	}
	if run.err != nil {
		return false, fmt.Errorf("pager: restore prefetch of %q at %#x: %w", r.Dataspace, lo, run.err)
	}
	ps := p.ps
	hi := min(lo+uintptr(run.n)*ps, r.end)
	if lo >= hi {
		return true, nil
	}
	var cmode uint64 = linux.UFFDIO_COPY_MODE_DONTWAKE
	if r.Track {
		cmode |= linux.UFFDIO_COPY_MODE_WP
	}
	mapped := 0
	for at := lo; at < hi; {
		var src []byte
		if run.buf == nil {
			src = p.zero[:min(hi-at, uintptr(len(p.zero))/ps*ps)]
		} else {
			src = run.buf[at-lo : hi-lo]
		}
		m, err := e.u.Copy(at, src, cmode)
		mapped += int(uintptr(m) / ps)
		if err == nil {
			at += uintptr(len(src))
			continue
		}
		if !errors.Is(err, linux.EEXIST) {
			p.countOrder(o, r, mapped)
			if errors.Is(err, linux.ESRCH) || errors.Is(err, linux.ENOENT) {
				return true, nil // the worker or its mapping is gone
			}
			if errors.Is(err, linux.EAGAIN) {
				return false, nil // the mm is changing: these pages stay lazy
			}
			return false, fmt.Errorf("pager: restore prefetch of %q at %#x: %w", r.Dataspace, at+uintptr(m), err)
		}
		o.present.Add(1)
		at += uintptr(m) + ps
	}
	p.countOrder(o, r, mapped)
	return false, nil
}

// countOrder adds mapped pages to o's and the dataspace's counts.
func (p *Pager) countOrder(o *OrderPrefetch, r *region, mapped int) {
	if mapped == 0 {
		return
	}
	o.mapped.Add(int64(mapped))
	p.stats.shared(func(s *dsCounters) {
		s.prefetched += uint64(mapped)
		s.pages += uint64(mapped)
	}, r.ds)
}
