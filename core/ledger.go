package core

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/statefile"
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

// Ledger is core's record of leases, persisted atomically after every
// change so a restarted core knows what it granted. Safe for concurrent use.
type Ledger struct {
	path string
	now  func() time.Time

	mu     sync.Mutex
	leases map[string]*Lease // by holder id
}

type ledgerFile struct {
	Version int      `json:"version"`
	Leases  []*Lease `json:"leases"`
}

// OpenLedger loads the ledger at path (a missing file is an empty ledger).
// Leases found there are unconfirmed: no vcore is connected to this core yet.
func OpenLedger(path string, now func() time.Time) (*Ledger, error) {
	if now == nil {
		now = time.Now
	}
	l := &Ledger{path: path, now: now, leases: map[string]*Lease{}}
	var f ledgerFile
	if _, err := statefile.Read(path, &f); err != nil {
		return nil, fmt.Errorf("core: ledger: %w", err)
	}
	for _, le := range f.Leases {
		le.State = StateUnconfirmed
		le.OrphanedAt = now()
		l.leases[le.Holder] = le
	}
	return l, nil
}

func (l *Ledger) saveLocked() error {
	f := ledgerFile{Version: 1, Leases: l.sortedLocked()}
	if err := statefile.Write(l.path, f); err != nil {
		return fmt.Errorf("core: ledger: %w", err)
	}
	return nil
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
// turns the lease live again; reclaimed reports that case.
func (l *Ledger) Grant(c Claim) (le Lease, reclaimed bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.leases[c.Holder]; ok {
		if old.State == StateLive {
			return Lease{}, false, fmt.Errorf("%w: %s already holds node %d (cpus %s) on a live connection (pid %d)",
				ErrConflict, c.Holder, old.Node, old.CPUs, old.HolderPid)
		}
		if old.Node != c.Node || !old.CPUs.Equal(c.CPUs) {
			return Lease{}, false, fmt.Errorf("%w: %s's lease is node %d cpus %s; a restarted vcore must claim the same partition (release it first by stopping cleanly)",
				ErrConflict, c.Holder, old.Node, old.CPUs)
		}
		old.State, old.HolderPid, old.OrphanedAt = StateLive, c.Pid, time.Time{}
		old.Memory, old.Socket = c.Memory, c.Socket
		if err := l.saveLocked(); err != nil {
			return Lease{}, false, err
		}
		return *old, true, nil
	}
	for _, o := range l.leases {
		if o.Node == c.Node && !o.CPUs.Intersect(c.CPUs).IsEmpty() {
			return Lease{}, false, fmt.Errorf("%w: cpus %s of node %d overlap cpus %s held by %s (pid %d, %s)",
				ErrConflict, c.CPUs, c.Node, o.CPUs, o.Holder, o.HolderPid, o.State)
		}
		if o.Node == c.Node && c.CPUs.IsEmpty() && o.CPUs.IsEmpty() {
			return Lease{}, false, fmt.Errorf("%w: memory-only node %d is held by %s (pid %d, %s)",
				ErrConflict, c.Node, o.Holder, o.HolderPid, o.State)
		}
	}
	nle := &Lease{
		Node: c.Node, CPUs: c.CPUs, Mems: hw.NewSet(c.Node), Memory: c.Memory,
		Holder: c.Holder, HolderPid: c.Pid, Socket: c.Socket, Cgroup: c.Cgroup,
		State: StateLive, GrantedAt: l.now(),
	}
	l.leases[c.Holder] = nle
	if err := l.saveLocked(); err != nil {
		delete(l.leases, c.Holder)
		return Lease{}, false, err
	}
	return *nle, false, nil
}

// Orphan marks the holder's lease orphaned (its connection closed).
func (l *Ledger) Orphan(holder string) (Lease, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	le, ok := l.leases[holder]
	if !ok || le.State != StateLive {
		return Lease{}, false
	}
	le.State, le.OrphanedAt = StateOrphaned, l.now()
	_ = l.saveLocked() // state is advisory in the file: a restart makes it unconfirmed anyway
	return *le, true
}

// Release removes the holder's lease (clean stop, or reclaim after grace).
func (l *Ledger) Release(holder string) (Lease, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	le, ok := l.leases[holder]
	if !ok {
		return Lease{}, fmt.Errorf("core: %s holds no lease", holder)
	}
	delete(l.leases, holder)
	if err := l.saveLocked(); err != nil {
		l.leases[holder] = le
		return Lease{}, err
	}
	return *le, nil
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

// Leases returns a copy of every lease, ordered by node.
func (l *Ledger) Leases() []Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []Lease
	for _, le := range l.sortedLocked() {
		out = append(out, *le)
	}
	return out
}
