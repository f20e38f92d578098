package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy/policytest"
)

// autoSim drives the policy the way core does with rebalance = "auto": a
// sample every step; an advised move is started, carried out on the
// fixture (the subsystem is renamed "<node>/<id>" in its new partition, its
// ID kept) and finished after inFlight samples.
type autoSim struct {
	t        *testing.T
	cfg      RebalanceConfig
	parts    []PartitionLoad
	st       RebalanceState
	now      time.Time
	step     time.Duration
	inFlight int  // samples a move takes
	fail     bool // moves fail instead
	left     int  // samples until the move in flight ends
	moves    []MoveRecord
	moved    []string // IDs, in move order
	last     Decision
}

func newAutoSim(t *testing.T, subs map[hw.Node][]SubsystemLoad) *autoSim {
	cfg := DefaultRebalanceConfig()
	parts := loadParts(t, policytest.TwoSocketSMT2(), subs)
	for i := range parts {
		for j := range parts[i].Subsystems {
			s := &parts[i].Subsystems[j]
			s.ID, s.Name = s.Name, fmt.Sprintf("node%d/%s", parts[i].Node, s.Name)
		}
	}
	return &autoSim{t: t, cfg: cfg, parts: parts, now: t0, step: 10 * time.Second, inFlight: 1}
}

// sub finds the subsystem of ID id.
func (s *autoSim) sub(id string) (*SubsystemLoad, hw.Node) {
	for i := range s.parts {
		for j := range s.parts[i].Subsystems {
			if s.parts[i].Subsystems[j].ID == id {
				return &s.parts[i].Subsystems[j], s.parts[i].Node
			}
		}
	}
	s.t.Fatalf("no subsystem %s", id)
	return nil, 0
}

// run takes n samples.
func (s *autoSim) run(n int) {
	for range n {
		s.now = s.now.Add(s.step)
		if s.st.InFlight != nil {
			if s.left--; s.left <= 0 {
				if s.fail {
					s.st = s.st.Fail(s.now, "the fake mover failed")
				} else {
					s.carryOut(*s.st.InFlight)
					s.st = s.st.Done(s.now)
				}
			}
		}
		inFlight := s.st.InFlight != nil
		d, next := Rebalance(s.cfg, LoadSnapshot{At: s.now, Partitions: s.parts}, s.st)
		s.last = d
		if len(d.Advice) > 0 {
			if inFlight {
				s.t.Fatalf("%v: advice %+v while %+v is in flight", s.now, d.Advice, s.st.InFlight)
			}
			a := d.Advice[0]
			next = next.Start(a, s.now)
			s.moves = append(s.moves, MoveRecord{From: a.From, To: a.To, At: s.now})
			s.moved = append(s.moved, a.ID)
			s.left = s.inFlight
		}
		s.st = next
	}
}

func (s *autoSim) carryOut(a Advice) {
	sub, from := s.sub(a.ID)
	if from != a.From {
		s.t.Fatalf("move %+v of a subsystem on node %d", a, from)
	}
	moved := *sub
	moved.Name = fmt.Sprintf("node%d/%s", a.To, a.ID)
	for i := range s.parts {
		switch s.parts[i].Node {
		case a.From:
			var keep []SubsystemLoad
			for _, o := range s.parts[i].Subsystems {
				if o.ID != a.ID {
					keep = append(keep, o)
				}
			}
			s.parts[i].Subsystems = keep
		case a.To:
			s.parts[i].Subsystems = append(s.parts[i].Subsystems, moved)
		}
	}
}

// TestAutoBalancedNoMove: a balanced machine is never touched, however long.
func TestAutoBalancedNoMove(t *testing.T) {
	s := newAutoSim(t, map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 3), sub("b", 0, 0.5)}, 1: {sub("c", 1, 3.5)}})
	s.run(500)
	if len(s.moves) != 0 || !strings.Contains(s.last.Waiting, "balanced") {
		t.Fatalf("moves %+v on a balanced machine (last: %q)", s.moves, s.last.Waiting)
	}
}

