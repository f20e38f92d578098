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

// ReconnectGrace is how long faults outside every region of a uffd taken
// over from a holder that died (a vcore's TakeBack, core's failover) wait
// for their regions (HoldUnknown): the worker's client must notice the
// restart, redial (its backoff reaches 2 s) and re-send its mappings, which
// on a loaded machine takes longer than Options.UnknownGrace. Bounded, so
// a fault never waits forever.
const ReconnectGrace = 10 * time.Second

// unknownFault is a fault outside every known region, waiting for its region
// (Options.UnknownGrace, and the uffd's hold) before the worker gets SIGBUS.
type unknownFault struct {
	e     *uffdEntry
	tids  []uint32 // faulting threads (0: unknown, no UFFD_FEATURE_THREAD_ID)
	since time.Time
	timer *time.Timer // fires expireUnknown at the deadline
}

// deadlineLocked is when u is settled: Options.UnknownGrace after it
// arrived, but not before its uffd's hold ends. Called with unkMu held.
func (p *Pager) deadlineLocked(u *unknownFault) time.Time {
	d := u.since.Add(p.opts.UnknownGrace)
	if u.e.hold.After(d) {
		d = u.e.hold
	}
	return d
}

// HoldUnknown sets when faults outside every region of uffd id may get
// SIGBUS at the earliest: a fault parked before until is settled then (or
// Options.UnknownGrace after it arrived, if later), unless its region
// arrives first. A zero until clears the hold. Parked faults are
// rescheduled: a hold may be shortened (the worker reconnected) as well
// as extended. The holder of a uffd taken over from a dead holder holds it
// for ReconnectGrace, so that a live worker is not killed because its
// regions are on their way with its reconnecting client.
func (p *Pager) HoldUnknown(id uint64, until time.Time) error {
	p.mu.Lock()
	e, err := p.entryLocked(id)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	p.unkMu.Lock()
	defer p.unkMu.Unlock()
	e.hold = until
	for _, u := range p.unknown {
		if u.e == e {
			u.timer.Reset(time.Until(p.deadlineLocked(u)))
		}
	}
	return nil
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
	u := &unknownFault{e: e, tids: []uint32{tid}, since: time.Now()}
	p.unknown[k] = u
	wait := time.Until(p.deadlineLocked(u))
	u.timer = time.AfterFunc(wait, func() { p.expireUnknown(k) })
	p.unkMu.Unlock()
	p.log.Debug("pager: fault outside every known region, waiting for its region", "uffd", e.id, "pid", e.pid,
		"addr", fmt.Sprintf("%#x", addr), "tid", tid, "wait", wait)
}

// handOverUnknown settles e's parked faults now: e is no longer served
// here, so they are raised again (expireUnknown wakes them) for the holder
// that serves it now, rather than after their grace or hold. Called with
// p.mu held (expireUnknown runs later, on the timers).
func (p *Pager) handOverUnknown(e *uffdEntry) {
	p.unkMu.Lock()
	defer p.unkMu.Unlock()
	for _, u := range p.unknown {
		if u.e == e {
			u.timer.Reset(0)
		}
	}
}

// expireUnknown settles a parked fault whose deadline came: served if its
// region arrived, re-raised if another holder serves the uffd now, else —
// once the uffd's hold is over too (it may have been extended meanwhile) —
// SIGBUS.
func (p *Pager) expireUnknown(k unknownKey) {
	p.unkMu.Lock()
	u := p.unknown[k]
	p.unkMu.Unlock()
	if u == nil {
		return
	}
	e := u.e
	settled := func() bool {
		p.unkMu.Lock()
		defer p.unkMu.Unlock()
		if p.unknown[k] != u {
			return false // settled by another firing
		}
		delete(p.unknown, k)
		return true
	}
	e.use.RLock()
	defer e.use.RUnlock()
	if e.closed {
		settled()
		return
	}
	p.mu.Lock()
	serving := e.serving
	p.mu.Unlock()
	if e.find(k.addr) != nil || !serving {
		// Its region arrived (AddRegion woke it already; a second wake is
		// harmless), or another holder serves the uffd: raise it again.
		if !settled() {
			return
		}
		if err := e.u.Wake(k.addr, p.ps); err != nil && !errors.Is(err, linux.ESRCH) {
			p.log.Warn("pager: wake a parked fault", "uffd", e.id, "addr", fmt.Sprintf("%#x", k.addr), "err", err)
		}
		return
	}
	p.unkMu.Lock()
	if p.unknown[k] != u {
		p.unkMu.Unlock()
		return
	}
	if d := p.deadlineLocked(u); time.Now().Before(d) {
		u.timer.Reset(time.Until(d)) // held: wait on
		p.unkMu.Unlock()
		return
	}
	delete(p.unknown, k)
	tids := slices.Clone(u.tids)
	p.unkMu.Unlock()
	p.sigbus(e, k.addr, tids, "fault outside every known region")
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
	case errors.Is(err, linux.ENOENT):
		// The range is no longer a registered mapping (the worker
		// unmapped or unregistered it): no fault of it can be pending,
		// and a signal would hit a thread that is elsewhere by now. A
		// thread still parked there is woken and faults anew.
		_ = e.u.Wake(addr, p.ps)
		p.log.Info("pager: "+why+", but the range is unmapped now: nothing to fail", "pid", e.pid,
			"addr", fmt.Sprintf("%#x", addr), "uffd", e.id)
		return
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
