package linux

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// userfaultfd(2) uapi, from include/uapi/linux/userfaultfd.h. The names keep
// the kernel's spelling so they can be looked up there.
const (
	// UFFD_API is the only API version the kernel knows.
	UFFD_API = 0xAA

	// Features negotiated with UFFDIO_API (uffdio_api.features).
	UFFD_FEATURE_PAGEFAULT_FLAG_WP  = 1 << 0
	UFFD_FEATURE_EVENT_FORK         = 1 << 1
	UFFD_FEATURE_EVENT_REMAP        = 1 << 2
	UFFD_FEATURE_EVENT_REMOVE       = 1 << 3
	UFFD_FEATURE_MISSING_HUGETLBFS  = 1 << 4
	UFFD_FEATURE_MISSING_SHMEM      = 1 << 5
	UFFD_FEATURE_EVENT_UNMAP        = 1 << 6
	UFFD_FEATURE_SIGBUS             = 1 << 7
	UFFD_FEATURE_THREAD_ID          = 1 << 8
	UFFD_FEATURE_MINOR_HUGETLBFS    = 1 << 9
	UFFD_FEATURE_MINOR_SHMEM        = 1 << 10
	UFFD_FEATURE_EXACT_ADDRESS      = 1 << 11
	UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
	UFFD_FEATURE_WP_UNPOPULATED     = 1 << 13 // Linux 6.4
	UFFD_FEATURE_POISON             = 1 << 14 // Linux 6.6
	UFFD_FEATURE_WP_ASYNC           = 1 << 15 // Linux 6.7
	UFFD_FEATURE_MOVE               = 1 << 16 // Linux 6.8

	// Events (uffd_msg.event).
	UFFD_EVENT_PAGEFAULT = 0x12
	UFFD_EVENT_FORK      = 0x13
	UFFD_EVENT_REMAP     = 0x14
	UFFD_EVENT_REMOVE    = 0x15
	UFFD_EVENT_UNMAP     = 0x16

	// Flags of a UFFD_EVENT_PAGEFAULT (uffd_msg.arg.pagefault.flags).
	UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
	UFFD_PAGEFAULT_FLAG_WP    = 1 << 1
	UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2

	// Registration modes (uffdio_register.mode).
	UFFDIO_REGISTER_MODE_MISSING = 1 << 0
	UFFDIO_REGISTER_MODE_WP      = 1 << 1
	UFFDIO_REGISTER_MODE_MINOR   = 1 << 2

	// Resolution modes.
	UFFDIO_COPY_MODE_DONTWAKE         = 1 << 0
	UFFDIO_COPY_MODE_WP               = 1 << 1
	UFFDIO_ZEROPAGE_MODE_DONTWAKE     = 1 << 0
	UFFDIO_WRITEPROTECT_MODE_WP       = 1 << 0
	UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 1 << 1
	UFFDIO_CONTINUE_MODE_DONTWAKE     = 1 << 0
	UFFDIO_CONTINUE_MODE_WP           = 1 << 1

	// UFFD_USER_MODE_ONLY is a userfaultfd(2) flag: handle user-mode faults
	// only (allowed without privilege on recent kernels).
	UFFD_USER_MODE_ONLY = 1

	// Ioctl command numbers (_UFFDIO_*): bit positions in the ioctls masks
	// UFFDIO_API and UFFDIO_REGISTER report.
	UFFDIO_NR_REGISTER     = 0x00
	UFFDIO_NR_UNREGISTER   = 0x01
	UFFDIO_NR_WAKE         = 0x02
	UFFDIO_NR_COPY         = 0x03
	UFFDIO_NR_ZEROPAGE     = 0x04
	UFFDIO_NR_MOVE         = 0x05
	UFFDIO_NR_WRITEPROTECT = 0x06
	UFFDIO_NR_CONTINUE     = 0x07
	UFFDIO_NR_POISON       = 0x08
	UFFDIO_NR_API          = 0x3F
)

