package linux

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// CloseOnExecFrom marks every open file descriptor >= minfd close-on-exec,
// so that a program exec'ed next receives only the lower ones (0, 1, 2 with
// minfd 3) and whatever the exec itself installs (os/exec dups
// Cmd.ExtraFiles into place, clearing the flag on those copies). It uses
// close_range(minfd, ~0, CLOSE_RANGE_CLOEXEC) (Linux 5.11) and falls back to
// fcntl(F_SETFD) on each fd listed in /proc/self/fd.
//
// Descriptors are left open in the calling process: Go's runtime and
// libraries keep theirs, and a process that did not mean to hand its
// inherited descriptors (a lock file of whoever started it, ...) to its
// children no longer does.
func CloseOnExecFrom(minfd int) error {
	if minfd < 0 {
		return fmt.Errorf("close_range from %d: %w", minfd, EINVAL)
	}
	err := unix.CloseRange(uint(minfd), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return sysErr(fmt.Sprintf("close_range(%d, ~0, CLOSE_RANGE_CLOEXEC)", minfd), err)
	}
	return cloexecEach(minfd)
}

// cloexecEach is CloseOnExecFrom for kernels before 5.11: fcntl on every fd
// in /proc/self/fd.
func cloexecEach(minfd int) error {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("mark fds close-on-exec: %w", err)
	}
	names, err := d.Readdirnames(-1)
	dirfd := int(d.Fd())
	if err != nil {
		d.Close()
		return fmt.Errorf("mark fds close-on-exec: read /proc/self/fd: %w", err)
	}
	var errs []error
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil || fd < minfd || fd == dirfd {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if errors.Is(err, unix.EBADF) {
			continue // closed meanwhile
		}
		if err == nil && flags&unix.FD_CLOEXEC == 0 {
			_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC)
		}
		if err != nil && !errors.Is(err, unix.EBADF) {
			errs = append(errs, sysErr(fmt.Sprintf("fcntl fd %d F_SETFD FD_CLOEXEC", fd), err))
		}
	}
	d.Close()
	return errors.Join(errs...)
}

// FDCloseOnExec reports whether fd has the close-on-exec flag.
func FDCloseOnExec(fd int) (bool, error) {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		return false, sysErr(fmt.Sprintf("fcntl fd %d F_GETFD", fd), err)
	}
	return flags&unix.FD_CLOEXEC != 0, nil
}
