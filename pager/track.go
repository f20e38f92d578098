package pager

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/vcored/vcored/internal/linux"
)

// Write tracking of Track regions (see Region.Track).
//
// Async (Linux 6.7+, linux.WPAsyncFeatures negotiated): the kernel lifts
// the protection of a written page itself and PAGEMAP_SCAN on the worker's
// pagemap lists and re-protects the written pages; the pager has nothing
// to do but copy pages in protected.
//
// Sync (older kernels, or Options.SyncWriteTracking): the first write to a
// protected page raises a fault with UFFD_PAGEFAULT_FLAG_WP; a pager thread
// records the page and unprotects it (waking the writer), so later writes
// in the same epoch run free. TakeWritten hands the recorded pages over and
// protects the range again: the next epoch.
//
// A missing-page fault that is a write (UFFD_PAGEFAULT_FLAG_WRITE) copies
// its page in unprotected: the page is written, and the writer's retry must
// not find it protected — in sync mode that would be a second fault to the
// pager for the same write (measured: 2 faults served per page instead of
// 1, BenchmarkTrackFirstTouch/sync), in async mode a second trip through
// the kernel's fault handler. The rest of the fault-around window is copied
// protected (nobody wrote it), at the price of up to two more UFFDIO_COPY;
// async mode pays that only where it saves nothing but the kernel's
// retry, so there a wider window stays protected as a whole.

// syncWritten is the set of pages written in sync mode, by address.
type syncWritten struct {
	mu    sync.Mutex
	pages map[uintptr]struct{}
	// lifting counts, per page, the handlers between recording the page
	// and the end of lifting its protection. TakeWritten hands such a page
	// out and keeps it for the next epoch as well: the write the lift lets
	// through may land after the hand-out (and after TakeWritten protected
	// the range again, before the lift).
	lifting map[uintptr]int
}

// begin records the page at addr before its protection is lifted.
func (w *syncWritten) begin(addr uintptr) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pages == nil {
		w.pages = map[uintptr]struct{}{}
		w.lifting = map[uintptr]int{}
	}
	w.pages[addr] = struct{}{}
	w.lifting[addr]++
}

// end notes that the protection of the page at addr is lifted.
func (w *syncWritten) end(addr uintptr) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lifting[addr]--; w.lifting[addr] <= 0 {
		delete(w.lifting, addr)
	}
}

// syncTrackHook, when set (tests), runs between recording a written page
// and lifting its protection.
var syncTrackHook atomic.Pointer[func(addr uintptr)]

func runSyncTrackHook(addr uintptr) {
	if h := syncTrackHook.Load(); h != nil {
		(*h)(addr)
	}
}

// initUffd negotiates a fresh uffd: InitUffd, without the async write
// protection features when Options.SyncWriteTracking asks for sync.
func (p *Pager) initUffd(u *linux.Uffd) (uint64, error) {
	if !p.opts.SyncWriteTracking {
		return InitUffd(u)
	}
	have, err := linux.UffdFeatures()
	if err != nil {
		return 0, fmt.Errorf("pager: probe userfaultfd features: %w", err)
	}
	if _, err := u.API(Features & have); err != nil {
		return 0, fmt.Errorf("pager: negotiate userfaultfd fd %d: %w", u.FD(), err)
	}
	return Features & have, nil
}

// wpFault records the write to the page at addr of Track region r and
// unprotects it, which wakes the writer. Called by a pager thread.
func (p *Pager) wpFault(e *uffdEntry, r *region, addr uintptr) error {
	if !r.Track {
		// A range another holder of the uffd tracks (a vcore's, served
		// here after a failover): let the write through rather than have
		// the writer fault forever. Its tracking is lost for this page.
		p.log.Debug("pager: write-protect fault in an untracked region, unprotected", "dataspace", r.Dataspace, "addr", fmt.Sprintf("%#x", addr))
		err := e.u.WriteProtect(addr, p.ps, 0)
		if errors.Is(err, linux.ENOENT) {
			err = nil
		}
		return err
	}
	// Record, lift without waking, end the record's lifting, wake: the
	// write lands after end, so an epoch handed out after end has seen
	// the record (and re-protected the page before the writer retries),
	// and one handed out before end keeps the page for the next epoch.
	e.written.begin(addr)
	runSyncTrackHook(addr)
	err := e.u.WriteProtect(addr, p.ps, linux.UFFDIO_WRITEPROTECT_MODE_DONTWAKE)
	e.written.end(addr)
	if errors.Is(err, linux.ENOENT) {
		err = nil // unmapped meanwhile
	}
	if werr := e.u.Wake(addr, p.ps); err == nil {
		err = werr
	}
	return err
}

