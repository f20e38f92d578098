package policy

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/vcored/vcored/internal/hw"
)

// Move modes.
const (
	// MoveLive moves a running subsystem without stopping it (its pages and
	// its cpuset follow it).
	MoveLive = "live"
	// MoveRestart stops the subsystem on the old node and starts it on the
	// new one; only for subsystems marked movable.
	MoveRestart = "restart"
)

// LoadSnapshot is one sample of the load of every partition, as core's
// sampler measured it. Rates are per second over the interval that ended at
// At.
type LoadSnapshot struct {
	At         time.Time
	Partitions []PartitionLoad
}

// PartitionLoad is one node's partition and what runs in it.
type PartitionLoad struct {
	Node hw.Node
	// CPUs and Memory are the partition's (its lease); a partition without
	// CPUs is never a target.
	CPUs   hw.CPUSet
	Memory hw.Bytes
	// MemFree is the node's free memory (nodeN/meminfo MemFree).
	MemFree    hw.Bytes
	Subsystems []SubsystemLoad
}

// SubsystemLoad is one subsystem's measured load and what it needs where it
// goes.
type SubsystemLoad struct {
	// Name identifies the subsystem machine-wide.
	Name string
	// ID identifies it across moves, when its Name changes with the
	// partition it runs in ("" means Name). The history of moves and of
	// failed moves is kept by ID.
	ID string
	// Usage is the CPU time it used per second (1.5 = one and a half CPUs
	// busy), from cpuacct / cpu.stat deltas.
	Usage float64
	// Pressure is the share of time some of its tasks waited for a CPU
	// (PSI "some", 0..1), when the kernel reports it per cgroup; 0 when not.
	Pressure float64
	// FaultRate is the page faults its pagers resolved per second.
	FaultRate float64
	// CPUs is how many CPUs it asks for (0: the whole partition, at least 1).
	CPUs int
	// Memory is what it needs on the target node (its quota or size).
	Memory hw.Bytes
	// Movable: marked movable = true, so it may be restarted elsewhere;
	// otherwise it can only be moved live.
	Movable bool
	// Pinned: it names an explicit CPU list, which belongs to its node; it
	// is never moved.
	Pinned bool
	// ConfiguredNode is the node its vcore file places it on.
	ConfiguredNode hw.Node
	// MovedFrom and MovedAt record its last move (MovedAt zero: never moved).
	MovedFrom hw.Node
	MovedAt   time.Time
}

// Demand is the CPU demand the policy balances: the CPUs it used plus the
// share of time it waited for one. For a single-threaded subsystem this is
// what it would have used with a CPU of its own; for a multi-threaded one it
// is a lower bound.
func (s SubsystemLoad) Demand() float64 { return s.Usage + s.Pressure }

// RebalanceConfig holds the policy's knobs. The zero value is not usable;
// start from DefaultRebalanceConfig.
type RebalanceConfig struct {
	// Threshold: the imbalance (hottest minus coolest partition load, a
	// load being demand per CPU) that counts as unbalanced.
	Threshold float64
	// Samples: how many consecutive samples must be unbalanced before a
	// move is advised.
	Samples int
	// MinInterval: the least time between the start of two moves.
	MinInterval time.Duration
	// FlapWindow: a subsystem moved less than this long ago is not moved
	// again (so it never goes back to the node it left), and one whose
	// move failed is not tried again for as long.
	FlapWindow time.Duration
	// MinGain: a move must cut the imbalance by at least this much (so a
	// move that only swaps which node is hot is not made).
	MinGain float64
}

// DefaultRebalanceConfig: an imbalance of a quarter of a CPU per CPU for
// three samples, a minute between moves, ten minutes (FlapWindowFactor
// times the interval) before a moved subsystem may move again.
func DefaultRebalanceConfig() RebalanceConfig {
	return RebalanceConfig{Threshold: 0.25, Samples: 3, MinInterval: time.Minute, FlapWindow: FlapWindowFactor * time.Minute, MinGain: 0.1}
}

// FlapWindowFactor is the flap window in min intervals, when only the
// interval is configured.
const FlapWindowFactor = 10