// TestAutoCycle: the move comes after cfg.Samples unbalanced samples, in
// live mode for a plain subsystem and restart mode for a movable one;
// nothing is advised while it is in flight; afterwards the next move waits
// for cfg.MinInterval after the end of the last and for cfg.Samples fresh
// samples.
func TestAutoCycle(t *testing.T) {
	movable := sub("m", 0, 1.5)
	movable.Movable = true
	// Node 0 (7 CPUs): a 3, c 3, m 1.5 (movable); node 1 (8 CPUs): idle.
	s := newAutoSim(t, map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 3), sub("c", 0, 3), movable}, 1: {}})
	s.inFlight = 6 // a minute
	s.run(s.cfg.Samples - 1)
	if len(s.moves) != 0 {
		t.Fatalf("moved after %d samples: %+v", s.cfg.Samples-1, s.moves)
	}
	s.run(1)
	if len(s.moves) != 1 || s.st.InFlight == nil {
		t.Fatalf("no move after %d unbalanced samples: %q", s.cfg.Samples, s.last.Waiting)
	}
	first := *s.st.InFlight
	// The tie between a and c (same demand, memory, faults) goes by name.
	if first.ID != "a" || first.Mode != MoveLive || first.From != 0 || first.To != 1 {
		t.Fatalf("first move %+v, want a 0→1 live", first)
	}
	started := s.now
	s.run(5)
	if !strings.Contains(s.last.Waiting, "in flight") {
		t.Fatalf("while in flight: %q", s.last.Waiting)
	}
	s.run(1) // ends: 6 samples after the start
	ended := s.now
	// Streak 1: the sample taken after the move ended is the first of a new streak.
	if s.st.InFlight != nil || !s.st.LastMove.Equal(ended) || s.st.Streak != 1 {
		t.Fatalf("after Done: %+v", s.st)
	}
	if got := s.st.History["a"]; got.From != 0 || got.To != 1 || !got.At.Equal(started) {
		t.Errorf("history of a: %+v", got)
	}
	// Node 0: c 3 + m 1.5 = 4.5/7 = 0.64; node 1: a 3/8 = 0.375: still
	// unbalanced. Moving m (movable: by restart) gives 3/7 vs 4.5/8 (0.13).
	for s.now.Sub(ended) < s.cfg.MinInterval-s.step {
		s.run(1)
		if len(s.moves) != 1 {
			t.Fatalf("second move %s after the first ended (min interval %s)", s.now.Sub(ended), s.cfg.MinInterval)
		}
	}
	s.run(1)
	if len(s.moves) != 2 || s.st.InFlight.ID != "m" || s.st.InFlight.Mode != MoveRestart || s.moves[1].At.Sub(ended) != s.cfg.MinInterval {
		t.Fatalf("second move %+v at %s after the first ended, want m by restart at %s: %q", s.st.InFlight,
			s.now.Sub(ended), s.cfg.MinInterval, s.last.Waiting)
	}
}

// TestAutoStreakAfterMove: the streak starts over when a move ends, so the
// next move needs cfg.Samples samples taken after it.
func TestAutoStreakAfterMove(t *testing.T) {
	s := newAutoSim(t, map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 3), sub("b", 0, 3), sub("c", 0, 1.5)}, 1: {}})
	s.cfg.MinInterval = s.step // only the streak holds it back
	s.cfg.FlapWindow = time.Hour
	s.run(s.cfg.Samples)
	if len(s.moves) != 1 {
		t.Fatal("no first move")
	}
	s.run(1) // ends, and the sample after it is the first of the new streak
	if s.st.InFlight != nil || s.st.Streak != 1 {
		t.Fatalf("after the move: %+v", s.st)
	}
	s.run(s.cfg.Samples - 2)
	if len(s.moves) != 1 {
		t.Fatalf("second move after %d fresh samples", s.cfg.Samples-1)
	}
	s.run(1)
	if len(s.moves) != 2 {
		t.Fatalf("no second move after %d fresh samples: %q", s.cfg.Samples, s.last.Waiting)
	}
}

// TestAutoFailure: a failed move leaves the history as it was, is not tried
// again for cfg.FlapWindow (another subsystem goes instead), and is tried
// again after.
func TestAutoFailure(t *testing.T) {
	s := newAutoSim(t, map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 4), sub("b", 0, 2)}, 1: {}})
	s.fail = true
	s.run(s.cfg.Samples + 1)
	if len(s.moves) != 1 || s.moved[0] != "a" || s.st.InFlight != nil {
		t.Fatalf("moves %v in flight %+v", s.moved, s.st.InFlight)
	}
	if _, ok := s.st.History["a"]; ok {
		t.Errorf("a failed move stays in the history: %+v", s.st.History)
	}
	if f := s.st.Failures["a"]; f.To != 1 || !f.At.Equal(s.now) || f.Reason == "" {
		t.Errorf("failure record %+v", f)
	}
	failed := s.now
	for s.now.Sub(failed) < s.cfg.FlapWindow-s.step {
		s.run(1)
		for _, id := range s.moved[1:] {
			if id == "a" {
				t.Fatalf("a tried again %s after its move failed", s.now.Sub(failed))
			}
		}
	}
	if len(s.moved) < 2 || s.moved[1] != "b" {
		t.Fatalf("moves %v: want b tried while a waits", s.moved)
	}
	if !strings.Contains(s.last.Waiting, "a: its move to node 1 failed") {
		t.Errorf("waiting %q does not say why a stays", s.last.Waiting)
	}
	s.fail = false
	s.run(int(s.cfg.MinInterval/s.step) + s.cfg.Samples + 2)
	if s.moved[len(s.moved)-1] != "a" {
		t.Fatalf("moves %v: a not tried again after the flap window", s.moved)
	}
}

