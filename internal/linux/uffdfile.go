package linux

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// uffdLink is what /proc/self/fd/N points to for a userfaultfd (an anonymous
// inode named by the kernel in every version vcored supports).
const uffdLink = "anon_inode:[userfaultfd]"

// IsUffd reports whether fd refers to a userfaultfd: a descriptor received
// from a peer is checked before it is used as one.
func IsUffd(fd int) (bool, error) {
	if fd < 0 {
		return false, nil
	}
	var buf [64]byte
	n, err := unix.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd), buf[:])
	if err != nil {
		return false, sysErr(fmt.Sprintf("readlink /proc/self/fd/%d", fd), err)
	}
	return string(buf[:n]) == uffdLink, nil
}

// kcmp(2) type of "same open file description".
const kcmpFile = 0

// SameFile reports whether fds a and b of this process refer to the same open
// file (two dups of one userfaultfd, or the same fd received twice over
// SCM_RIGHTS). It uses kcmp(2) (KCMP_FILE) and falls back to comparing the
// inodes (fstat) when the kernel has no kcmp: every userfaultfd has an inode
// of its own (anon_inode_getfd_secure / anon_inode_create_getfd), so two
// open userfaultfds never share one while both are held.
func SameFile(a, b int) (bool, error) {
	pid := uintptr(unix.Getpid())
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, pid, pid, kcmpFile, uintptr(a), uintptr(b), 0)
	switch errno {
	case 0:
		return r == 0, nil
	case unix.ENOSYS, unix.EPERM:
		// No kcmp (CONFIG_KCMP off) or not allowed: compare inodes.
	default:
		return false, sysErr(fmt.Sprintf("kcmp fds %d %d", a, b), errno)
	}
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a, &sa); err != nil {
		return false, sysErr(fmt.Sprintf("fstat fd %d", a), err)
	}
	if err := unix.Fstat(b, &sb); err != nil {
		return false, sysErr(fmt.Sprintf("fstat fd %d", b), err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino, nil
}

// UFFDIO_POISON (Linux 6.6): install poison markers on the missing pages of a
// range, so that an access gets SIGBUS (as for a hardware-poisoned page).
type uffdioPoison struct {
	Range   uffdioRange
	Mode    uint64
	Updated int64
}

// UFFDIO_POISON_MODE_DONTWAKE leaves the waiting threads asleep.
const UFFDIO_POISON_MODE_DONTWAKE = 1 << 0

// UFFDIO_POISON is _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison).
const UFFDIO_POISON = (iocRead|iocWrite)<<30 | unsafe.Sizeof(uffdioPoison{})<<16 | uffdioType<<8 | UFFDIO_NR_POISON

var opPoison = newIoctlOp("UFFDIO_POISON")

// Poison marks the missing pages of [start, start+length) poisoned
// (UFFDIO_POISON) and, unless mode has UFFDIO_POISON_MODE_DONTWAKE, wakes the
// threads waiting on them: their access, and every later one until the range
// is unmapped or discarded, gets SIGBUS. A kernel without UFFDIO_POISON
// (before 6.6) gives an error Is ErrNotSupported.
func (u *Uffd) Poison(start, length uintptr, mode uint64) (int64, error) {
	if have, err := UffdFeatures(); err != nil || have&UFFD_FEATURE_POISON == 0 {
		return 0, &UnsupportedError{Feature: "UFFDIO_POISON", Hint: "Linux 6.6"}
	}
	arg := uffdioPoison{Range: uffdioRange{Start: uint64(start), Len: uint64(length)}, Mode: mode}
	err := u.ioctl(opPoison, UFFDIO_POISON, unsafe.Pointer(&arg))
	var n int64
	if arg.Updated > 0 {
		n = arg.Updated
	}
	return n, err
}

// Tgkill sends sig to thread tid of process pid (tgkill(2)): only that thread
// gets it. An exited thread gives an error Is ESRCH.
func Tgkill(pid, tid int, sig syscall.Signal) error {
	return sysErr(fmt.Sprintf("tgkill %d/%d %v", pid, tid, sig), unix.Tgkill(pid, tid, sig))
}