// Check reports a config the policy cannot work with.
func (c RebalanceConfig) Check() error {
	switch {
	case !(c.Threshold > 0) || math.IsInf(c.Threshold, 0):
		return fmt.Errorf("%w: rebalance threshold %v must be a positive number", ErrBadRequest, c.Threshold)
	case c.Samples < 1:
		return fmt.Errorf("%w: rebalance samples %d must be at least 1", ErrBadRequest, c.Samples)
	case c.MinInterval <= 0:
		return fmt.Errorf("%w: rebalance min interval %s must be positive", ErrBadRequest, c.MinInterval)
	case c.FlapWindow < c.MinInterval:
		return fmt.Errorf("%w: rebalance flap window %s must be at least the min interval %s", ErrBadRequest, c.FlapWindow, c.MinInterval)
	case c.MinGain < 0 || math.IsNaN(c.MinGain) || math.IsInf(c.MinGain, 0):
		return fmt.Errorf("%w: rebalance min gain %v must be a number ≥ 0", ErrBadRequest, c.MinGain)
	}
	return nil
}

// Advice is one move the policy would make.
type Advice struct {
	Subsystem string `json:"subsystem"`
	// ID is the subsystem's SubsystemLoad.ID ("" when it has none).
	ID   string  `json:"id,omitempty"`
	From hw.Node `json:"from"`
	To   hw.Node `json:"to"`
	Mode string  `json:"mode"` // MoveLive or MoveRestart
	// Before and After are the imbalance without and with the move.
	Before float64 `json:"imbalance_before"`
	After  float64 `json:"imbalance_after"`
	Reason string  `json:"reason"`
}

// MoveRecord is a subsystem's last move as the policy remembers it.
type MoveRecord struct {
	From, To hw.Node
	At       time.Time
}

// RebalanceState is what the policy carries from one sample to the next.
// The zero value is the state of a fresh start. Values are never changed in
// place: every function returns a new state.
type RebalanceState struct {
	// LastSample is the time of the last snapshot counted.
	LastSample time.Time
	// Streak counts the consecutive samples whose imbalance exceeded the
	// threshold.
	Streak int
	// LastMove is when the last move started, or when it ended once it
	// ended (Done, Fail).
	LastMove time.Time
	// InFlight is the move started and not finished yet (nil: none).
	InFlight *Advice
	// History is each moved subsystem's last move, by ID.
	History map[string]MoveRecord
	// Failures is each subsystem's last failed move, by ID.
	Failures map[string]MoveFailure

	// prev is the History entry the move in flight replaced (had: there
	// was one), restored when it fails.
	prev    MoveRecord
	hadPrev bool
}

// Start records that move a started at time at. It panics if a move is
// already in flight: the caller asked Rebalance, which never advises one then.
func (s RebalanceState) Start(a Advice, at time.Time) RebalanceState {
	if s.InFlight != nil {
		panic(fmt.Sprintf("policy: move of %s started while %s is in flight", a.Subsystem, s.InFlight.Subsystem))
	}
	a2 := a
	s.InFlight = &a2
	s.LastMove = at
	s.History = maps.Clone(s.History)
	if s.History == nil {
		s.History = map[string]MoveRecord{}
	}
	s.prev, s.hadPrev = s.History[a.key()]
	s.History[a.key()] = MoveRecord{From: a.From, To: a.To, At: at}
	return s
}

// Finish records that the move in flight ended, without saying when or how
// (the history keeps it as made). The imbalance streak starts over: the
// loads have changed. Done and Fail say more.
func (s RebalanceState) Finish() RebalanceState {
	s.InFlight = nil
	s.Streak = 0
	s.prev, s.hadPrev = MoveRecord{}, false
	return s
}

// Decision is Rebalance's answer: at most one move, or why none.
type Decision struct {
	Imbalance float64  `json:"imbalance"`
	Advice    []Advice `json:"advice"`
	// Waiting says why no move is advised ("" when one is).
	Waiting string `json:"waiting,omitempty"`
}

