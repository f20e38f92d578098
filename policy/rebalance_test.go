package policy

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy/policytest"
	"github.com/vcored/vcored/topology"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// loadParts builds the partitions of machine m (CPU 0 reserved, 512 MiB per
// node kept) with the node's MemFree, and places subs on them by node.
func loadParts(t *testing.T, m *topology.Machine, subs map[hw.Node][]SubsystemLoad) []PartitionLoad {
	t.Helper()
	plan, err := MakePlan(m, cpus("0"), 512*hw.MiB)
	if err != nil {
		t.Fatal(err)
	}
	var out []PartitionLoad
	for _, p := range plan.Partitions {
		n, _ := m.NodeByID(p.Node)
		out = append(out, PartitionLoad{Node: p.Node, CPUs: p.CPUs, Memory: p.Memory, MemFree: n.MemFree, Subsystems: subs[p.Node]})
	}
	return out
}

func sub(name string, node hw.Node, usage float64) SubsystemLoad {
	return SubsystemLoad{Name: name, Usage: usage, CPUs: 1, Memory: 256 * hw.MiB, ConfiguredNode: node}
}

func TestRebalance(t *testing.T) {
	cfg := DefaultRebalanceConfig() // threshold 0.25, 3 samples, 1m interval, 10m flap window, gain 0.1
	two, epyc := policytest.TwoSocketSMT2(), policytest.EPYC8Node()
	// ripe: the imbalance was seen cfg.Samples-1 times before this sample.
	ripe := RebalanceState{LastSample: t0.Add(-time.Second), Streak: cfg.Samples - 1}
	with := func(s SubsystemLoad, f func(*SubsystemLoad)) SubsystemLoad { f(&s); return s }
	// Node 0 of TwoSocketSMT2 has 7 CPUs (0 reserved), node 1 has 8.
	hot0 := map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 4), sub("b", 0, 2), sub("c", 0, 1)}, 1: {sub("d", 1, 0.5)}}
	type want struct {
		sub      string
		from, to hw.Node
		mode     string
		waiting  string // substring of Decision.Waiting when no advice
	}
	tests := []struct {
		name  string
		m     *topology.Machine
		subs  map[hw.Node][]SubsystemLoad
		edit  func([]PartitionLoad)
		state RebalanceState
		want  want
	}{
		{name: "dev machine: one partition, nowhere to move", m: policytest.SingleNode2CPU(),
			subs: map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 1)}}, state: ripe, want: want{waiting: "nowhere to move"}},
		{name: "balanced", m: two, subs: map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 3)}, 1: {sub("b", 1, 3.5)}},
			state: ripe, want: want{waiting: "balanced"}},
		{name: "unbalanced, not for long enough", m: two, subs: hot0,
			state: RebalanceState{LastSample: t0.Add(-time.Second), Streak: cfg.Samples - 2}, want: want{waiting: "for 2 of 3 samples"}},
		{name: "the move that cuts the imbalance most", m: two, subs: hot0, state: ripe,
			// loads 7/7=1.0 vs 0.5/8: moving a (4) gives 3/7 vs 4.5/8 → 0.13; b (2) gives 5/7 vs 2.5/8 → 0.40; a wins.
			want: want{sub: "a", from: 0, to: 1, mode: MoveLive}},
		{name: "movable moves by restart", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 4), func(s *SubsystemLoad) { s.Movable = true }), sub("b", 0, 3)}, 1: {}},
			want: want{sub: "a", from: 0, to: 1, mode: MoveRestart}},
		{name: "pressure counts as demand", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 1), func(s *SubsystemLoad) { s.Pressure = 0.9 }), sub("b", 0, 1.5)}, 1: {}},
			// demands a 1.9, b 1.5; loads 3.4/7 vs 0: moving a → 1.5/7 vs 1.9/8 = 0.02; b → 1.9/7 vs 1.5/8 = 0.08.
			want: want{sub: "a", from: 0, to: 1, mode: MoveLive}},
		{name: "pinned subsystems stay", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 4), func(s *SubsystemLoad) { s.Pinned = true }), sub("b", 0, 1)}, 1: {}},
			want: want{sub: "b", from: 0, to: 1, mode: MoveLive}},
		{name: "a move that only swaps the hot node is not made", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 5)}, 1: {}},
			// 5/7 vs 0 → 0 vs 5/8: 0.71 → 0.63, less than the 0.1 gain.
			want: want{waiting: "no move of node 0's subsystems cuts it"}},
		{name: "target lacks CPUs for it", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 3), func(s *SubsystemLoad) { s.CPUs = 9 })}, 1: {}},
			want: want{waiting: "needs 9 CPUs, the partition has 8"}},
		{name: "target partition lacks memory for it", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 3), func(s *SubsystemLoad) { s.Memory = 10 * hw.GiB })},
				1: {with(sub("b", 1, 0), func(s *SubsystemLoad) { s.Memory = 6 * hw.GiB })}},
			want: want{waiting: "needs 10GiB, the partition has 9.5GiB of 15.5GiB left"}},
		{name: "target node lacks free memory for it", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 3), func(s *SubsystemLoad) { s.Memory = 9 * hw.GiB })}, 1: {}},
			want: want{waiting: "needs 9GiB, the node has 8GiB free"}},
		{name: "a move is in flight", m: two, subs: hot0,
			state: RebalanceState{LastSample: t0.Add(-time.Second), Streak: 5, InFlight: &Advice{Subsystem: "x", From: 1, To: 0}, LastMove: t0.Add(-time.Hour)},
			want:  want{waiting: "the move of x from node 1 to node 0 is in flight"}},
		{name: "min interval since the last move", m: two, subs: hot0,
			state: RebalanceState{LastSample: t0.Add(-time.Second), Streak: 5, LastMove: t0.Add(-30 * time.Second)},
			want:  want{waiting: "last move 30s ago, min interval 1m0s"}},
		{name: "after the min interval", m: two, subs: hot0,
			state: RebalanceState{LastSample: t0.Add(-time.Second), Streak: 5, LastMove: t0.Add(-time.Minute)},
			want:  want{sub: "a", from: 0, to: 1, mode: MoveLive}},
		{name: "no flapping back to the node it left (history)", m: two, subs: hot0,
			state: RebalanceState{LastSample: t0.Add(-time.Second), Streak: 5, LastMove: t0.Add(-2 * time.Minute),
				History: map[string]MoveRecord{"a": {From: 1, To: 0, At: t0.Add(-2 * time.Minute)}}},
			// a may not return to node 1; b is the next best (0.40 ≥ gain).
			want: want{sub: "b", from: 0, to: 1, mode: MoveLive}},
		{name: "no flapping back to the node it left (snapshot record)", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 4), func(s *SubsystemLoad) { s.MovedFrom, s.MovedAt = 1, t0.Add(-5*time.Minute) }), sub("b", 0, 1)}, 1: {}},
			want: want{sub: "b", from: 0, to: 1, mode: MoveLive}},
		{name: "flap window over", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 4), func(s *SubsystemLoad) { s.MovedFrom, s.MovedAt = 1, t0.Add(-10*time.Minute) }), sub("b", 0, 1)}, 1: {}},
			want: want{sub: "a", from: 0, to: 1, mode: MoveLive}},
		{name: "tie: smaller memory first", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {with(sub("a", 0, 2), func(s *SubsystemLoad) { s.Memory = hw.GiB }), sub("b", 0, 2)}, 1: {}},
			want: want{sub: "b", from: 0, to: 1, mode: MoveLive}},
		{name: "tie: fewer faults first", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 2), with(sub("b", 0, 2), func(s *SubsystemLoad) { s.FaultRate = 1000 })}, 1: {}},
			want: want{sub: "a", from: 0, to: 1, mode: MoveLive}},
		{name: "tie: back home first", m: two, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 2), sub("b", 1, 2)}, 1: {}},
			want: want{sub: "b", from: 0, to: 1, mode: MoveLive}},
		{name: "EPYC: hottest node to the coolest", m: epyc, state: ripe,
			subs: map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 2)}, 1: {sub("b", 1, 2)}, 2: {sub("c", 2, 2)},
				3: {sub("d", 3, 4), sub("e", 3, 3)}, 4: {sub("f", 4, 2)}, 5: {sub("g", 5, 1)}, 6: {sub("h", 6, 2)}, 7: {sub("i", 7, 2)}},
			// node 3: 7/8; node 5: 1/8; others 2/8. Moving e (3) to 5: 4/8 and 4/8 → spread 0.25; d to 5: 3/8, 5/8 → 0.375.
			want: want{sub: "e", from: 3, to: 5, mode: MoveLive}},
		{name: "memory-only partitions are no target", m: policytest.WithCPULessNode(policytest.TwoSocketSMT2(), 64*hw.GiB), subs: hot0,
			state: ripe, want: want{sub: "a", from: 0, to: 1, mode: MoveLive}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parts := loadParts(t, tt.m, tt.subs)
			if tt.edit != nil {
				tt.edit(parts)
			}
			snap := LoadSnapshot{At: t0, Partitions: parts}
			d, st := Rebalance(cfg, snap, tt.state)
			d2, st2 := Rebalance(cfg, snap, tt.state)
			if !reflect.DeepEqual(d, d2) || !reflect.DeepEqual(st, st2) {
				t.Errorf("not deterministic: %+v / %+v", d, d2)
			}
			if tt.want.sub == "" {
				if len(d.Advice) != 0 || !strings.Contains(d.Waiting, tt.want.waiting) {
					t.Fatalf("got advice %+v waiting %q, want none and waiting containing %q", d.Advice, d.Waiting, tt.want.waiting)
				}
				return
			}
			if len(d.Advice) != 1 {
				t.Fatalf("got %d advice %+v (waiting %q), want %s", len(d.Advice), d.Advice, d.Waiting, tt.want.sub)
			}
			a := d.Advice[0]
			if a.Subsystem != tt.want.sub || a.From != tt.want.from || a.To != tt.want.to || a.Mode != tt.want.mode {
				t.Errorf("advice %s %d→%d %s, want %s %d→%d %s (%s)", a.Subsystem, a.From, a.To, a.Mode,
					tt.want.sub, tt.want.from, tt.want.to, tt.want.mode, a.Reason)
			}
			if !(a.After < a.Before) || a.Before != d.Imbalance || !strings.Contains(a.Reason, a.Subsystem) || d.Waiting != "" {
				t.Errorf("advice %+v of decision %+v does not hang together", a, d)
			}
		})
	}
}

