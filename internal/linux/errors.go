package linux

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrNotSupported is matched (errors.Is) by every error that means "this
// kernel or host cannot do that". Tests skip on it; users get a sentence
// naming the missing feature.
var ErrNotSupported = errors.New("not supported by this kernel")

// UnsupportedError names a kernel feature the host lacks.
type UnsupportedError struct {
	Feature string // e.g. "userfaultfd UFFD_FEATURE_THREAD_ID"
	Hint    string // optional: what provides it (a kernel version, a sysctl)
}

func (e *UnsupportedError) Error() string {
	if e.Hint != "" {
		return fmt.Sprintf("%s is not supported by this kernel (%s)", e.Feature, e.Hint)
	}
	return fmt.Sprintf("%s is not supported by this kernel", e.Feature)
}

// Is makes errors.Is(err, ErrNotSupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrNotSupported }

// Errno values callers compare against, so that packages outside the funnel
// need not import x/sys/unix.
const (
	EEXIST = unix.EEXIST
	EAGAIN = unix.EAGAIN
	EINTR  = unix.EINTR
	ENOENT = unix.ENOENT
	ESRCH  = unix.ESRCH
	ENOMEM = unix.ENOMEM
	EINVAL = unix.EINVAL
	EBADF  = unix.EBADF
	EPERM  = unix.EPERM
	ENOSPC = unix.ENOSPC
	ENODEV = unix.ENODEV
	EBUSY  = unix.EBUSY
)

// sysErr wraps an errno with the operation that failed, keeping its identity.
func sysErr(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", op, err)
}