// ioctl request encoding (asm-generic/ioctl.h).
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	uffdioType = 0xAA
)

// The kernel structs, laid out as in the uapi header (all fields 8-byte
// aligned, so Go's layout matches the C one on every 64-bit architecture).
type uffdioAPI struct {
	API      uint64
	Features uint64
	Ioctls   uint64
}

type uffdioRange struct {
	Start uint64
	Len   uint64
}

type uffdioRegister struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

type uffdioCopy struct {
	Dst  uint64
	Src  uint64
	Len  uint64
	Mode uint64
	Copy int64
}

type uffdioZeropage struct {
	Range    uffdioRange
	Mode     uint64
	Zeropage int64
}

type uffdioWriteprotect struct {
	Range uffdioRange
	Mode  uint64
}

type uffdioContinue struct {
	Range  uffdioRange
	Mode   uint64
	Mapped int64
}

// Ioctl requests, encoded as the uapi header does (_IOWR / _IOR / _IO:
// dir<<30 | size<<16 | type<<8 | nr).
const (
	USERFAULTFD_IOC_NEW = iocNone<<30 | uffdioType<<8 // nr 0x00
	UFFDIO_API          = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioAPI{})<<16 | uffdioType<<8 | UFFDIO_NR_API
	UFFDIO_REGISTER     = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioRegister{})<<16 | uffdioType<<8 | UFFDIO_NR_REGISTER
	UFFDIO_UNREGISTER   = iocRead<<30 | unsafe.Sizeof(uffdioRange{})<<16 | uffdioType<<8 | UFFDIO_NR_UNREGISTER
	UFFDIO_WAKE         = iocRead<<30 | unsafe.Sizeof(uffdioRange{})<<16 | uffdioType<<8 | UFFDIO_NR_WAKE
	UFFDIO_COPY         = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioCopy{})<<16 | uffdioType<<8 | UFFDIO_NR_COPY
	UFFDIO_ZEROPAGE     = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioZeropage{})<<16 | uffdioType<<8 | UFFDIO_NR_ZEROPAGE
	UFFDIO_WRITEPROTECT = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioWriteprotect{})<<16 | uffdioType<<8 | UFFDIO_NR_WRITEPROTECT
	UFFDIO_CONTINUE     = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioContinue{})<<16 | uffdioType<<8 | UFFDIO_NR_CONTINUE
)

// featureNames names the feature bits, for errors and logs.
var featureNames = [...]string{
	"UFFD_FEATURE_PAGEFAULT_FLAG_WP",
	"UFFD_FEATURE_EVENT_FORK",
	"UFFD_FEATURE_EVENT_REMAP",
	"UFFD_FEATURE_EVENT_REMOVE",
	"UFFD_FEATURE_MISSING_HUGETLBFS",
	"UFFD_FEATURE_MISSING_SHMEM",
	"UFFD_FEATURE_EVENT_UNMAP",
	"UFFD_FEATURE_SIGBUS",
	"UFFD_FEATURE_THREAD_ID",
	"UFFD_FEATURE_MINOR_HUGETLBFS",
	"UFFD_FEATURE_MINOR_SHMEM",
	"UFFD_FEATURE_EXACT_ADDRESS",
	"UFFD_FEATURE_WP_HUGETLBFS_SHMEM",
	"UFFD_FEATURE_WP_UNPOPULATED",
	"UFFD_FEATURE_POISON",
	"UFFD_FEATURE_WP_ASYNC",
	"UFFD_FEATURE_MOVE",
}

