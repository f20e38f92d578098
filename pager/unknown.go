package pager

import (
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// unknownKey names a parked fault: the uffd entry (by sequence) and page.
type unknownKey struct {
	seq  uint64
	addr uintptr
}

// unknownFault is a fault outside every known region, waiting for its region
// (Options.UnknownGrace) before the worker gets SIGBUS.
type unknownFault struct {
	e     *uffdEntry
	tids  []uint32 // faulting threads (0: unknown, no UFFD_FEATURE_THREAD_ID)
	since time.Time
}

// parkUnknown parks a fault outside every region of e. The same page
// faulting again (another thread, or a re-raise) joins the parked entry.
func (p *Pager) parkUnknown(e *uffdEntry, addr uintptr, tid uint32) {
	k := unknownKey{seq: e.seq, addr: addr}
	p.unkMu.Lock()
	if u := p.unknown[k]; u != nil {
		if !slices.Contains(u.tids, tid) {
			u.tids = append(u.tids, tid)
		}
		p.unkMu.Unlock()
		return
	}
	p.unknown[k] = &unknownFault{e: e, tids: []uint32{tid}, since: time.Now()}
	p.unkMu.Unlock()
	p.log.Debug("pager: fault outside every known region, waiting for its region", "uffd", e.id, "pid", e.pid,
		"addr", fmt.Sprintf("%#x", addr), "tid", tid, "grace", p.opts.UnknownGrace)
	time.AfterFunc(p.opts.UnknownGrace, func() { p.expireUnknown(k) })
}

// expireUnknown settles a parked fault whose grace is over: served if its
// region arrived, re-raised if another holder serves the uffd now, else
// SIGBUS.
func (p *Pager) expireUnknown(k unknownKey) {
	p.unkMu.Lock()
	u := p.unknown[k]
	delete(p.unknown, k)
	p.unkMu.Unlock()
	if u == nil {
		return
	}
	e := u.e
	e.use.RLock()
	defer e.use.RUnlock()
	if e.closed {
		return
	}
	p.mu.Lock()
	serving := e.serving
	p.mu.Unlock()
	if e.find(k.addr) != nil || !serving {
		// Its region arrived (AddRegion woke it already; a second wake is
		// harmless), or another holder serves the uffd: raise it again.
		if err := e.u.Wake(k.addr, p.ps); err != nil && !errors.Is(err, linux.ESRCH) {
			p.log.Warn("pager: wake a parked fault", "uffd", e.id, "addr", fmt.Sprintf("%#x", k.addr), "err", err)
		}
		return
	}
	p.sigbus(e, k.addr, u.tids, "fault outside every known region")
}

// sigbus gives the threads waiting on the page at addr SIGBUS: the page is
// poisoned (UFFDIO_POISON, 6.6+: this access and every later one get SIGBUS,
// as for a page the kernel cannot back) or, without it, each faulting thread
// gets SIGBUS by tgkill and the page is woken (the signal is delivered before
// the access is retried). The caller holds e.use.
func (p *Pager) sigbus(e *uffdEntry, addr uintptr, tids []uint32, why string) {
	method := "UFFDIO_POISON"
	var err error = &linux.UnsupportedError{Feature: "UFFDIO_POISON (Options.NoPoison)"}
	if !p.opts.NoPoison {
		_, err = e.u.Poison(addr, p.ps, 0)
	}
	switch {
	case err == nil:
	case errors.Is(err, linux.EAGAIN) || errors.Is(err, linux.EEXIST):
		// The mm is changing, or the page is there now: raise it again
		// (a fault still outside every region is parked anew).
		_ = e.u.Wake(addr, p.ps)
		return
	case errors.Is(err, linux.ESRCH):
		return // the worker is gone
	default:
		method = "tgkill"
		var errs []error
		sent := 0
		for _, tid := range tids {
			if tid == 0 || e.pid <= 0 {
				continue
			}
			if err := linux.Tgkill(e.pid, int(tid), syscall.SIGBUS); err != nil && !errors.Is(err, linux.ESRCH) {
				errs = append(errs, err)
			} else if err == nil {
				sent++
			}
		}
		if sent == 0 && e.pid > 0 {
			// No thread id (UFFD_FEATURE_THREAD_ID missing): the process.
			method = "kill"
			if err := linux.Kill(e.pid, syscall.SIGBUS); err != nil && !errors.Is(err, linux.ESRCH) {
				errs = append(errs, err)
			}
		}
		if err := e.u.Wake(addr, p.ps); err != nil && !errors.Is(err, linux.ESRCH) {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			p.log.Error("pager: could not signal a worker", "uffd", e.id, "pid", e.pid, "addr", fmt.Sprintf("%#x", addr), "err", errors.Join(errs...))
		}
	}
	p.log.Warn("pager: "+why+": SIGBUS to the worker", "pid", e.pid, "tids", tids,
		"addr", fmt.Sprintf("%#x", addr), "uffd", e.id, "method", method)
}

// Fail gives the threads waiting on the page at addr of uffd id SIGBUS (as a
// fault outside every region gets): the resolver of a forwarded fault
// reported it cannot back the page. tid is the faulting thread (0: unknown).
func (p *Pager) Fail(id uint64, addr uintptr, tid uint32, why string) error {
	p.mu.Lock()
	e, err := p.entryLocked(id)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	e.use.RLock()
	defer e.use.RUnlock()
	if e.closed {
		return fmt.Errorf("%w: %d (removed)", ErrUnknownUffd, id)
	}
	p.sigbus(e, addr&^(p.ps-1), []uint32{tid}, why)
	return nil
}

// ParkedFaults is the number of faults outside every known region waiting
// for their region (for tests and status).
func (p *Pager) ParkedFaults() int {
	p.unkMu.Lock()
	defer p.unkMu.Unlock()
	return len(p.unknown)
}
