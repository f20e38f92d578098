package core

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/statefile"
	"github.com/vcored/vcored/policy"
)

// Lease states.
const (
	// StateLive: a connected vcore holds the lease.
	StateLive = "live"
	// StateOrphaned: the holder's connection closed; its subsystems may
	// still run, so the CPUs stay reserved until a vcore re-claims the
	// partition or the orphan grace period ends.
	StateOrphaned = "orphaned"
	// StateUnconfirmed: read from the ledger after a core restart; waiting
	// for its vcore to re-register.
	StateUnconfirmed = "unconfirmed"
)

// ErrConflict is wrapped by a refused claim.
var ErrConflict = errors.New("core: claim conflicts with a lease")

// ErrLedgerWrite is wrapped when a change could not be written to the
// ledger file (read-only or full state directory, ...). The change is not
// made in memory either: memory and file always agree. An orphaning or a
// release that failed this way is kept pending and written by Retry.
var ErrLedgerWrite = errors.New("core: the ledger cannot be written")

// ErrNoLease is wrapped by Release when the holder has no lease.
var ErrNoLease = errors.New("core: no such lease")

// ErrLedgerCorrupt is wrapped by OpenLedger when the ledger file cannot be
// decoded. Core refuses to start rather than forget what it granted.
var ErrLedgerCorrupt = errors.New("core: ledger file is corrupt")

// Lease is one vcore's grant: a node's CPUs (or a subset) and memory.
type Lease struct {
	Node       hw.Node    `json:"node"`
	CPUs       hw.CPUSet  `json:"cpus"`
	Mems       hw.NodeSet `json:"mems"`
	Memory     hw.Bytes   `json:"memory"`
	Holder     string     `json:"holder"` // the vcore's id (its socket path)
	HolderPid  int        `json:"holder_pid"`
	Socket     string     `json:"socket"`
	Cgroup     string     `json:"cgroup"` // relative cgroup path of the partition
	State      string     `json:"state"`
	GrantedAt  time.Time  `json:"granted_at"`
	OrphanedAt time.Time  `json:"orphaned_at,omitzero"`
	// Pending is PendingOrphan or PendingRelease when that change is
	// recorded but not written yet (Leases sets it; never stored).
	Pending string `json:"-"`
}

// Claim is what a vcore asks for.
type Claim struct {
	Node   hw.Node
	CPUs   hw.CPUSet // exact CPUs wanted (core fills the default before)
	Memory hw.Bytes
	Holder string
	Pid    int
	Socket string
	Cgroup string
}

// Pending operations: an orphaning or release recorded while the ledger
// could not be written, applied by the next successful write.
const (
	PendingOrphan  = "orphan"
	PendingRelease = "release"
)

// Ledger is core's record of leases, persisted atomically after every
// change so a restarted core knows what it granted. Safe for concurrent use.
//
// Memory follows the file: a change whose write fails is undone and the
// caller gets an error wrapping ErrLedgerWrite. The two changes core cannot
// refuse — a vcore's connection ended (Orphan) and a partition was emptied
// (Release) — are then kept pending and written by the next successful write
// (Retry, called periodically, or any other change). While a write fails the
// ledger is degraded (Degraded says why and since when).
type Ledger struct {
	path string
	now  func() time.Time

	mu       sync.Mutex
	leases   map[string]*Lease       // by holder id
	moves    map[moveKey]*MoveRecord // subsystems placed away from home (move.go)
	pending  map[string]pendingOp
	degraded *Degraded
}

type pendingOp struct {
	op string    // PendingOrphan or PendingRelease
	at time.Time // when it happened (an orphan's grace counts from then)
}

// Degraded describes a ledger that cannot be written.
type Degraded struct {
	Reason string    // the last write error
	Since  time.Time // the first failed write of this streak
	// Pending lists the changes not yet written, as "orphan HOLDER" or
	// "release HOLDER".
	Pending []string
}

type ledgerFile struct {
	Version int           `json:"version"`
	Leases  []*Lease      `json:"leases"`
	Moves   []*MoveRecord `json:"moves,omitempty"`
}

// LedgerLimits are what every lease read from the ledger must fit: core's
// partition plan and its cgroup parent.
type LedgerLimits struct {
	Plan         policy.Plan
	CgroupParent string
}

