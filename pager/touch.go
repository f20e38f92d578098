package pager

import (
	"sync"
)

// First-touch order of Track regions: the pages a worker faulted in, in
// the order it did, so that a checkpoint can record it and a restore copy
// pages ahead of the faults (ckpt's TOUCH-ORDER). Every missing-page fault
// in a Track region is recorded (the faulting page, not the fault-around
// window); the list is bounded by the Track regions' pages (further faults,
// e.g. after MADV_DONTNEED, are not recorded).
type touchOrder struct {
	mu    sync.Mutex
	addrs []uintptr
	limit int // pages of the uffd's Track regions
}

// grow raises the bound by a Track region's pages.
func (o *touchOrder) grow(pages int) {
	o.mu.Lock()
	o.limit += pages
	o.mu.Unlock()
}

// record notes a first touch at addr.
func (o *touchOrder) record(addr uintptr) {
	o.mu.Lock()
	if len(o.addrs) < o.limit {
		o.addrs = append(o.addrs, addr)
	}
	o.mu.Unlock()
}

// TouchOrder returns the pages (indexes from start) of [start,
// start+length) on uffd id in the order the worker first touched them,
// each once. Only Track regions are recorded.
func (p *Pager) TouchOrder(id uint64, start, length uintptr) ([]uint64, error) {
	p.mu.Lock()
	e, err := p.entryLocked(id)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	e.touch.mu.Lock()
	defer e.touch.mu.Unlock()
	seen := make(map[uintptr]bool)
	var out []uint64
	for _, a := range e.touch.addrs {
		if a < start || a-start >= length || seen[a] {
			continue
		}
		seen[a] = true
		out = append(out, uint64((a-start)/p.ps))
	}
	return out, nil
}