// partLoad is a partition's demand and its load (demand per CPU).
type partLoad struct {
	p      *PartitionLoad
	demand float64
	cpus   int
}

func (l partLoad) load(delta float64) float64 { return (l.demand + delta) / float64(l.cpus) }

// Rebalance decides whether to move a subsystem, from one load snapshot and
// the state the previous call returned. It is pure: no clock (time is
// snap.At), no I/O, and the same inputs give the same answer.
//
// The imbalance is the load of the hottest partition minus that of the
// coolest, the load of a partition being the Demand of its subsystems
// divided by its CPUs (partitions without CPUs are ignored). A move is
// advised only when
//
//   - the imbalance exceeded cfg.Threshold for cfg.Samples consecutive
//     samples (hysteresis), and
//   - no move is in flight, and the last one (the policy's, or any
//     subsystem's MovedAt in the snapshot) ended at least cfg.MinInterval
//     ago, and
//   - some subsystem of the hottest partition (not pinned, not moved less
//     than cfg.FlapWindow ago, no move of it failed less than
//     cfg.FlapWindow ago) fits in another
//     partition — the target has at least the CPUs it asks for, its
//     partition memory left and the node's free memory hold its Memory —
//     and moving it cuts the imbalance by at least cfg.MinGain.
//
// Among such moves the one leaving the smallest imbalance wins; ties go to
// the smaller memory, then the lower fault rate (cheaper to move), then a
// move back to the subsystem's configured node, then the name and target
// node. A movable subsystem moves by restart, any other one live.
func Rebalance(cfg RebalanceConfig, snap LoadSnapshot, prev RebalanceState) (Decision, RebalanceState) {
	st := prev
	var loads []partLoad
	for i := range snap.Partitions {
		p := &snap.Partitions[i]
		if p.CPUs.IsEmpty() {
			continue
		}
		l := partLoad{p: p, cpus: p.CPUs.Len()}
		for _, s := range p.Subsystems {
			l.demand += s.Demand()
		}
		loads = append(loads, l)
	}
	// Hottest first; ties by node id so the order is deterministic.
	slices.SortStableFunc(loads, func(a, b partLoad) int {
		if c := cmp.Compare(b.load(0), a.load(0)); c != 0 {
			return c
		}
		return cmp.Compare(a.p.Node, b.p.Node)
	})
	var d Decision
	if len(loads) > 0 {
		d.Imbalance = spread(loads, -1, -1, 0)
	}
	if snap.At.After(st.LastSample) {
		st.LastSample = snap.At
		if d.Imbalance > cfg.Threshold {
			st.Streak++
		} else {
			st.Streak = 0
		}
	}
	switch {
	case len(loads) < 2:
		d.Waiting = "fewer than two partitions with CPUs: nowhere to move"
		return d, st
	case d.Imbalance <= cfg.Threshold:
		d.Waiting = fmt.Sprintf("balanced: imbalance %.2f ≤ threshold %.2f", d.Imbalance, cfg.Threshold)
		return d, st
	case st.Streak < cfg.Samples:
		d.Waiting = fmt.Sprintf("imbalance %.2f > %.2f for %d of %d samples", d.Imbalance, cfg.Threshold, st.Streak, cfg.Samples)
		return d, st
	case st.InFlight != nil:
		d.Waiting = fmt.Sprintf("the move of %s from node %d to node %d is in flight", st.InFlight.Subsystem, st.InFlight.From, st.InFlight.To)
		return d, st
	}
	if last := lastMove(st, snap); !last.IsZero() && snap.At.Sub(last) < cfg.MinInterval {
		d.Waiting = fmt.Sprintf("last move %s ago, min interval %s", snap.At.Sub(last).Round(time.Second), cfg.MinInterval)
		return d, st
	}

	hot := loads[0]
	type cand struct {
		s     *SubsystemLoad
		to    int // index in loads
		after float64
	}
	var best *cand
	better := func(c cand) bool {
		if best == nil {
			return true
		}
		if c.after != best.after {
			return c.after < best.after
		}
		if c.s.Memory != best.s.Memory {
			return c.s.Memory < best.s.Memory
		}
		if c.s.FaultRate != best.s.FaultRate {
			return c.s.FaultRate < best.s.FaultRate
		}
		cHome := loads[c.to].p.Node == c.s.ConfiguredNode
		bHome := loads[best.to].p.Node == best.s.ConfiguredNode
		if cHome != bHome {
			return cHome
		}
		if c.s.Name != best.s.Name {
			return c.s.Name < best.s.Name
		}
		return loads[c.to].p.Node < loads[best.to].p.Node
	}
	var refused []string
	for i := range hot.p.Subsystems {
		s := &hot.p.Subsystems[i]
		if s.Pinned || s.Demand() <= 0 {
			continue
		}
		if why := settling(s, snap.At, cfg.FlapWindow, st); why != "" {
			refused = append(refused, fmt.Sprintf("%s: %s", s.Name, why))
			continue
		}
		for j := 1; j < len(loads); j++ {
			to := loads[j]
			if why := fits(s, to.p); why != "" {
				refused = append(refused, fmt.Sprintf("%s to node %d: %s", s.Name, to.p.Node, why))
				continue
			}
			after := spread(loads, 0, j, s.Demand())
			if d.Imbalance-after < cfg.MinGain {
				continue
			}
			if c := (cand{s, j, after}); better(c) {
				best = &c
			}
		}
	}
	if best == nil {
		d.Waiting = fmt.Sprintf("imbalance %.2f but no move of node %d's subsystems cuts it by %.2f", d.Imbalance, hot.p.Node, cfg.MinGain)
		if len(refused) > 0 {
			d.Waiting += " (" + strings.Join(refused, "; ") + ")"
		}
		return d, st
	}
	to := loads[best.to]
	mode := MoveLive
	if best.s.Movable {
		mode = MoveRestart
	}
	d.Advice = []Advice{{
		Subsystem: best.s.Name, ID: best.s.ID, From: hot.p.Node, To: to.p.Node, Mode: mode,
		Before: d.Imbalance, After: best.after,
		Reason: fmt.Sprintf("node %d load %.2f (demand %.2f on %d CPUs) vs node %d load %.2f (demand %.2f on %d CPUs), imbalance %.2f > %.2f for %d samples; "+
			"moving %s (usage %.2f, pressure %.2f, %.0f faults/s, %s) leaves %.2f vs %.2f, imbalance %.2f",
			hot.p.Node, hot.load(0), hot.demand, hot.cpus, to.p.Node, to.load(0), to.demand, to.cpus, d.Imbalance, cfg.Threshold, st.Streak,
			best.s.Name, best.s.Usage, best.s.Pressure, best.s.FaultRate, best.s.Memory.Human(),
			hot.load(-best.s.Demand()), to.load(best.s.Demand()), best.after),
	}}
	return d, st
}

