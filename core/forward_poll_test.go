package core

import (
	"testing"
	"time"
)

// TestNextPoll: the poll window after a Forward grows while forwards come
// just after it would have ended (a stream), stays while the poll catches
// them, never exceeds pollMax, and shrinks to nothing when they come
// farther apart than any poll would wait (isolated forwards cost nothing).
func TestNextPoll(t *testing.T) {
	const us = time.Microsecond
	cases := []struct {
		cur, gap, want time.Duration
	}{
		{0, 10 * us, pollStart},                    // streaming seen: start polling
		{pollStart, pollStart, pollStart},          // caught: keep
		{pollStart, pollStart + us, 2 * pollStart}, // just missed: grow
		{pollMax, pollMax, pollMax},                // caught at the cap
		{pollMax / 2, pollMax, pollMax},            // grow, capped
		{0, pollMax + us, 0},                       // isolated: no polling
		{pollMax, time.Second, pollMax / 2},        // apart: shrink
		{pollStart, time.Second, 0},                // below the start: off
	}
	for _, c := range cases {
		if got := nextPoll(c.cur, c.gap); got != c.want {
			t.Errorf("nextPoll(%v, %v) = %v, want %v", c.cur, c.gap, got, c.want)
		}
	}
	// A stream of forwards 30µs apart reaches a window that catches them;
	// then forwards 1s apart switch polling off.
	w := time.Duration(0)
	for range 10 {
		w = nextPoll(w, 30*us)
	}
	if w < 30*us || w > pollMax {
		t.Fatalf("window after a stream 30µs apart: %v", w)
	}
	for range 10 {
		w = nextPoll(w, time.Second)
	}
	if w != 0 {
		t.Fatalf("window after forwards 1s apart: %v, want 0", w)
	}
}