// UffdFeatureNames spells a feature mask as "A|B|C" (unknown bits as hex).
func UffdFeatureNames(features uint64) string {
	var parts []string
	for f := features; f != 0; f &= f - 1 {
		b := bits.TrailingZeros64(f)
		if b < len(featureNames) {
			parts = append(parts, featureNames[b])
		} else {
			parts = append(parts, fmt.Sprintf("0x%x", uint64(1)<<b))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// ioctlError is the error of a userfaultfd ioctl: the request name and the
// errno, which errors.Is / errors.As reach through Unwrap. The common ones
// are preallocated so that the fault path does not allocate on EEXIST.
type ioctlError struct {
	op    string
	errno unix.Errno
}

func (e *ioctlError) Error() string { return e.op + ": " + e.errno.Error() }
func (e *ioctlError) Unwrap() error { return e.errno }

var commonErrnos = [...]unix.Errno{unix.EEXIST, unix.EAGAIN, unix.ESRCH, unix.ENOENT, unix.EINVAL, unix.ENOMEM, unix.EFAULT, unix.EBADF}

type ioctlOp struct {
	name string
	pre  [len(commonErrnos)]ioctlError
}

func newIoctlOp(name string) *ioctlOp {
	o := &ioctlOp{name: name}
	for i, e := range commonErrnos {
		o.pre[i] = ioctlError{op: name, errno: e}
	}
	return o
}

func (o *ioctlOp) err(errno unix.Errno) error {
	for i := range commonErrnos {
		if commonErrnos[i] == errno {
			return &o.pre[i]
		}
	}
	return &ioctlError{op: o.name, errno: errno}
}

var (
	opAPI          = newIoctlOp("UFFDIO_API")
	opRegister     = newIoctlOp("UFFDIO_REGISTER")
	opUnregister   = newIoctlOp("UFFDIO_UNREGISTER")
	opWake         = newIoctlOp("UFFDIO_WAKE")
	opCopy         = newIoctlOp("UFFDIO_COPY")
	opZeropage     = newIoctlOp("UFFDIO_ZEROPAGE")
	opWriteprotect = newIoctlOp("UFFDIO_WRITEPROTECT")
	opContinue     = newIoctlOp("UFFDIO_CONTINUE")
	opRead         = newIoctlOp("userfaultfd read")
)

// errUffdClosed is returned by every method of a closed Uffd.
var errUffdClosed = fmt.Errorf("userfaultfd: %w", os.ErrClosed)

// Uffd is an owned userfaultfd file descriptor. The mm it acts on is the one
// of the process that created it, whoever holds the fd: a pager may register
// and resolve ranges of a worker that created the fd and passed it over.
//
// Methods may be called concurrently with each other, but not with Close.
type Uffd struct {
	fd atomic.Int32
}

// OpenUffd creates a userfaultfd (O_CLOEXEC|O_NONBLOCK) for the calling
// process: through /dev/userfaultfd (USERFAULTFD_IOC_NEW) when it is there,
// else with the userfaultfd(2) system call. UFFDIO_API is not called: the
// holder that serves the fd negotiates the features (see Uffd.API).
func OpenUffd() (*Uffd, error) {
	flags := uintptr(unix.O_CLOEXEC | unix.O_NONBLOCK)
	dev, err := unix.Open("/dev/userfaultfd", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err == nil {
		fd, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), USERFAULTFD_IOC_NEW, flags)
		unix.Close(dev)
		if errno == 0 {
			return NewUffd(int(fd)), nil
		}
		err = fmt.Errorf("ioctl /dev/userfaultfd USERFAULTFD_IOC_NEW: %w", errno)
	} else {
		err = fmt.Errorf("open /dev/userfaultfd: %w", err)
	}
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, flags, 0, 0)
	if errno != 0 {
		if errno == unix.ENOSYS {
			return nil, &UnsupportedError{Feature: "userfaultfd", Hint: "CONFIG_USERFAULTFD"}
		}
		return nil, errors.Join(err, fmt.Errorf("userfaultfd(2): %w", errno))
	}
	return NewUffd(int(fd)), nil
}

// NewUffd adopts fd (e.g. received over SCM_RIGHTS); Close closes it.
func NewUffd(fd int) *Uffd {
	u := &Uffd{}
	u.fd.Store(int32(fd))
	return u
}

// FD is the file descriptor number, -1 once closed.
func (u *Uffd) FD() int { return int(u.fd.Load()) }

// Close closes the fd. A second Close returns an error wrapping os.ErrClosed.
func (u *Uffd) Close() error {
	fd := u.fd.Swap(-1)
	if fd < 0 {
		return errUffdClosed
	}
	return sysErr("close userfaultfd", unix.Close(int(fd)))
}

// Dup returns a new owned fd for the same userfaultfd (F_DUPFD_CLOEXEC).
// Both act on the same context: registrations, negotiated features and
// pending faults are shared, and the context lives until the last is closed.
func (u *Uffd) Dup() (*Uffd, error) {
	fd := u.fd.Load()
	if fd < 0 {
		return nil, errUffdClosed
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup userfaultfd %d: %w", fd, err)
	}
	return NewUffd(nfd), nil
}

// Initialized tells whether UFFDIO_API was done on this userfaultfd (by any
// holder of it): an uninitialized one polls EPOLLERR. It does not block.
func (u *Uffd) Initialized() (bool, error) {
	fd := u.fd.Load()
	if fd < 0 {
		return false, errUffdClosed
	}
	fds := []unix.PollFd{{Fd: fd, Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll userfaultfd %d: %w", fd, err)
		}
		return fds[0].Revents&unix.POLLERR == 0, nil
	}
}

func (u *Uffd) ioctl(op *ioctlOp, req uintptr, arg unsafe.Pointer) error {
	fd := u.fd.Load()
	if fd < 0 {
		return errUffdClosed
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return op.err(errno)
	}
	return nil
}

// API negotiates the API version and features (UFFDIO_API), once per fd. It
// returns every feature the kernel supports. A requested feature the kernel
// lacks gives an *UnsupportedError naming it; the fd then stays
// uninitialized and API may be called again with fewer features.
func (u *Uffd) API(features uint64) (supported uint64, err error) {
	arg := uffdioAPI{API: UFFD_API, Features: features}
	err = u.ioctl(opAPI, UFFDIO_API, unsafe.Pointer(&arg))
	if err == nil {
		return arg.Features, nil
	}
	if !errors.Is(err, unix.EINVAL) || features == 0 {
		return 0, err
	}
	// EINVAL: an unknown feature (or an fd already initialized). The kernel
	// zeroes the answer on error, so probe on a fresh fd to tell which.
	have, perr := UffdFeatures()
	if perr != nil {
		return 0, errors.Join(err, perr)
	}
	if missing := features &^ have; missing != 0 {
		return have, &UnsupportedError{
			Feature: "userfaultfd " + UffdFeatureNames(missing),
			Hint:    "supported: " + UffdFeatureNames(have),
		}
	}
	return have, fmt.Errorf("%w (was UFFDIO_API already called on this fd?)", err)
}

var featureProbe struct {
	once     sync.Once
	features uint64
	err      error
}

// UffdFeatures returns the features this kernel's userfaultfd supports,
// probed once on a throw-away fd.
func UffdFeatures() (uint64, error) {
	featureProbe.once.Do(func() {
		u, err := OpenUffd()
		if err != nil {
			featureProbe.err = err
			return
		}
		defer u.Close()
		arg := uffdioAPI{API: UFFD_API}
		featureProbe.err = u.ioctl(opAPI, UFFDIO_API, unsafe.Pointer(&arg))
		featureProbe.features = arg.Features
	})
	return featureProbe.features, featureProbe.err
}

// Register registers [start, start+length) with the given modes
// (UFFDIO_REGISTER_MODE_*) and returns the ioctls the kernel allows on the
// range (bit UFFDIO_NR_* set).
func (u *Uffd) Register(start, length uintptr, mode uint64) (ioctls uint64, err error) {
	arg := uffdioRegister{Range: uffdioRange{Start: uint64(start), Len: uint64(length)}, Mode: mode}
	if err := u.ioctl(opRegister, UFFDIO_REGISTER, unsafe.Pointer(&arg)); err != nil {
		return 0, fmt.Errorf("%w (range %#x+%#x, mode %#x)", err, start, length, mode)
	}
	return arg.Ioctls, nil
}

// Unregister removes the registration of [start, start+length).
func (u *Uffd) Unregister(start, length uintptr) error {
	arg := uffdioRange{Start: uint64(start), Len: uint64(length)}
	if err := u.ioctl(opUnregister, UFFDIO_UNREGISTER, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("%w (range %#x+%#x)", err, start, length)
	}
	return nil
}

// Copy atomically copies src into the missing pages at dst (UFFDIO_COPY)
// and, unless mode has UFFDIO_COPY_MODE_DONTWAKE, wakes the threads waiting
// on them. len(src) must be a multiple of the page size. It returns the
// bytes copied, which may be fewer than len(src) with an error: EEXIST when
// a page was already there, EAGAIN when the mm is changing (read the pending
// events, then retry), ESRCH when the process is gone. The error keeps the
// errno: errors.Is(err, EEXIST).
func (u *Uffd) Copy(dst uintptr, src []byte, mode uint64) (copied int64, err error) {
	if len(src) == 0 {
		return 0, nil
	}
	arg := uffdioCopy{
		Dst:  uint64(dst),
		Src:  uint64(uintptr(unsafe.Pointer(unsafe.SliceData(src)))),
		Len:  uint64(len(src)),
		Mode: mode,
	}
	err = u.ioctl(opCopy, UFFDIO_COPY, unsafe.Pointer(&arg))
	runtime.KeepAlive(src)
	if arg.Copy > 0 {
		copied = arg.Copy
	}
	return copied, err
}

// ZeroPage maps zero pages on the missing pages of [dst, dst+length)
// (UFFDIO_ZEROPAGE), waking waiters unless UFFDIO_ZEROPAGE_MODE_DONTWAKE.
// Errors and the returned count are as for Copy.
func (u *Uffd) ZeroPage(dst, length uintptr, mode uint64) (zeroed int64, err error) {
	arg := uffdioZeropage{Range: uffdioRange{Start: uint64(dst), Len: uint64(length)}, Mode: mode}
	err = u.ioctl(opZeropage, UFFDIO_ZEROPAGE, unsafe.Pointer(&arg))
	if arg.Zeropage > 0 {
		zeroed = arg.Zeropage
	}
	return zeroed, err
}

// Wake wakes the threads waiting on faults in [start, start+length)
// (UFFDIO_WAKE). A woken thread whose page is still missing faults again,
// which raises a new fault message.
func (u *Uffd) Wake(start, length uintptr) error {
	arg := uffdioRange{Start: uint64(start), Len: uint64(length)}
	return u.ioctl(opWake, UFFDIO_WAKE, unsafe.Pointer(&arg))
}

// WriteProtect sets (mode has UFFDIO_WRITEPROTECT_MODE_WP) or clears the
// write protection of [start, start+length) (UFFDIO_WRITEPROTECT).
func (u *Uffd) WriteProtect(start, length uintptr, mode uint64) error {
	arg := uffdioWriteprotect{Range: uffdioRange{Start: uint64(start), Len: uint64(length)}, Mode: mode}
	return u.ioctl(opWriteprotect, UFFDIO_WRITEPROTECT, unsafe.Pointer(&arg))
}

// Continue resolves minor faults in [start, start+length) by mapping the
// pages already in the page cache (UFFDIO_CONTINUE). It returns the bytes
// mapped.
func (u *Uffd) Continue(start, length uintptr, mode uint64) (mapped int64, err error) {
	arg := uffdioContinue{Range: uffdioRange{Start: uint64(start), Len: uint64(length)}, Mode: mode}
	err = u.ioctl(opContinue, UFFDIO_CONTINUE, unsafe.Pointer(&arg))
	if arg.Mapped > 0 {
		mapped = arg.Mapped
	}
	return mapped, err
}

// ReadMsgs reads as many pending messages as fit in msgs without blocking.
// It returns EAGAIN (errors.Is) when none is pending.
func (u *Uffd) ReadMsgs(msgs []UffdMsg) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	fd := u.fd.Load()
	if fd < 0 {
		return 0, errUffdClosed
	}
	size := uintptr(len(msgs)) * unsafe.Sizeof(UffdMsg{})
	n, _, errno := unix.Syscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(msgs))), size)
	if errno != 0 {
		return 0, opRead.err(errno)
	}
	return int(n / unsafe.Sizeof(UffdMsg{})), nil
}