// OpenLedger loads the ledger at path (a missing file is an empty ledger).
// Leases found there are unconfirmed: no vcore is connected to this core yet.
//
// A file that cannot be decoded is an error wrapping ErrLedgerCorrupt: core
// does not start, because forgetting its leases would hand out CPUs whose
// subsystems may still run. The operator decides (move the file aside to
// start empty).
//
// With lim, every lease is checked against the plan and the cgroup parent:
// its node must be in the plan, its CPUs within that node's partition and
// disjoint from the leases kept before it, its cgroup strictly below
// lim.CgroupParent. A lease that fails is dropped — core will never act on
// it — and described in the returned list; the file is then rewritten
// without it (the original is kept as path + ".rejected" for the operator).
// If that rewrite fails the ledger starts degraded and Retry writes it.
func OpenLedger(path string, now func() time.Time, lim *LedgerLimits) (*Ledger, []error, error) {
	if now == nil {
		now = time.Now
	}
	l := &Ledger{path: path, now: now, leases: map[string]*Lease{}, moves: map[moveKey]*MoveRecord{}, pending: map[string]pendingOp{}}
	var f ledgerFile
	if found, err := statefile.Read(path, &f); err != nil {
		if found { // read but not decoded
			return nil, nil, fmt.Errorf("%w: %w (core will not start without knowing what it granted; move the file aside to start with no leases)",
				ErrLedgerCorrupt, err)
		}
		return nil, nil, fmt.Errorf("core: ledger: %w", err)
	}
	var dropped []error
	for i, le := range f.Leases {
		if le == nil {
			dropped = append(dropped, fmt.Errorf("%s: lease %d is null", path, i))
			continue
		}
		if err := l.checkLocked(le, lim); err != nil {
			dropped = append(dropped, fmt.Errorf("%s: lease %d (holder %q, node %d, cpus %s, cgroup %q) dropped: %w",
				path, i, le.Holder, le.Node, le.CPUs, le.Cgroup, err))
			continue
		}
		le.State = StateUnconfirmed
		le.OrphanedAt = now()
		if le.Mems.IsEmpty() {
			le.Mems = hw.NewSet(le.Node)
		}
		l.leases[le.Holder] = le
	}
	dropped = append(dropped, l.loadMoves(path, f.Moves, lim)...)
	if len(dropped) > 0 {
		if data, err := os.ReadFile(path); err == nil {
			_ = os.WriteFile(path+".rejected", data, 0o600) // best effort: the log names every dropped lease too
		}
		_ = l.saveLocked() // a failure leaves the ledger degraded; Retry writes it
	}
	return l, dropped, nil
}

// checkLocked checks a lease read from the file against lim and the leases
// kept so far.
func (l *Ledger) checkLocked(le *Lease, lim *LedgerLimits) error {
	if le.Holder == "" {
		return errors.New("no holder")
	}
	if _, dup := l.leases[le.Holder]; dup {
		return fmt.Errorf("a second lease of holder %q", le.Holder)
	}
	if lim == nil {
		return nil
	}
	part, ok := lim.Plan.Partition(le.Node)
	if !ok {
		var nodes hw.NodeSet
		for _, p := range lim.Plan.Partitions {
			nodes = nodes.Union(hw.NewSet(p.Node))
		}
		return fmt.Errorf("node %d is not in the partition plan (nodes %s)", le.Node, nodes)
	}
	if !le.CPUs.IsSubsetOf(part.CPUs) {
		return fmt.Errorf("cpus %s are not all in node %d's partition %s", le.CPUs, le.Node, part.CPUs)
	}
	if le.CPUs.IsEmpty() && !part.MemoryOnly() {
		return fmt.Errorf("no cpus on node %d, which has cpus %s", le.Node, part.CPUs)
	}
	if !le.Mems.IsEmpty() && !le.Mems.Equal(hw.NewSet(le.Node)) {
		return fmt.Errorf("mems %s are not node %d", le.Mems, le.Node)
	}
	if err := CgroupUnder(lim.CgroupParent, le.Cgroup); err != nil {
		return err
	}
	for _, o := range l.leases {
		if o.Node == le.Node && (!o.CPUs.Intersect(le.CPUs).IsEmpty() || (o.CPUs.IsEmpty() && le.CPUs.IsEmpty())) {
			return fmt.Errorf("overlaps the lease of %s (cpus %s)", o.Holder, o.CPUs)
		}
	}
	return nil
}

// ErrOutsideParent is wrapped by CgroupUnder.
var ErrOutsideParent = errors.New("core: cgroup is not below cgroup_parent")

