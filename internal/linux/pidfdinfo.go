package linux

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pidfdInfo is struct pidfd_info as published first (Linux 6.13,
// PIDFD_INFO_SIZE_VER0 = 64 bytes). Linux 6.15 turned the spare word at
// offset 60 into exit_code (PIDFD_INFO_EXIT); later fields are not asked for.
type pidfdInfo struct {
	Mask     uint64
	CgroupID uint64
	Pid      uint32
	Tgid     uint32
	Ppid     uint32
	Ruid     uint32
	Rgid     uint32
	Euid     uint32
	Egid     uint32
	Suid     uint32
	Sgid     uint32
	Fsuid    uint32
	Fsgid    uint32
	ExitCode int32
}

const (
	pidfdInfoSizeVer0 = 64
	pidfdInfoExit     = 1 << 3 // PIDFD_INFO_EXIT
	// pidfdGetInfo is PIDFD_GET_INFO: _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11,
	// struct pidfd_info) with the 64-byte first version.
	pidfdGetInfo = 3<<30 | pidfdInfoSizeVer0<<16 | 0xFF<<8 | 11
)

// ErrExitUnknown is wrapped by PidfdExitStatus when the kernel holds no exit
// status for the process (yet): it has not been reaped by its parent, or the
// kernel predates PIDFD_INFO_EXIT (then the error is also ErrNotSupported).
var ErrExitUnknown = errors.New("exit status not available")

// PidfdExitStatus returns the wait status of the exited process pidfd
// refers to, through ioctl(PIDFD_GET_INFO) with PIDFD_INFO_EXIT (Linux
// 6.15). This works for a process that is not the caller's child, once its
// parent has reaped it. Before that, or on an older kernel, the error wraps
// ErrExitUnknown.
func PidfdExitStatus(pidfd int) (syscall.WaitStatus, error) {
	info := pidfdInfo{Mask: pidfdInfoExit}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(pidfd), pidfdGetInfo, uintptr(unsafe.Pointer(&info)))
	switch {
	case errno == unix.ENOTTY || errno == unix.EINVAL:
		// Before 6.13 pidfds have no PIDFD_GET_INFO.
		return 0, fmt.Errorf("pidfd %d: %w: %w", pidfd, ErrExitUnknown,
			&UnsupportedError{Feature: "ioctl PIDFD_GET_INFO", Hint: "Linux 6.13; exit status: 6.15"})
	case errno == unix.ESRCH:
		// Reaped, and this kernel keeps no exit information.
		return 0, fmt.Errorf("pidfd %d: %w: %w", pidfd, ErrExitUnknown,
			&UnsupportedError{Feature: "PIDFD_INFO_EXIT", Hint: "Linux 6.15"})
	case errno != 0:
		return 0, sysErr(fmt.Sprintf("ioctl PIDFD_GET_INFO pidfd %d", pidfd), errno)
	}
	if info.Mask&pidfdInfoExit == 0 {
		return 0, fmt.Errorf("pidfd %d (pid %d): %w", pidfd, info.Pid, ErrExitUnknown)
	}
	return syscall.WaitStatus(info.ExitCode), nil
}