// UffdMsg is one struct uffd_msg as read from a userfaultfd (32 bytes). The
// union is decoded by the accessors of the event it holds (little-endian
// layout, as on every architecture Go supports Linux on but s390x/ppc64).
type UffdMsg struct {
	Event     uint8
	reserved1 uint8
	reserved2 uint16
	reserved3 uint32
	arg       [3]uint64
}

// PagefaultFlags is UFFD_PAGEFAULT_FLAG_* of a UFFD_EVENT_PAGEFAULT.
func (m *UffdMsg) PagefaultFlags() uint64 { return m.arg[0] }

// PagefaultAddr is the faulting address (page-aligned unless
// UFFD_FEATURE_EXACT_ADDRESS) of a UFFD_EVENT_PAGEFAULT.
func (m *UffdMsg) PagefaultAddr() uintptr { return uintptr(m.arg[1]) }

// PagefaultTID is the faulting thread (with UFFD_FEATURE_THREAD_ID, else 0).
func (m *UffdMsg) PagefaultTID() uint32 { return uint32(m.arg[2]) }

// ForkUfd is the new userfaultfd of the child of a UFFD_EVENT_FORK; the
// reader owns it.
func (m *UffdMsg) ForkUfd() int { return int(uint32(m.arg[0])) }

// Remap gives the old address, new address and length of a UFFD_EVENT_REMAP.
func (m *UffdMsg) Remap() (from, to, length uintptr) {
	return uintptr(m.arg[0]), uintptr(m.arg[1]), uintptr(m.arg[2])
}