// CgroupUnder checks that the relative cgroup path is strictly below parent
// (not parent itself, no "..", not absolute). Core checks every cgroup a
// lease names with it before it signals, reads or deletes anything there.
func CgroupUnder(parent, path string) error {
	if parent == "" || path == "" || filepath.IsAbs(path) {
		return fmt.Errorf("%w: cgroup %q, parent %q", ErrOutsideParent, path, parent)
	}
	p, par := filepath.Clean(path), filepath.Clean(parent)
	if p != path && p+"/" != path {
		return fmt.Errorf("%w: cgroup %q is not a clean path", ErrOutsideParent, path)
	}
	if !strings.HasPrefix(p, par+"/") || p == par {
		return fmt.Errorf("%w: cgroup %q is not below %q", ErrOutsideParent, path, parent)
	}
	return nil
}

// saveLocked writes the leases in memory. A failure marks the ledger
// degraded; a success clears that.
func (l *Ledger) saveLocked() error {
	f := ledgerFile{Version: 1, Leases: l.sortedLocked(), Moves: l.sortedMovesLocked()}
	if err := statefile.Write(l.path, f); err != nil {
		if l.degraded == nil {
			l.degraded = &Degraded{Since: l.now()}
		}
		l.degraded.Reason = err.Error()
		return fmt.Errorf("%w: %w", ErrLedgerWrite, err)
	}
	l.degraded = nil
	return nil
}

// txLocked applies the pending changes and fn to the leases and writes
// them. If fn or the write fails, leases and pending changes are restored
// as they were and the error returned.
func (l *Ledger) txLocked(fn func() error) error {
	leases := make(map[string]*Lease, len(l.leases))
	for k, le := range l.leases {
		cp := *le
		leases[k] = &cp
	}
	pending := maps.Clone(l.pending)
	moves := l.copyMovesLocked()
	for holder, p := range l.pending {
		le, ok := l.leases[holder]
		if !ok {
			continue
		}
		switch p.op {
		case PendingRelease:
			delete(l.leases, holder)
		case PendingOrphan:
			if le.State == StateLive {
				le.State, le.OrphanedAt = StateOrphaned, p.at
			}
		}
	}
	l.pending = map[string]pendingOp{}
	err := fn()
	if err == nil {
		err = l.saveLocked()
	}
	if err != nil {
		l.leases, l.pending, l.moves = leases, pending, moves
	}
	return err
}

func (l *Ledger) sortedLocked() []*Lease {
	out := make([]*Lease, 0, len(l.leases))
	for _, le := range l.leases {
		out = append(out, le)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Holder < out[j].Holder
	})
	return out
}

// Grant records a claim, or refuses it naming the holder of any lease whose
// CPUs overlap. A claim by the holder of an existing lease (a restarted vcore
// re-claiming its partition) succeeds when it asks for the same CPUs, and
// turns the lease live again; reclaimed reports that case. A lease whose
// orphaning is pending counts as orphaned, one whose release is pending as
// gone. If the ledger cannot be written the error wraps ErrLedgerWrite and
// nothing changed.
func (l *Ledger) Grant(c Claim) (le Lease, reclaimed bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	err = l.txLocked(func() error {
		if old, ok := l.leases[c.Holder]; ok {
			if old.State == StateLive {
				return fmt.Errorf("%w: %s already holds node %d (cpus %s) on a live connection (pid %d)",
					ErrConflict, c.Holder, old.Node, old.CPUs, old.HolderPid)
			}
			if old.Node != c.Node || !old.CPUs.Equal(c.CPUs) {
				return fmt.Errorf("%w: %s's lease is node %d cpus %s; a restarted vcore must claim the same partition (release it first by stopping cleanly)",
					ErrConflict, c.Holder, old.Node, old.CPUs)
			}
			old.State, old.HolderPid, old.OrphanedAt = StateLive, c.Pid, time.Time{}
			old.Memory, old.Socket = c.Memory, c.Socket
			le, reclaimed = *old, true
			return nil
		}
		for _, o := range l.leases {
			if o.Node == c.Node && !o.CPUs.Intersect(c.CPUs).IsEmpty() {
				return fmt.Errorf("%w: cpus %s of node %d overlap cpus %s held by %s (pid %d, %s)",
					ErrConflict, c.CPUs, c.Node, o.CPUs, o.Holder, o.HolderPid, o.State)
			}
			if o.Node == c.Node && c.CPUs.IsEmpty() && o.CPUs.IsEmpty() {
				return fmt.Errorf("%w: memory-only node %d is held by %s (pid %d, %s)",
					ErrConflict, c.Node, o.Holder, o.HolderPid, o.State)
			}
		}
		nle := &Lease{
			Node: c.Node, CPUs: c.CPUs, Mems: hw.NewSet(c.Node), Memory: c.Memory,
			Holder: c.Holder, HolderPid: c.Pid, Socket: c.Socket, Cgroup: c.Cgroup,
			State: StateLive, GrantedAt: l.now(),
		}
		l.leases[c.Holder] = nle
		le = *nle
		return nil
	})
	if err != nil {
		return Lease{}, false, err
	}
	return le, reclaimed, nil
}

