package main

import (
	"bytes"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/vcored/vcored/internal/api"
)

func TestPrintRebalance(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	end := t0.Add(1500 * time.Millisecond)
	rb := &api.Rebalance{Mode: "auto", Interval: "10s", Samples: 12, Imbalance: 0.34, MovesDone: 1, MovesFailed: 1,
		Decision: "the move of node0/b from node 0 to node 1 is in flight",
		InFlight: &api.RebalanceMove{Subsystem: "node0/b", From: 0, To: 1, Mode: "restart", Started: t0.Add(time.Minute), Result: "in flight"},
		Moves: []api.RebalanceMove{
			{Subsystem: "node0/a", From: 0, To: 1, Mode: "live", Started: t0, Ended: &end, Result: "done", TotalMS: 850, Bytes: 64 << 20, PagesLeftBehind: 3},
			{Subsystem: "node0/c", From: 0, To: 2, Mode: "live", Started: t0, Ended: &end, Result: "failed", Error: "destination refused"},
		}}
	var buf bytes.Buffer
	w := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	printRebalance(w, rb)
	w.Flush()
	out := buf.String()
	for _, want := range []string{
		"REBALANCE auto every 10s: imbalance 0.34 after 12 samples; moves done 1, failed 1",
		"decision: the move of node0/b from node 0 to node 1 is in flight",
		"in flight: node0/b from node 0 to node 1 (restart) since 2026-11-29T12:01:00Z",
		"node0/a  0     1   live  2026-11-29T12:00:00Z  1.5s  done (total 850ms, 64MiB, 3 pages left behind)",
		"node0/c  0     2   live  2026-11-29T12:00:00Z  1.5s  failed: destination refused",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %q:\n%s", want, out)
		}
	}
	buf.Reset()
	printRebalance(&buf, nil)
	if buf.Len() != 0 {
		t.Errorf("rebalancing off printed %q", buf.String())
	}
}
