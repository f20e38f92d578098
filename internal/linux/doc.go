// Package linux is vcored's one funnel for raw system calls: it is the only
// package that imports golang.org/x/sys/unix (a test in the module root
// enforces it). What x/sys lacks — userfaultfd structs and ioctls, mbind,
// get_mempolicy, move_pages, pidfd helpers — is written here once, in pure
// Go, with tests that check struct sizes and ioctl numbers against the
// kernel's uapi values.
//
// Errors keep errno identity: callers compare with errors.Is(err, unix.EEXIST)
// (re-exported here as linux.EEXIST and friends). A kernel that lacks a
// feature gives an *UnsupportedError, which Is(ErrNotSupported).
package linux