// errNothing ends a transaction that has nothing to change.
var errNothing = errors.New("nothing to do")

// Orphan marks the holder's live lease orphaned (its connection closed); ok
// is false when the holder has no live lease. If the ledger cannot be
// written, err wraps ErrLedgerWrite, the lease stays live in memory and the
// orphaning is pending (Retry writes it, with its grace counted from now).
func (l *Ledger) Orphan(holder string) (le Lease, ok bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at := l.now()
	err = l.txLocked(func() error {
		cur, found := l.leases[holder]
		if !found || cur.State != StateLive {
			return errNothing
		}
		cur.State, cur.OrphanedAt = StateOrphaned, at
		le = *cur
		return nil
	})
	switch {
	case err == nil:
		return le, true, nil
	case errors.Is(err, errNothing):
		return Lease{}, false, nil
	}
	if cur, found := l.leases[holder]; found && l.pending[holder].op != PendingRelease {
		if _, already := l.pending[holder]; !already {
			l.pending[holder] = pendingOp{op: PendingOrphan, at: at}
		}
		return *cur, true, err
	}
	return Lease{}, false, err
}

// Release removes the holder's lease (clean stop, or reclaim after grace).
// A holder without a lease gives an error wrapping ErrNoLease. If the ledger
// cannot be written, err wraps ErrLedgerWrite, the lease stays in memory and
// its release is pending (Retry writes it); le is the lease all the same.
func (l *Ledger) Release(holder string) (le Lease, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	err = l.txLocked(func() error {
		cur, ok := l.leases[holder]
		if !ok {
			return fmt.Errorf("%w: %s holds no lease", ErrNoLease, holder)
		}
		le = *cur
		delete(l.leases, holder)
		return nil
	})
	if err != nil && errors.Is(err, ErrLedgerWrite) {
		if cur, ok := l.leases[holder]; ok {
			l.pending[holder] = pendingOp{op: PendingRelease, at: l.now()}
			return *cur, err
		}
	}
	return le, err
}

// Retry writes the pending changes, or rewrites the ledger after a failed
// write; it does nothing when the ledger is healthy. done reports that the
// ledger is healthy afterwards.
func (l *Ledger) Retry() (done bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.degraded == nil && len(l.pending) == 0 {
		return true, nil
	}
	if err := l.txLocked(func() error { return nil }); err != nil {
		return false, err
	}
	return true, nil
}

// Degraded reports whether the ledger could not be written, why, since when,
// and what is still pending.
func (l *Ledger) Degraded() (Degraded, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.degraded == nil && len(l.pending) == 0 {
		return Degraded{}, false
	}
	var d Degraded
	if l.degraded != nil {
		d = *l.degraded
	}
	for _, holder := range slices.Sorted(maps.Keys(l.pending)) {
		d.Pending = append(d.Pending, l.pending[holder].op+" "+holder)
	}
	return d, true
}

// Expired returns the non-live leases whose grace period has passed.
func (l *Ledger) Expired(grace time.Duration) []Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Lease
	for _, le := range l.sortedLocked() {
		if le.State != StateLive && !le.OrphanedAt.IsZero() && l.now().Sub(le.OrphanedAt) >= grace {
			out = append(out, *le)
		}
	}
	return out
}

// Leases returns a copy of every lease, ordered by node. Pending is set on
// a lease whose orphaning or release is not written yet.
func (l *Ledger) Leases() []Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Lease
	for _, le := range l.sortedLocked() {
		cp := *le
		cp.Pending = l.pending[le.Holder].op
		out = append(out, cp)
	}
	return out
}