func TestRebalanceHysteresis(t *testing.T) {
	cfg := DefaultRebalanceConfig()
	two := policytest.TwoSocketSMT2()
	hot := loadParts(t, two, map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 4), sub("b", 0, 2)}, 1: {}})
	calm := loadParts(t, two, map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 1)}, 1: {sub("b", 1, 1)}})
	var st RebalanceState
	step := func(i int, parts []PartitionLoad) Decision {
		var d Decision
		d, st = Rebalance(cfg, LoadSnapshot{At: t0.Add(time.Duration(i) * 10 * time.Second), Partitions: parts}, st)
		return d
	}
	// Two hot samples, a calm one resets the streak, then three hot ones.
	seq := []struct {
		parts  []PartitionLoad
		advice bool
	}{{hot, false}, {hot, false}, {calm, false}, {hot, false}, {hot, false}, {hot, true}, {hot, true}}
	for i, s := range seq {
		if d := step(i, s.parts); (len(d.Advice) > 0) != s.advice {
			t.Fatalf("sample %d: advice %+v (waiting %q), want advice %t", i, d.Advice, d.Waiting, s.advice)
		}
	}
	// The same snapshot again (no newer time) does not count twice.
	before := st.Streak
	_, st = Rebalance(cfg, LoadSnapshot{At: t0.Add(6 * 10 * time.Second), Partitions: hot}, st)
	if st.Streak != before {
		t.Errorf("a repeated sample changed the streak %d → %d", before, st.Streak)
	}
	// Start it: nothing more while in flight, then the streak starts over.
	d, _ := Rebalance(cfg, LoadSnapshot{At: t0.Add(70 * time.Second), Partitions: hot}, st)
	st = st.Start(d.Advice[0], t0.Add(70*time.Second))
	if d2 := step(8, hot); len(d2.Advice) != 0 || !strings.Contains(d2.Waiting, "in flight") {
		t.Fatalf("advice %+v while a move is in flight (waiting %q)", d2.Advice, d2.Waiting)
	}
	st = st.Finish()
	if st.Streak != 0 || st.InFlight != nil || st.History["a"].To != 1 {
		t.Fatalf("state after Finish: %+v", st)
	}
}