// spread is the largest minus the smallest load, with demand delta moved
// from loads[from] to loads[to] (from < 0: no move).
func spread(loads []partLoad, from, to int, delta float64) float64 {
	lo, hi := math.Inf(1), math.Inf(-1)
	for i, l := range loads {
		v := l.load(0)
		switch i {
		case from:
			v = l.load(-delta)
		case to:
			v = l.load(delta)
		}
		lo, hi = min(lo, v), max(hi, v)
	}
	return hi - lo
}

// fits says why s cannot go to partition p ("" when it can).
func fits(s *SubsystemLoad, p *PartitionLoad) string {
	if want := max(s.CPUs, 1); p.CPUs.Len() < want {
		return fmt.Sprintf("needs %d CPUs, the partition has %d", want, p.CPUs.Len())
	}
	var used hw.Bytes
	for _, o := range p.Subsystems {
		used += o.Memory
	}
	if used > p.Memory || s.Memory > p.Memory-used {
		return fmt.Sprintf("needs %s, the partition has %s of %s left", s.Memory.Human(), (p.Memory - min(used, p.Memory)).Human(), p.Memory.Human())
	}
	if s.Memory > p.MemFree {
		return fmt.Sprintf("needs %s, the node has %s free", s.Memory.Human(), p.MemFree.Human())
	}
	return ""
}
