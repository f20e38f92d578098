package linux

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Epoll event bits.
const (
	EPOLLIN        = unix.EPOLLIN
	EPOLLOUT       = unix.EPOLLOUT
	EPOLLERR       = unix.EPOLLERR
	EPOLLHUP       = unix.EPOLLHUP
	EPOLLRDHUP     = unix.EPOLLRDHUP
	EPOLLET        = unix.EPOLLET
	EPOLLONESHOT   = unix.EPOLLONESHOT
	EPOLLEXCLUSIVE = unix.EPOLLEXCLUSIVE
)

// closedFD is an owned fd number with one Close (a second Close wraps
// os.ErrClosed).
type closedFD struct{ fd atomic.Int32 }

func (c *closedFD) set(fd int) { c.fd.Store(int32(fd)) }
func (c *closedFD) get() int   { return int(c.fd.Load()) }
func (c *closedFD) close(what string) error {
	fd := c.fd.Swap(-1)
	if fd < 0 {
		return fmt.Errorf("%s: %w", what, os.ErrClosed)
	}
	return sysErr("close "+what, unix.Close(int(fd)))
}

// Epoll is an owned epoll instance. Several threads may Wait on it at once.
type Epoll struct{ c closedFD }

// EpollEvent is one ready event as returned by Wait: the event bits and the
// 64-bit token given to Add. Same memory layout as struct epoll_event.
type EpollEvent struct{ raw unix.EpollEvent }

// Events are the EPOLL* bits that are ready.
func (e *EpollEvent) Events() uint32 { return e.raw.Events }

// Token is the value given to Add for this fd.
func (e *EpollEvent) Token() uint64 {
	return uint64(uint32(e.raw.Fd)) | uint64(uint32(e.raw.Pad))<<32
}

// NewEpoll creates an epoll instance (EPOLL_CLOEXEC).
func NewEpoll() (*Epoll, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	e := &Epoll{}
	e.c.set(fd)
	return e, nil
}

// FD is the epoll fd number, -1 once closed.
func (e *Epoll) FD() int { return e.c.get() }

// Close closes the epoll instance.
func (e *Epoll) Close() error { return e.c.close("epoll") }

func (e *Epoll) ctl(op int, name string, fd int, events uint32, token uint64) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(uint32(token)), Pad: int32(uint32(token >> 32))}
	if err := unix.EpollCtl(e.c.get(), op, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl %s fd %d events %#x: %w", name, fd, events, err)
	}
	return nil
}

// Add watches fd for events (EPOLL* bits, e.g. EPOLLIN|EPOLLET); Wait
// reports token for it.
func (e *Epoll) Add(fd int, events uint32, token uint64) error {
	return e.ctl(unix.EPOLL_CTL_ADD, "ADD", fd, events, token)
}

// Modify changes the events and token of a watched fd (and re-arms an
// EPOLLONESHOT one).
func (e *Epoll) Modify(fd int, events uint32, token uint64) error {
	return e.ctl(unix.EPOLL_CTL_MOD, "MOD", fd, events, token)
}

// Delete stops watching fd.
func (e *Epoll) Delete(fd int) error {
	if err := unix.EpollCtl(e.c.get(), unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("epoll_ctl DEL fd %d: %w", fd, err)
	}
	return nil
}

// Wait blocks up to msec milliseconds (-1: until an event) and fills evs. An
// interrupted wait (EINTR) returns 0 events and no error.
func (e *Epoll) Wait(evs []EpollEvent, msec int) (int, error) {
	if len(evs) == 0 {
		return 0, fmt.Errorf("epoll_wait: %w (no room for events)", unix.EINVAL)
	}
	raw := unsafe.Slice(&evs[0].raw, len(evs))
	n, err := unix.EpollWait(e.c.get(), raw, msec)
	if err == unix.EINTR {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("epoll_wait: %w", err)
	}
	return n, nil
}