// TestAutoFailureRestoresHistory: a failed move of a subsystem moved before
// leaves its earlier move in the history.
func TestAutoFailureRestoresHistory(t *testing.T) {
	earlier := MoveRecord{From: 1, To: 0, At: t0.Add(-time.Hour)}
	st := RebalanceState{History: map[string]MoveRecord{"a": earlier}}
	st = st.Start(Advice{Subsystem: "node0/a", ID: "a", From: 0, To: 1}, t0)
	if st.History["a"].To != 1 {
		t.Fatalf("Start did not record the move: %+v", st.History)
	}
	st = st.Fail(t0.Add(time.Second), "no")
	if st.History["a"] != earlier || st.InFlight != nil {
		t.Fatalf("after Fail: %+v", st)
	}
	// Done and Fail without a move in flight change nothing.
	if st2 := st.Done(t0.Add(time.Hour)); !st2.LastMove.Equal(st.LastMove) {
		t.Errorf("Done without a move: %+v", st2)
	}
}

// TestAutoNoPingPong: with steady loads on two nodes the policy makes the
// moves that even the load out and then none: a heavy subsystem whose move
// would only make the other node the hot one never moves, and nothing goes
// back and forth.
func TestAutoNoPingPong(t *testing.T) {
	for _, tc := range []struct {
		name  string
		subs  map[hw.Node][]SubsystemLoad
		moves []string
	}{
		{"one heavy subsystem stays", map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 5)}, 1: {}}, nil},
		{"two heavy: one moves, once", map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 3), sub("b", 0, 3)}, 1: {sub("c", 1, 0.1)}}, []string{"a"}},
		{"many small: moves until even, then none", map[hw.Node][]SubsystemLoad{
			0: {sub("a", 0, 1), sub("b", 0, 1), sub("c", 0, 1), sub("d", 0, 1), sub("e", 0, 1), sub("f", 0, 1)}, 1: {}}, []string{"a", "b", "c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAutoSim(t, tc.subs)
			s.inFlight = 3
			s.run(2000) // five and a half hours
			if fmt.Sprint(s.moved) != fmt.Sprint(tc.moves) {
				t.Fatalf("moves %v %+v, want %v (last: %q)", s.moved, s.moves, tc.moves, s.last.Waiting)
			}
		})
	}
}

// TestAutoSwingingLoad: the load swings between the two nodes every 90 s,
// faster than the flap window. Every subsystem moves at most once per flap
// window (so never back within it), and the moves are at least the min
// interval apart.
func TestAutoSwingingLoad(t *testing.T) {
	s := newAutoSim(t, map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 0), sub("b", 0, 0)}, 1: {sub("c", 1, 0), sub("d", 1, 0)}})
	s.cfg.Samples = 2
	hot := 0
	for range 60 {
		// Whatever runs on the hot node burns 3 CPUs each, the rest 0.2.
		for i := range s.parts {
			for j := range s.parts[i].Subsystems {
				u := 0.2
				if int(s.parts[i].Node) == hot {
					u = 3
				}
				s.parts[i].Subsystems[j].Usage = u
			}
		}
		s.run(9) // 90 s per phase
		hot = 1 - hot
	}
	if len(s.moves) < 3 {
		t.Fatalf("only %d moves in 90 minutes of swinging load: the test does not exercise the policy", len(s.moves))
	}
	lastOf := map[string]int{}
	for i, m := range s.moves {
		if i > 0 && m.At.Sub(s.moves[i-1].At) < s.cfg.MinInterval {
			t.Errorf("moves %d and %d %s apart", i-1, i, m.At.Sub(s.moves[i-1].At))
		}
		if j, ok := lastOf[s.moved[i]]; ok && m.At.Sub(s.moves[j].At) < s.cfg.FlapWindow {
			t.Errorf("%s moved %d→%d and %d→%d %s apart (flap window %s)", s.moved[i], s.moves[j].From, s.moves[j].To,
				m.From, m.To, m.At.Sub(s.moves[j].At), s.cfg.FlapWindow)
		}
		lastOf[s.moved[i]] = i
	}
	if max := int(90*time.Minute/s.cfg.FlapWindow+1) * 4; len(s.moves) > max {
		t.Errorf("%d moves, more than %d (each of 4 subsystems once per flap window)", len(s.moves), max)
	}
	t.Logf("%d moves in 90 minutes: %v", len(s.moves), s.moved)
}

// TestAutoOperatorMove: a move the snapshot reports (MovedAt, made by an
// operator) counts for the min interval and the flap window like the
// policy's own.
func TestAutoOperatorMove(t *testing.T) {
	s := newAutoSim(t, map[hw.Node][]SubsystemLoad{0: {sub("a", 0, 4), sub("b", 0, 2)}, 1: {}})
	a, _ := s.sub("a")
	a.MovedFrom, a.MovedAt = 1, t0.Add(30*time.Second)
	s.run(s.cfg.Samples + 1) // up to t0+40s: 10 s after the operator's move
	if len(s.moves) != 0 || !strings.Contains(s.last.Waiting, "last move 10s ago") {
		t.Fatalf("moves %v within the min interval of an operator's move (%q)", s.moved, s.last.Waiting)
	}
	s.run(int(s.cfg.MinInterval / s.step))
	if len(s.moves) != 1 || s.moved[0] != "b" {
		t.Fatalf("moves %v: want b (a was moved by the operator)", s.moved)
	}
}
