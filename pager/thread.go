package pager

import (
	"errors"
	"fmt"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// errDrop tells drain that the worker behind a uffd is gone.
var errDrop = errors.New("pager: worker gone")

// thread is one pager thread: its OS thread, buffers and statistics.
type thread struct {
	p   *Pager
	idx int
	pin hw.CPUSet

	evs   [16]linux.EpollEvent
	msgs  [16]linux.UffdMsg
	buf   []byte // FaultAround pages, mmap'd (page-aligned)
	again []againFault
	// readShare is the time of the read(2) that returned the fault being
	// handled, divided among the messages it returned (breakdown).
	readShare int64
	jobs      []prefetchJob // pending prefetch, served when no event is
	pbuf      []byte        // prefetchBufPages + FaultAround pages, mmap'd, for prefetch copies
	// timed times the ioctls of the fault being handled (see timing).
	timed timedUffd

	stats threadStats
}

// againFault is a fault that got EAGAIN (the mm was changing), retried once
// the pending events are read.
type againFault struct {
	r     *region
	addr  uintptr
	write bool
	start time.Time
}

// run is the pager thread: it never unlocks its OS thread, so the pinned
// thread ends with it.
func (t *thread) run(started chan<- error) {
	defer t.p.wg.Done()
	if err := lockThread(t.pin); err != nil {
		started <- fmt.Errorf("pager: thread %d: pin to cpus %s: %w", t.idx, t.pin, err)
		return
	}
	buf, err := linux.Mmap(t.p.around*int(t.p.ps), linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		started <- fmt.Errorf("pager: thread %d: page buffer: %w", t.idx, err)
		return
	}
	defer linux.Munmap(buf)
	t.buf = buf
	pbuf, err := linux.Mmap((prefetchBufPages+t.p.around)*int(t.p.ps), linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		started <- fmt.Errorf("pager: thread %d: prefetch buffer: %w", t.idx, err)
		return
	}
	defer linux.Munmap(pbuf)
	t.pbuf = pbuf
	started <- nil
	for {
		// With prefetch pending, only poll: every event (a real fault
		// first of all) is served before the next chunk is mapped.
		timeout := -1
		if len(t.jobs) > 0 {
			timeout = 0
		}
		n, err := t.p.ep.WaitLocked(t.evs[:], timeout)
		if err != nil {
			t.p.log.Error("pager thread stops: epoll_wait failed", "thread", t.idx, "err", err)
			return
		}
		if n == 0 {
			t.prefetchStep()
			continue
		}
		for i := range n {
			tok := t.evs[i].Token()
			switch tok & 3 {
			case kindStop:
				return
			case kindPid:
				t.p.pidExited(tok >> 2)
			case kindUffd:
				if e := t.p.bySeq(tok >> 2); e != nil {
					t.drain(e)
				}
			}
		}
	}
}

// drain reads and handles every pending message of e (the uffd is
// edge-triggered in the epoll set: read until it is empty).
func (t *thread) drain(e *uffdEntry) {
	e.use.RLock()
	if e.closed {
		e.use.RUnlock()
		return
	}
	drop := false
	// The statistics lock is taken per batch, not across the loop: a storm
	// of faults (threads re-raising theirs on every signal) must not keep
	// Stats waiting.
	t.stats.mu.Lock()
	for batch := 0; ; batch++ {
		if batch > 0 {
			t.stats.mu.Unlock()
			t.stats.mu.Lock()
		}
		t0 := time.Now()
		k, err := e.u.ReadMsgs(t.msgs[:])
		if err != nil {
			if !errors.Is(err, linux.EAGAIN) {
				t.p.log.Warn("pager: read uffd", "uffd", e.id, "err", err)
			}
			break
		}
		now := time.Now()
		t.readShare = int64(now.Sub(t0)) / int64(max(k, 1))
		for i := range k {
			m := &t.msgs[i]
			if m.Event != linux.UFFD_EVENT_PAGEFAULT {
				t.p.applyEvent(e, m)
				continue
			}
			if t.fault(e, m, now) == errDrop {
				drop = true
			}
		}
		if k < len(t.msgs) {
			break
		}
	}
	if len(t.again) > 0 {
		t.retry(e)
	}
	t.stats.mu.Unlock()
	e.use.RUnlock()
	if drop {
		t.p.log.Debug("pager: worker gone, dropping its uffd", "uffd", e.id, "pid", e.pid)
		_ = t.p.remove(e)
	}
}

// fault handles one page fault. Called with e.use and t.stats.mu held.
func (t *thread) fault(e *uffdEntry, m *linux.UffdMsg, start time.Time) error {
	p := t.p
	addr := m.PagefaultAddr() &^ (p.ps - 1)
	r := e.find(addr)
	if r == nil {
		st := t.stats.get(0)
		st.faults++
		st.errors++
		p.parkUnknown(e, addr, m.PagefaultTID())
		return nil
	}
	st := t.stats.get(r.ds)
	st.faults++
	if r.Forward {
		if r.Replicate && p.opts.Replica != nil {
			if done, err := t.fromReplica(e, r, addr, start, st); done {
				return err
			}
		}
		if p.forward(e, r, addr, m.PagefaultTID(), start) {
			st.forwarded++
		}
		return nil
	}
	if m.PagefaultFlags()&linux.UFFD_PAGEFAULT_FLAG_WP != 0 {
		// A write to a page protected for sync write tracking.
		return t.settle(e, r, addr, true, start, p.wpFault(e, r, addr), st)
	}
	if r.Track {
		e.touch.record(addr)
	}
	write := m.PagefaultFlags()&linux.UFFD_PAGEFAULT_FLAG_WRITE != 0
	lo, hi := p.window(r, addr)
	if r.stream == nil {
		tu := t.timing(e)
		pages, err := p.resolveRange(e, r, addr, lo, hi, t.buf, write, write, tu)
		st.pages += uint64(pages)
		t.breakdown(st, start, tu.ns, err)
		return t.settle(e, r, addr, write, start, err, st)
	}
	return t.streamFault(e, r, addr, lo, hi, write, start, st)
}

// settle accounts for the outcome of resolving the fault at addr.
func (t *thread) settle(e *uffdEntry, r *region, addr uintptr, write bool, start time.Time, err error, st *dsCounters) error {
	switch {
	case err == nil:
		st.lat.record(time.Since(start).Nanoseconds())
		return nil
	case errors.Is(err, linux.EAGAIN):
		t.again = append(t.again, againFault{r: r, addr: addr, write: write, start: start})
		return nil
	case errors.Is(err, linux.ESRCH):
		st.errors++
		return errDrop
	}
	st.errors++
	t.p.log.Warn("pager: resolve failed", "uffd", e.id, "dataspace", r.Dataspace,
		"addr", fmt.Sprintf("%#x", addr), "err", err)
	// Let the thread fault again rather than wait forever.
	_ = e.u.Wake(addr, t.p.ps)
	return nil
}

// retry resolves the faults that got EAGAIN again, now that the events in
// the queue are read; if the mm is still changing, they are woken so that
// they are raised again later.
func (t *thread) retry(e *uffdEntry) {
	for _, a := range t.again {
		st := t.stats.get(a.r.ds)
		pages, err := t.p.resolve(e, a.r, a.addr, t.buf, a.write, a.write)
		st.pages += uint64(pages)
		if errors.Is(err, linux.EAGAIN) {
			_ = e.u.Wake(a.addr, t.p.ps)
			continue
		}
		_ = t.settle(e, a.r, a.addr, a.write, a.start, err, st) // err is not EAGAIN: nothing is appended
	}
	t.again = t.again[:0]
}

// fromReplica serves a fault of a Forward region from Options.Replica if
// it has the page; done false: it has not, forward the fault.
func (t *thread) fromReplica(e *uffdEntry, r *region, addr uintptr, start time.Time, st *dsCounters) (done bool, err error) {
	p := t.p
	page := t.buf[:p.ps]
	if !p.opts.Replica(r.Dataspace, r.Offset+uint64(addr-r.Start), page) {
		return false, nil
	}
	n, err := e.u.Copy(addr, page, 0)
	switch {
	case err == nil:
	case errors.Is(err, linux.EEXIST):
		err = e.u.Wake(addr, p.ps) // someone else mapped it
	case errors.Is(err, linux.EAGAIN):
		err = e.u.Wake(addr, p.ps) // the mm is changing: raised again
	case errors.Is(err, linux.ESRCH):
		st.errors++
		return true, errDrop
	}
	st.pages += uint64(uintptr(n) / p.ps)
	st.replicated++
	if err != nil {
		st.errors++
		p.log.Warn("pager: map a replica page", "uffd", e.id, "dataspace", r.Dataspace, "addr", fmt.Sprintf("%#x", addr), "err", err)
		_ = e.u.Wake(addr, p.ps)
		return true, nil
	}
	st.lat.record(time.Since(start).Nanoseconds())
	return true, nil
}

// timing returns the thread's ioctl timer, reset for a fault of e.
func (t *thread) timing(e *uffdEntry) *timedUffd {
	t.timed = timedUffd{u: e.u}
	return &t.timed
}

// breakdown records where a resolved fault's time went: the read that
// returned it (its share), the pager's own work, the ioctls.
func (t *thread) breakdown(st *dsCounters, start time.Time, ioctl int64, err error) {
	if err != nil {
		return
	}
	total := int64(time.Since(start))
	st.timed++
	st.readNS += uint64(t.readShare)
	st.ioctlNS += uint64(ioctl)
	st.workNS += uint64(max(total-ioctl, 0))
}
