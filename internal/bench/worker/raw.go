package worker

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// rawHandler is the reference floor: the least a userfaultfd pager can do.
// One goroutine on its own OS thread, pinned to the toucher's CPU, blocks
// in epoll_wait on the uffd and an eventfd (to stop), reads fault
// messages and answers each with one UFFDIO_COPY of up to faultAround
// missing pages starting at the faulting page. No framework, no locks, no
// channels on the fault path.
type rawHandler struct {
	uffd   *linux.Uffd
	stopFD *linux.EventFD
	done   chan error
	faults atomic.Int64
}

// tokens in the handler's epoll set.
const (
	tokUffd = 0
	tokStop = 1
)

// startRawHandler registers mem (MISSING) on a new uffd and starts serving
// it from v's content (zero when v is unset).
func startRawHandler(mem []byte, v bench.Verify, faultAround, cpu int) (*rawHandler, error) {
	u, start, err := registerUffd(mem)
	if err != nil {
		return nil, err
	}
	r, err := serveRawHandler(u, start, len(mem), v, faultAround, cpu)
	if err != nil {
		u.Close()
		return nil, err
	}
	return r, nil
}

// registerUffd opens a uffd in this process and registers mem on it
// (MISSING). It returns the uffd and mem's start address.
func registerUffd(mem []byte) (_ *linux.Uffd, start uintptr, err error) {
	u, err := linux.OpenUffd()
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			u.Close()
		}
	}()
	if _, err := u.API(0); err != nil {
		return nil, 0, err
	}
	start = uintptr(unsafe.Pointer(unsafe.SliceData(mem)))
	if _, err := u.Register(start, uintptr(len(mem)), linux.UFFDIO_REGISTER_MODE_MISSING); err != nil {
		return nil, 0, err
	}
	return u, start, nil
}

// serveRawHandler starts the handler thread on u, a uffd on which the
// range [start, start+length) is registered, in this process's address
// space or (raw_xproc) in another one's. The handler owns u from then on
// (stop closes it); on error the caller still owns it.
func serveRawHandler(u *linux.Uffd, start uintptr, length int, v bench.Verify, faultAround, cpu int) (*rawHandler, error) {
	// A thread blocked in a userfaultfd page fault keeps its P: with
	// GOMAXPROCS=1 (a worker started with a one-CPU affinity) the handler
	// could only run when the runtime preempts the blocked toucher, ~10 ms
	// later. The handler needs a P of its own, and keeps it while it waits
	// (linux.Epoll.WaitLocked, as the pager's threads do): one more is left
	// for the process's other goroutines.
	if runtime.GOMAXPROCS(0) < 3 {
		runtime.GOMAXPROCS(3)
	}
	stop, err := linux.NewEventFD()
	if err != nil {
		return nil, err
	}
	r := &rawHandler{uffd: u, stopFD: stop, done: make(chan error, 1)}
	ready := make(chan error, 1)
	go r.serve(start, length, v, faultAround, cpu, ready)
	if err := <-ready; err != nil {
		stop.Close()
		return nil, err
	}
	return r, nil
}

// stop ends the handler, closes its fds and returns the faults it served
// and the first error it hit.
func (r *rawHandler) stop() (int64, error) {
	err := r.stopFD.Signal()
	if err == nil {
		err = <-r.done
	}
	return r.faults.Load(), errors.Join(err, r.uffd.Close(), r.stopFD.Close())
}

func (r *rawHandler) serve(start uintptr, length int, v bench.Verify, faultAround, cpu int, ready chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	ep, err := r.setup(cpu)
	ready <- err
	if err != nil {
		return
	}
	defer ep.Close()
	r.done <- r.loop(ep, start, length, v, faultAround)
}

func (r *rawHandler) setup(cpu int) (*linux.Epoll, error) {
	if cpu >= 0 {
		if err := linux.SetThreadAffinity(hw.NewSet(hw.CPU(cpu))); err != nil {
			return nil, fmt.Errorf("pin handler to CPU %d: %w", cpu, err)
		}
	}
	ep, err := linux.NewEpoll()
	if err != nil {
		return nil, err
	}
	if err := ep.Add(r.uffd.FD(), linux.EPOLLIN, tokUffd); err != nil {
		ep.Close()
		return nil, err
	}
	if err := ep.Add(r.stopFD.FD(), linux.EPOLLIN, tokStop); err != nil {
		ep.Close()
		return nil, err
	}
	return ep, nil
}

func (r *rawHandler) loop(ep *linux.Epoll, start uintptr, length int, v bench.Verify, faultAround int) error {
	ps := linux.PageSize()
	pages := length / ps
	present := make([]bool, pages) // pages this handler has resolved
	var src content.Source = content.Zero()
	if v.Kind == "pattern" {
		src = content.Pattern(v.Seed)
	}
	fill := !src.IsZero()
	buf := make([]byte, faultAround*ps)
	if !fill && faultAround > 1 {
		// Zero content: copy from a read-only anonymous mapping, whose
		// pages are all the kernel's zero page once read, so a copy of
		// many pages reads one cache-hot page (as the pager's prefetch
		// and docs/prefetch-floor.c do): the floor copies no slower than
		// the pager it is the floor of.
		zero, err := linux.Mmap(len(buf), linux.PROT_READ, linux.MAP_PRIVATE|linux.MAP_ANONYMOUS|linux.MAP_NORESERVE)
		if err != nil {
			return fmt.Errorf("zero source: %w", err)
		}
		defer linux.Munmap(zero)
		buf = zero
	}
	evs := make([]linux.EpollEvent, 2)
	msgs := make([]linux.UffdMsg, 16)
	for {
		n, err := ep.WaitLocked(evs, -1)
		if err != nil {
			return err
		}
		for _, ev := range evs[:n] {
			if ev.Token() == tokStop {
				return nil
			}
		}
		m, err := r.uffd.ReadMsgs(msgs)
		if errors.Is(err, linux.EAGAIN) {
			continue
		}
		if err != nil {
			return err
		}
		for i := range msgs[:m] {
			msg := &msgs[i]
			if msg.Event != linux.UFFD_EVENT_PAGEFAULT {
				continue
			}
			pg := int((msg.PagefaultAddr() - start) / uintptr(ps))
			if pg < 0 || pg >= pages {
				return fmt.Errorf("fault at %#x outside the region", msg.PagefaultAddr())
			}
			run := 0
			for run < faultAround && pg+run < pages && !present[pg+run] {
				run++
			}
			addr := start + uintptr(pg*ps)
			if run == 0 {
				// Already resolved: the thread raced; wake it.
				if err := r.uffd.Wake(addr, uintptr(ps)); err != nil {
					return err
				}
				continue
			}
			chunk := buf[:run*ps]
			if fill {
				if err := src.Fill(chunk, uint64(pg*ps)); err != nil {
					return fmt.Errorf("fill page %d: %w", pg, err)
				}
			}
			if _, err := r.uffd.Copy(addr, chunk, 0); err != nil && !errors.Is(err, linux.EEXIST) {
				return fmt.Errorf("copy %d pages at page %d: %w", run, pg, err)
			} else if err != nil {
				// Some page was there already (cannot happen with a private
				// region only this handler fills): make sure the waiter runs.
				if werr := r.uffd.Wake(addr, uintptr(ps)); werr != nil {
					return werr
				}
			}
			for j := range run {
				present[pg+j] = true
			}
			r.faults.Add(1)
		}
	}
}
