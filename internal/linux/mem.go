package linux

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Protections, mapping flags and advice for Mmap and Madvise.
const (
	PROT_NONE  = unix.PROT_NONE
	PROT_READ  = unix.PROT_READ
	PROT_WRITE = unix.PROT_WRITE

	MAP_PRIVATE   = unix.MAP_PRIVATE
	MAP_SHARED    = unix.MAP_SHARED
	MAP_ANONYMOUS = unix.MAP_ANONYMOUS
	MAP_NORESERVE = unix.MAP_NORESERVE
	MAP_POPULATE  = unix.MAP_POPULATE

	MADV_NORMAL         = unix.MADV_NORMAL
	MADV_DONTNEED       = unix.MADV_DONTNEED
	MADV_REMOVE         = unix.MADV_REMOVE
	MADV_HUGEPAGE       = unix.MADV_HUGEPAGE
	MADV_NOHUGEPAGE     = unix.MADV_NOHUGEPAGE
	MADV_POPULATE_READ  = unix.MADV_POPULATE_READ
	MADV_POPULATE_WRITE = unix.MADV_POPULATE_WRITE
)

var pageSize = os.Getpagesize()

// PageSize is the base page size in bytes.
func PageSize() int { return pageSize }

// Mmap maps length bytes of anonymous memory (MAP_ANONYMOUS is implied).
// Release it with Munmap.
func Mmap(length int, prot, flags int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, length, prot, flags|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes prot %#x flags %#x: %w", length, prot, flags, err)
	}
	return b, nil
}

// Munmap unmaps memory returned by Mmap.
func Munmap(b []byte) error {
	if err := unix.Munmap(b); err != nil {
		return fmt.Errorf("munmap %d bytes: %w", len(b), err)
	}
	return nil
}

// Madvise gives advice (MADV_*) about b.
func Madvise(b []byte, advice int) error {
	if err := unix.Madvise(b, advice); err != nil {
		return fmt.Errorf("madvise %d bytes advice %d: %w", len(b), advice, err)
	}
	return nil
}
