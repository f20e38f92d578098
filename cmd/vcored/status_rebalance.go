package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
)

// collectRebalance adds core's rebalancing state to rep (nothing when it
// is off).
func collectRebalance(ctx context.Context, c *api.Client, rep *statusReport) {
	var rb api.Rebalance
	if err := c.Get(ctx, "/v1/rebalance", &rb); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return
	}
	if rb.Mode != "" && rb.Mode != "off" {
		rep.Rebalance = &rb
	}
}

// printRebalance prints the rebalancing mode, the last decision, the move
// in flight and the last automatic moves.
func printRebalance(w io.Writer, rb *api.Rebalance) {
	if rb == nil {
		return
	}
	fmt.Fprintf(w, "REBALANCE %s every %s: imbalance %.2f after %d samples", rb.Mode, rb.Interval, rb.Imbalance, rb.Samples)
	if rb.Mode == "auto" {
		fmt.Fprintf(w, "; moves done %d, failed %d", rb.MovesDone, rb.MovesFailed)
	}
	fmt.Fprintln(w)
	if rb.Decision != "" {
		fmt.Fprintf(w, "  decision: %s\n", rb.Decision)
	}
	if m := rb.InFlight; m != nil {
		fmt.Fprintf(w, "  in flight: %s from node %d to node %d (%s) since %s\n", m.Subsystem, m.From, m.To, m.Mode, m.Started.Format(time.RFC3339))
	}
	if len(rb.Moves) > 0 {
		fmt.Fprintln(w, "MOVED\tFROM\tTO\tMODE\tSTARTED\tTOOK\tRESULT")
		for _, m := range rb.Moves {
			took := "-"
			if m.Ended != nil {
				took = m.Ended.Sub(m.Started).Round(time.Millisecond).String()
			}
			fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", m.Subsystem, m.From, m.To, m.Mode, m.Started.Format(time.RFC3339), took, moveOutcome(m))
		}
	}
	fmt.Fprintln(w)
}

// moveOutcome is "done (downtime 12ms, total 850ms, 64MiB, 3 pages left
// behind)" or "failed: why".
func moveOutcome(m api.RebalanceMove) string {
	if m.Error != "" {
		return m.Result + ": " + m.Error
	}
	var parts []string
	if m.DowntimeMS > 0 {
		parts = append(parts, fmt.Sprintf("downtime %.0fms", m.DowntimeMS))
	}
	if m.TotalMS > 0 {
		parts = append(parts, fmt.Sprintf("total %.0fms", m.TotalMS))
	}
	if m.Bytes > 0 {
		parts = append(parts, hw.Bytes(m.Bytes).Human())
	}
	if m.PagesLeftBehind > 0 {
		parts = append(parts, fmt.Sprintf("%d pages left behind", m.PagesLeftBehind))
	}
	if len(parts) == 0 {
		return m.Result
	}
	return m.Result + " (" + strings.Join(parts, ", ") + ")"
}
