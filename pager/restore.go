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

// runOrder is the prefetch's goroutine. Its OS thread is pinned and
// SCHED_IDLE: it is never unlocked, so it ends with the goroutine.
func (p *Pager) runOrder(o *OrderPrefetch, e *uffdEntry, r0 *region, order []uint64) {
	defer close(o.done)
	runtime.LockOSThread()
	if err := lockThread(p.opts.CPUs); err != nil {
		p.log.Debug("pager: restore prefetch: pin", "err", err)
	}
	if err := linux.SetThreadIdle(); err != nil {
		p.log.Debug("pager: restore prefetch: SCHED_IDLE", "err", err)
	}
	buf, err := linux.Mmap(prefetchChunk*int(p.ps), linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		o.err = fmt.Errorf("pager: restore prefetch buffer: %w", err)
		return
	}
	defer linux.Munmap(buf)
	for i := 0; i < len(order); {
		if o.stop.Load() {
			o.ended = true
			return
		}
		n := 1
		for n < prefetchChunk && i+n < len(order) && order[i+n] == order[i]+uint64(n) {
			n++
		}
		gone, err := p.orderChunk(o, e, r0, r0.Start+uintptr(order[i])*p.ps, n, buf)
		if err != nil {
			o.err = err
			return
		}
		if gone {
			o.ended = true
			return
		}
		i += n
	}
}

// orderChunk maps the n pages from lo, unless the region changed (gone).
func (p *Pager) orderChunk(o *OrderPrefetch, e *uffdEntry, r0 *region, lo uintptr, n int, buf []byte) (gone bool, err error) {
	e.use.RLock()
	defer e.use.RUnlock()
	if e.closed {
		return true, nil
	}
	r := e.find(lo)
	if r != r0 { // removed, moved or cut: the region's table entry is new
		return true, nil
	}
	ps := p.ps
	hi := min(lo+uintptr(n)*ps, r.end)
	if lo >= hi {
		return true, nil
	}
	var cmode uint64 = linux.UFFDIO_COPY_MODE_DONTWAKE
	if r.Track {
		cmode |= linux.UFFDIO_COPY_MODE_WP
	}
	var src []byte
	if r.Content.IsZero() {
		src = p.zero[:hi-lo]
	} else {
		src = buf[:hi-lo]
		if err := r.Content.Fill(src, r.Offset+uint64(lo-r.Start)); err != nil {
			return false, fmt.Errorf("pager: restore prefetch of %q at %#x: %w", r.Dataspace, lo, err)
		}
	}
	mapped := 0
	for at := lo; at < hi; {
		m, err := e.u.Copy(at, src[at-lo:], cmode)
		mapped += int(uintptr(m) / ps)
		if err == nil {
			break
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
