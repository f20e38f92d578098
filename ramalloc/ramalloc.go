// Package ramalloc hands out node-bound memory inside a subsystem's RAM
// quota: an anonymous mapping bound to one NUMA node (mbind MPOL_BIND with
// MPOL_MF_STRICT), optionally with transparent huge pages. An allocation
// beyond the quota fails with an error naming the subsystem and changes
// nothing; freeing returns the quota. Placement tells which node holds each
// page of a range (move_pages in query mode), for tests and the bench.
package ramalloc

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"unsafe"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// ErrQuota is matched (errors.Is) by every over-quota error (*QuotaError).
var ErrQuota = errors.New("ramalloc: over quota")

// QuotaError is a reservation the quota cannot hold.
type QuotaError struct {
	Subsystem string
	Requested int64
	Used      int64
	Limit     int64
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("ramalloc: subsystem %q over quota: requested %s with %s of %s used",
		e.Subsystem, hw.Bytes(e.Requested), hw.Bytes(e.Used), hw.Bytes(e.Limit))
}

// Is makes errors.Is(err, ErrQuota) true.
func (e *QuotaError) Is(target error) bool { return target == ErrQuota }

// Quota is one subsystem's RAM budget in bytes. Safe for concurrent use.
type Quota struct {
	subsystem string
	mu        sync.Mutex
	limit     int64
	used      int64
}

// NewQuota returns an empty quota of limit bytes for subsystem.
func NewQuota(subsystem string, limit int64) *Quota {
	return &Quota{subsystem: subsystem, limit: limit}
}

// Reserve takes n bytes from the quota, or fails with a *QuotaError and
// takes nothing.
func (q *Quota) Reserve(n int64) error {
	if n < 0 {
		return fmt.Errorf("ramalloc: subsystem %q: reserve %d bytes: negative", q.subsystem, n)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.used+n > q.limit || q.used+n < q.used {
		return &QuotaError{Subsystem: q.subsystem, Requested: n, Used: q.used, Limit: q.limit}
	}
	q.used += n
	return nil
}

// Force takes n bytes even beyond the limit: for memory admitted earlier
// (regions a restarted vcore takes back from core were admitted by its
// predecessor and are in use whatever the quota says now).
func (q *Quota) Force(n int64) {
	q.mu.Lock()
	q.used += max(n, 0)
	q.mu.Unlock()
}

// Release gives n bytes back. Releasing more than is used is a bug; the
// count stops at zero.
func (q *Quota) Release(n int64) {
	q.mu.Lock()
	q.used = max(q.used-n, 0)
	q.mu.Unlock()
}

// Used is the number of bytes reserved.
func (q *Quota) Used() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.used
}

// Limit is the quota in bytes.
func (q *Quota) Limit() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.limit
}

// Subsystem names the quota's owner.
func (q *Quota) Subsystem() string { return q.subsystem }

// Usage is one line of a Ledger's accounting.
type Usage struct {
	Subsystem string `json:"subsystem"`
	Used      int64  `json:"used"`
	Limit     int64  `json:"limit"`
}

// Ledger holds the quotas of a vcore's subsystems, for status and metrics.
type Ledger struct {
	mu     sync.Mutex
	quotas map[string]*Quota
}

// Add creates the quota of subsystem.
func (l *Ledger) Add(subsystem string, limit int64) (*Quota, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.quotas == nil {
		l.quotas = map[string]*Quota{}
	}
	if _, ok := l.quotas[subsystem]; ok {
		return nil, fmt.Errorf("ramalloc: subsystem %q already has a quota", subsystem)
	}
	q := NewQuota(subsystem, limit)
	l.quotas[subsystem] = q
	return q, nil
}

// Quota returns the quota of subsystem, or nil.
func (l *Ledger) Quota(subsystem string) *Quota {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.quotas[subsystem]
}

// Remove forgets subsystem's quota.
func (l *Ledger) Remove(subsystem string) {
	l.mu.Lock()
	delete(l.quotas, subsystem)
	l.mu.Unlock()
}

// Usage lists every quota, sorted by subsystem.
func (l *Ledger) Usage() []Usage {
	l.mu.Lock()
	qs := make([]*Quota, 0, len(l.quotas))
	for _, q := range l.quotas {
		qs = append(qs, q)
	}
	l.mu.Unlock()
	out := make([]Usage, 0, len(qs))
	for _, q := range qs {
		out = append(out, Usage{Subsystem: q.subsystem, Used: q.Used(), Limit: q.Limit()})
	}
	slices.SortFunc(out, func(a, b Usage) int { return cmp.Compare(a.Subsystem, b.Subsystem) })
	return out
}

