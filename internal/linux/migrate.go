package linux

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vcored/vcored/internal/hw"
)

// MigratePages moves the pages of process pid that are on nodes from onto
// nodes to (migrate_pages(2)), and returns how many pages it could not
// move. The kernel maps the i-th node of from onto the i-th of to (cycling
// through to when it is shorter).
func MigratePages(pid int, from, to hw.NodeSet) (notMoved int, err error) {
	fm, fmax, err := nodeMask(from)
	if err != nil {
		return 0, fmt.Errorf("migrate_pages pid %d: from: %w", pid, err)
	}
	tm, tmax, err := nodeMask(to)
	if err != nil {
		return 0, fmt.Errorf("migrate_pages pid %d: to: %w", pid, err)
	}
	// Both masks are passed with one maxnode: pad the shorter.
	maxnode := max(fmax, tmax)
	for uintptr(len(fm)*64+1) < maxnode {
		fm = append(fm, 0)
	}
	for uintptr(len(tm)*64+1) < maxnode {
		tm = append(tm, 0)
	}
	r, _, errno := unix.Syscall6(unix.SYS_MIGRATE_PAGES, uintptr(pid), maxnode, maskPtr(fm), maskPtr(tm), 0, 0)
	if errno != 0 {
		return 0, fmt.Errorf("migrate_pages pid %d from %s to %s: %w", pid, from, to, errno)
	}
	return int(r), nil
}