func TestRebalanceConfigCheck(t *testing.T) {
	if err := DefaultRebalanceConfig().Check(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*RebalanceConfig){
		func(c *RebalanceConfig) { c.Threshold = 0 },
		func(c *RebalanceConfig) { c.Samples = 0 },
		func(c *RebalanceConfig) { c.MinInterval = 0 },
		func(c *RebalanceConfig) { c.FlapWindow = c.MinInterval - 1 },
		func(c *RebalanceConfig) { c.MinGain = -1 },
	}
	for i, f := range bad {
		c := DefaultRebalanceConfig()
		f(&c)
		if err := c.Check(); err == nil {
			t.Errorf("config %d %+v accepted", i, c)
		}
	}
}

// TestRebalanceProperties runs the policy against a simulated machine whose
// subsystems' loads drift at random, carrying out each advised move after a
// few samples, and checks at every step that advice never breaks capacity,
// never comes while a move is in flight, moves are at least MinInterval
// apart, no subsystem returns to a node it left within FlapWindow, and every
// move cuts the imbalance by at least MinGain.
func TestRebalanceProperties(t *testing.T) {
	cfg := DefaultRebalanceConfig()
	cfg.Samples, cfg.MinInterval, cfg.FlapWindow = 2, 30*time.Second, 3*time.Minute
	machines := []*topology.Machine{policytest.TwoSocketSMT2(), policytest.EPYC8Node(),
		policytest.WithCPULessNode(policytest.TwoSocketSMT2(), 8*hw.GiB)}
	moves := 0
	for seed := uint64(0); seed < 60; seed++ {
		r := rand.New(rand.NewPCG(seed, 42))
		m := machines[int(seed)%len(machines)]
		parts := loadParts(t, m, nil)
		var cpuParts []int
		for i, p := range parts {
			if !p.CPUs.IsEmpty() {
				cpuParts = append(cpuParts, i)
			}
		}
		for i := range 3 + r.IntN(8) {
			p := cpuParts[r.IntN(len(cpuParts))]
			s := sub(string(rune('a'+i)), parts[p].Node, 0)
			s.CPUs = r.IntN(10)
			s.Memory = hw.Bytes(r.IntN(8)) * hw.GiB
			s.Movable = r.IntN(2) == 0
			s.Pinned = r.IntN(8) == 0
			parts[p].Subsystems = append(parts[p].Subsystems, s)
		}
		var st RebalanceState
		var last *MoveRecord
		left := map[string]MoveRecord{}
		finishAt := -1
		for step := range 400 {
			now := t0.Add(time.Duration(step) * 5 * time.Second)
			for i := range parts {
				for j := range parts[i].Subsystems {
					s := &parts[i].Subsystems[j]
					s.Usage = max(0, s.Usage+r.Float64()*2-1)
					s.Pressure = r.Float64() * 0.3
					s.FaultRate = float64(r.IntN(1000))
				}
				parts[i].MemFree = hw.Bytes(r.IntN(16)) * hw.GiB
			}
			snap := LoadSnapshot{At: now, Partitions: parts}
			inFlight := st.InFlight != nil
			d, next := Rebalance(cfg, snap, st)
			if len(d.Advice) > 1 {
				t.Fatalf("seed %d step %d: %d moves advised at once", seed, step, len(d.Advice))
			}
			if len(d.Advice) == 1 {
				a := d.Advice[0]
				if inFlight {
					t.Fatalf("seed %d step %d: advice %+v while %+v is in flight", seed, step, a, st.InFlight)
				}
				if last != nil && now.Sub(last.At) < cfg.MinInterval {
					t.Fatalf("seed %d step %d: move %s %s after the last", seed, step, a.Subsystem, now.Sub(last.At))
				}
				if rec, ok := left[a.Subsystem]; ok && rec.From == a.To && now.Sub(rec.At) < cfg.FlapWindow {
					t.Fatalf("seed %d step %d: %s flaps %d→%d→%d within %s", seed, step, a.Subsystem, rec.From, rec.To, a.To, now.Sub(rec.At))
				}
				if a.Before-a.After < cfg.MinGain {
					t.Fatalf("seed %d step %d: move %+v gains less than %v", seed, step, a, cfg.MinGain)
				}
				src, dst := partIndex(parts, a.From), partIndex(parts, a.To)
				si := -1
				for j, s := range parts[src].Subsystems {
					if s.Name == a.Subsystem {
						si = j
					}
				}
				if si < 0 {
					t.Fatalf("seed %d step %d: advice %+v names a subsystem not on node %d", seed, step, a, a.From)
				}
				s := parts[src].Subsystems[si]
				var used hw.Bytes
				for _, o := range parts[dst].Subsystems {
					used += o.Memory
				}
				if s.Pinned || parts[dst].CPUs.Len() < max(s.CPUs, 1) || used+s.Memory > parts[dst].Memory || s.Memory > parts[dst].MemFree {
					t.Fatalf("seed %d step %d: advice %+v breaks capacity: subsystem %+v, target %+v (used %s)", seed, step, a, s, parts[dst], used)
				}
				if (a.Mode == MoveRestart) != s.Movable {
					t.Fatalf("seed %d step %d: mode %s for movable=%t", seed, step, a.Mode, s.Movable)
				}
				// Carry it out: the move is in flight for 1-16 samples (up to 80 s, longer than MinInterval).
				next = next.Start(a, now)
				last = &MoveRecord{From: a.From, To: a.To, At: now}
				left[a.Subsystem] = *last
				s.MovedFrom, s.MovedAt = a.From, now
				parts[src].Subsystems = append(parts[src].Subsystems[:si:si], parts[src].Subsystems[si+1:]...)
				parts[dst].Subsystems = append(parts[dst].Subsystems, s)
				finishAt = step + 1 + r.IntN(16)
				moves++
			}
			if step == finishAt {
				next = next.Finish()
			}
			st = next
		}
	}
	if moves < 50 {
		t.Fatalf("only %d moves in all runs: the property test does not exercise moves", moves)
	}
	t.Logf("%d moves checked", moves)
}

func partIndex(parts []PartitionLoad, n hw.Node) int {
	for i, p := range parts {
		if p.Node == n {
			return i
		}
	}
	panic("no partition for node")
}
