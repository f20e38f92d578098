package policy

import (
	"fmt"
	"maps"
	"time"

	"github.com/vcored/vcored/internal/hw"
)

// Automatic moves (core's rebalance = "auto"): core asks Rebalance at every
// sample; when it advises a move, core calls Start, makes the move, and
// calls Done or Fail when the move returns. Between Start and Done/Fail
// Rebalance advises nothing (one move in flight at most); after them the
// streak of unbalanced samples starts over and the min interval counts from
// the move's end, so the next move waits for cfg.Samples samples of the
// loads as they are after the move.

// MoveFailure is a subsystem's last failed move.
type MoveFailure struct {
	To     hw.Node
	At     time.Time
	Reason string
}

// key is the name the policy's history knows the advised subsystem by.
func (a Advice) key() string {
	if a.ID != "" {
		return a.ID
	}
	return a.Subsystem
}

// key is the name the policy's history knows s by.
func (s *SubsystemLoad) key() string {
	if s.ID != "" {
		return s.ID
	}
	return s.Name
}

// Done records that the move in flight was made; it ended at at.
func (s RebalanceState) Done(at time.Time) RebalanceState {
	if s.InFlight == nil {
		return s
	}
	s = s.Finish()
	s.LastMove = at
	return s
}

// Fail records that the move in flight failed at at: the subsystem stays
// where it was (its history is what it was before Start), and it is not
// tried again for cfg.FlapWindow.
func (s RebalanceState) Fail(at time.Time, reason string) RebalanceState {
	if s.InFlight == nil {
		return s
	}
	a := *s.InFlight
	s.History = maps.Clone(s.History)
	if s.hadPrev {
		s.History[a.key()] = s.prev
	} else {
		delete(s.History, a.key())
	}
	s.Failures = maps.Clone(s.Failures)
	if s.Failures == nil {
		s.Failures = map[string]MoveFailure{}
	}
	s.Failures[a.key()] = MoveFailure{To: a.To, At: at, Reason: reason}
	s = s.Finish()
	s.LastMove = at
	return s
}

// settling says why s is not moved now ("" when it may be): it was moved
// (by the policy, or by anyone as the snapshot's MovedAt says) or a move of
// it failed less than window ago.
func settling(s *SubsystemLoad, now time.Time, window time.Duration, st RebalanceState) string {
	if r, ok := st.History[s.key()]; ok && now.Sub(r.At) < window {
		return fmt.Sprintf("moved from node %d to node %d %s ago, stays for %s", r.From, r.To, now.Sub(r.At).Round(time.Second), window)
	}
	if !s.MovedAt.IsZero() && now.Sub(s.MovedAt) < window {
		return fmt.Sprintf("moved from node %d %s ago, stays for %s", s.MovedFrom, now.Sub(s.MovedAt).Round(time.Second), window)
	}
	if f, ok := st.Failures[s.key()]; ok && now.Sub(f.At) < window {
		return fmt.Sprintf("its move to node %d failed %s ago (%s), not tried again for %s", f.To, now.Sub(f.At).Round(time.Second), f.Reason, window)
	}
	return ""
}

// lastMove is when the last move ended (or started, while in flight): the
// policy's own, or the latest MovedAt in the snapshot (a move an operator
// made counts too).
func lastMove(st RebalanceState, snap LoadSnapshot) time.Time {
	last := st.LastMove
	for _, p := range snap.Partitions {
		for _, s := range p.Subsystems {
			if s.MovedAt.After(last) && !s.MovedAt.After(snap.At) {
				last = s.MovedAt
			}
		}
	}
	return last
}