// resolveWritten resolves a missing-page write fault at addr of Track
// region r (window [lo, hi)): the page unprotected, first (which wakes
// the writer), then the rest of the window protected. Sync tracking
// records the page as written (record, UFFDIO_COPY without waking,
// UFFDIO_WAKE: one ioctl more than async, one round trip to the pager
// less than a write-protect fault on top). Async tracking with a window wider than the
// page copies it all protected instead (resolveWith): two more ioctls cost
// more than the kernel's own retry saves.
func resolveWritten[U uffdOps](p *Pager, u U, e *uffdEntry, r *region, addr, lo, hi uintptr, buf []byte) (int, error) {
	ps := p.ps
	if e.wpAsync && hi-lo > ps {
		return resolveWith(p, u, r, addr, lo, hi, buf, true)
	}
	var src []byte
	if r.Content.IsZero() {
		src = p.zero[:hi-lo]
	} else {
		src = buf[:hi-lo]
		if err := r.Content.Fill(src, r.Offset+uint64(lo-r.Start)); err != nil {
			return 0, err
		}
	}
	off := addr - lo
	page := src[off : off+ps]
	var n int64
	var err error
	if e.wpAsync {
		n, err = u.Copy(addr, page, 0)
	} else {
		// As wpFault: recorded before the copy, which does not wake
		// the writer; woken after the record's lifting ended. (A page
		// mapped meanwhile, EEXIST, is recorded for nothing: a write
		// to it raises its own fault.)
		e.written.begin(addr)
		runSyncTrackHook(addr)
		n, err = u.Copy(addr, page, linux.UFFDIO_COPY_MODE_DONTWAKE)
		e.written.end(addr)
		if err == nil {
			err = u.Wake(addr, ps)
		}
	}
	if errors.Is(err, linux.EEXIST) {
		return 0, u.Wake(addr, ps)
	}
	if err != nil {
		return int(uintptr(n) / ps), err
	}
	pages := int(uintptr(n) / ps)
	// The neighbours, protected: a present one ends its side's copy.
	for _, s := range [2][2]uintptr{{lo, addr}, {addr + ps, hi}} {
		if s[0] >= s[1] {
			continue
		}
		m, err := u.Copy(s[0], src[s[0]-lo:s[1]-lo], linux.UFFDIO_COPY_MODE_WP)
		pages += int(uintptr(m) / ps)
		if err != nil && !errors.Is(err, linux.EEXIST) {
			return pages, err
		}
	}
	return pages, nil
}

// WriteTracking tells how the Track regions of uffd id are tracked: async
// (collect with ckpt.AsyncTracker / PAGEMAP_SCAN) or sync (TakeWritten).
func (p *Pager) WriteTracking(id uint64) (async bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, err := p.entryLocked(id)
	if err != nil {
		return false, err
	}
	return e.wpAsync, nil
}

// TakeWritten returns the pages (indexes from start, ascending) of
// [start, start+length) on uffd id written since the last call, recorded
// by sync write tracking, and write-protects the range again. The worker
// should be stopped (its cgroup frozen) from this call until the pages are
// read, or a write meanwhile may land in neither epoch.
func (p *Pager) TakeWritten(id uint64, start, length uintptr) ([]uint64, error) {
	p.mu.Lock()
	e, err := p.entryLocked(id)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if e.wpAsync {
		return nil, fmt.Errorf("pager: uffd %d tracks writes asynchronously: collect them with PAGEMAP_SCAN", id)
	}
	e.use.RLock()
	defer e.use.RUnlock()
	if e.closed {
		return nil, fmt.Errorf("%w: %d (removed)", ErrUnknownUffd, id)
	}
	e.written.mu.Lock()
	var out []uint64
	for a := range e.written.pages {
		if a >= start && a-start < length {
			out = append(out, uint64((a-start)/p.ps))
			if e.written.lifting[a] == 0 {
				delete(e.written.pages, a)
			}
		}
	}
	e.written.mu.Unlock()
	slices.Sort(out)
	if err := e.u.WriteProtect(start, length, linux.UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
		return out, fmt.Errorf("pager: uffd %d: re-protect %#x+%#x: %w", id, start, length, err)
	}
	return out, nil
}