// WaitLocked is Wait for a goroutine locked to its OS thread that does
// nothing but wait and serve (a pager thread). It enters epoll_wait
// without telling the Go scheduler (a raw system call): the goroutine keeps
// its P while it blocks. Through the scheduler (Wait), a thread that blocks
// between every two faults lets every P go idle, the runtime's sysmon then
// sleeps until a goroutine next enters a system call, and the pager's next
// read wakes it: a wake-up of another thread on the faulting CPU per fault
// burst, at 20 µs intervals. The caller's process must have a P for its
// other goroutines (GOMAXPROCS above the number of such threads). A
// preemption request (garbage collection, a goroutine that ran 10 ms)
// interrupts the wait with a signal: it returns 0 events, and the caller's
// next call yields.
func (e *Epoll) WaitLocked(evs []EpollEvent, msec int) (int, error) {
	if len(evs) == 0 {
		return 0, fmt.Errorf("epoll_wait: %w (no room for events)", unix.EINVAL)
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(e.c.get()), uintptr(unsafe.Pointer(&evs[0].raw)),
		uintptr(len(evs)), uintptr(msec), 0, 0)
	switch errno {
	case 0:
		return int(n), nil
	case unix.EINTR:
		return 0, nil
	}
	return 0, fmt.Errorf("epoll_wait: %w", errno)
}

// EventFD is an owned eventfd (EFD_CLOEXEC|EFD_NONBLOCK), used to wake and
// stop poll loops: Signal makes it readable until Drain.
type EventFD struct{ c closedFD }

// NewEventFD creates an eventfd with counter 0.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	e := &EventFD{}
	e.c.set(fd)
	return e, nil
}

// FD is the fd number, -1 once closed.
func (e *EventFD) FD() int { return e.c.get() }

// Close closes the eventfd.
func (e *EventFD) Close() error { return e.c.close("eventfd") }

// Signal adds 1 to the counter, making the fd readable.
func (e *EventFD) Signal() error {
	one := uint64(1)
	_, err := unix.Write(e.c.get(), (*[8]byte)(unsafe.Pointer(&one))[:])
	if err != nil && err != unix.EAGAIN { // EAGAIN: counter saturated, still readable
		return fmt.Errorf("eventfd write: %w", err)
	}
	return nil
}

// Drain resets the counter to 0 and returns what it was.
func (e *EventFD) Drain() (uint64, error) {
	var v uint64
	_, err := unix.Read(e.c.get(), (*[8]byte)(unsafe.Pointer(&v))[:])
	if err == unix.EAGAIN {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("eventfd read: %w", err)
	}
	return v, nil
}

// PidWatch is an owned pidfd that becomes readable (EPOLLIN) when the
// process exits: put FD in an Epoll to learn of a worker's death.
type PidWatch struct {
	c   closedFD
	pid int
}

// WatchPid opens a PidWatch on pid. ESRCH (errors.Is) if it is already gone.
func WatchPid(pid int) (*PidWatch, error) {
	fd, err := PidfdOpen(pid)
	if err != nil {
		return nil, err
	}
	w := &PidWatch{pid: pid}
	w.c.set(fd)
	return w, nil
}

// FD is the pidfd number, -1 once closed.
func (w *PidWatch) FD() int { return w.c.get() }

// Pid is the watched process id.
func (w *PidWatch) Pid() int { return w.pid }

// Exited tells, without blocking, whether the process has exited.
func (w *PidWatch) Exited() (bool, error) {
	fds := []unix.PollFd{{Fd: int32(w.c.get()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	if err != nil && err != unix.EINTR {
		return false, fmt.Errorf("poll pidfd of %d: %w", w.pid, err)
	}
	return n > 0 && fds[0].Revents&unix.POLLIN != 0, nil
}

// Close closes the pidfd.
func (w *PidWatch) Close() error { return w.c.close("pidfd") }