// Options of Alloc.
type Options struct {
	// Quota is charged with the (page-rounded) size; nil: no quota.
	Quota *Quota
	// HugePages asks for transparent huge pages (MADV_HUGEPAGE).
	HugePages bool
}

// Region is memory from Alloc.
type Region struct {
	mu    sync.Mutex
	b     []byte
	node  hw.Node
	quota *Quota
}

// Alloc maps size bytes (rounded up to pages) of anonymous memory bound to
// node, charged to opts.Quota. Pages are allocated on first touch, on node
// only. On failure nothing stays mapped or reserved.
func Alloc(node hw.Node, size int, opts Options) (*Region, error) {
	if size <= 0 {
		return nil, fmt.Errorf("ramalloc: allocate %d bytes: size must be positive", size)
	}
	ps := linux.PageSize()
	size = (size + ps - 1) / ps * ps
	if opts.Quota != nil {
		if err := opts.Quota.Reserve(int64(size)); err != nil {
			return nil, err
		}
	}
	fail := func(err error) (*Region, error) {
		if opts.Quota != nil {
			opts.Quota.Release(int64(size))
		}
		return nil, fmt.Errorf("ramalloc: allocate %s on node %d: %w", hw.Bytes(size), node, err)
	}
	b, err := linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_NORESERVE)
	if err != nil {
		return fail(err)
	}
	if err := Bind(b, node); err != nil {
		linux.Munmap(b)
		return fail(err)
	}
	if opts.HugePages {
		if err := linux.Madvise(b, linux.MADV_HUGEPAGE); err != nil {
			linux.Munmap(b)
			return fail(err)
		}
	}
	return &Region{b: b, node: node, quota: opts.Quota}, nil
}

// Bytes is the memory (nil once freed).
func (r *Region) Bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.b
}

// Node is the node the memory is bound to.
func (r *Region) Node() hw.Node { return r.node }

// Free unmaps the memory and returns its quota. A second Free returns an
// error wrapping os.ErrClosed.
func (r *Region) Free() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.b == nil {
		return fmt.Errorf("ramalloc: free: %w", os.ErrClosed)
	}
	n := len(r.b)
	err := linux.Munmap(r.b)
	r.b = nil
	if r.quota != nil {
		r.quota.Release(int64(n))
	}
	if err != nil {
		return fmt.Errorf("ramalloc: free %s: %w", hw.Bytes(n), err)
	}
	return nil
}

// Bind binds a mapping made elsewhere (page-aligned, e.g. by a worker's
// client) to node with MPOL_BIND and MPOL_MF_STRICT: pages not yet touched
// will come from node only; pages already elsewhere make it fail (EIO).
func Bind(b []byte, node hw.Node) error {
	if len(b) == 0 {
		return nil
	}
	addr := uintptr(unsafe.Pointer(&b[0]))
	if err := linux.Mbind(addr, uintptr(len(b)), linux.MPOL_BIND, hw.NewSet(node), linux.MPOL_MF_STRICT); err != nil {
		return fmt.Errorf("ramalloc: bind %#x+%s to node %d: %w", addr, hw.Bytes(len(b)), node, err)
	}
	return nil
}

// placementBatch is the number of pages asked per move_pages call.
const placementBatch = 4096

// Placement counts the pages of [addr, addr+length) of process pid (0: the
// caller) per node; notPresent counts pages not populated (or the shared
// zero page).
func Placement(pid int, addr uintptr, length int) (perNode map[hw.Node]int, notPresent int, err error) {
	ps := uintptr(linux.PageSize())
	start := addr &^ (ps - 1)
	end := addr + uintptr(length)
	perNode = map[hw.Node]int{}
	addrs := make([]uintptr, 0, placementBatch)
	for a := start; a < end; {
		addrs = addrs[:0]
		for ; a < end && len(addrs) < placementBatch; a += ps {
			addrs = append(addrs, a)
		}
		nodes, err := linux.PageNodes(pid, addrs)
		if err != nil {
			return nil, 0, fmt.Errorf("ramalloc: placement of pid %d %#x+%#x: %w", pid, addr, length, err)
		}
		for i, n := range nodes {
			switch {
			case n >= 0:
				perNode[hw.Node(n)]++
			case n == linux.PageNotPresent || n == linux.PageNoFrame:
				notPresent++
			default:
				return nil, 0, fmt.Errorf("ramalloc: placement of pid %d page %#x: errno %d", pid, addrs[i], -n)
			}
		}
	}
	return perNode, notPresent, nil
}

// PlacementOf is Placement of b in the calling process.
func PlacementOf(b []byte) (map[hw.Node]int, int, error) {
	if len(b) == 0 {
		return map[hw.Node]int{}, 0, nil
	}
	return Placement(0, uintptr(unsafe.Pointer(&b[0])), len(b))
}