// Range gives [start, end) of a UFFD_EVENT_REMOVE or UFFD_EVENT_UNMAP.
func (m *UffdMsg) Range() (start, end uintptr) { return uintptr(m.arg[0]), uintptr(m.arg[1]) }

// String describes the message, for logs and test failures.
func (m *UffdMsg) String() string {
	switch m.Event {
	case UFFD_EVENT_PAGEFAULT:
		return fmt.Sprintf("pagefault addr=%#x flags=%#x tid=%d", m.PagefaultAddr(), m.PagefaultFlags(), m.PagefaultTID())
	case UFFD_EVENT_FORK:
		return fmt.Sprintf("fork ufd=%d", m.ForkUfd())
	case UFFD_EVENT_REMAP:
		from, to, n := m.Remap()
		return fmt.Sprintf("remap from=%#x to=%#x len=%#x", from, to, n)
	case UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP:
		s, e := m.Range()
		name := "remove"
		if m.Event == UFFD_EVENT_UNMAP {
			name = "unmap"
		}
		return fmt.Sprintf("%s start=%#x end=%#x", name, s, e)
	}
	return fmt.Sprintf("event %#x", m.Event)
}

// NewPagefaultMsg builds a UFFD_EVENT_PAGEFAULT message, for benchmarks and
// tests of message handling.
func NewPagefaultMsg(addr uintptr, flags uint64, tid uint32) UffdMsg {
	return UffdMsg{Event: UFFD_EVENT_PAGEFAULT, arg: [3]uint64{flags, uint64(addr), uint64(tid)}}
}
