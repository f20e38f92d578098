package pager

import (
	"errors"
	"fmt"
	"slices"
	"sync"

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

// syncWritten is the set of pages written in sync mode, by address.
type syncWritten struct {
	mu    sync.Mutex
	pages map[uintptr]struct{}
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
	e.written.mu.Lock()
	if e.written.pages == nil {
		e.written.pages = map[uintptr]struct{}{}
	}
	e.written.pages[addr] = struct{}{}
	e.written.mu.Unlock()
	err := e.u.WriteProtect(addr, p.ps, 0)
	if errors.Is(err, linux.ENOENT) {
		err = nil // unmapped meanwhile
	}
	return err
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
			delete(e.written.pages, a)
		}
	}
	e.written.mu.Unlock()
	slices.Sort(out)
	if err := e.u.WriteProtect(start, length, linux.UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
		return out, fmt.Errorf("pager: uffd %d: re-protect %#x+%#x: %w", id, start, length, err)
	}
	return out, nil
}
