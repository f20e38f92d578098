package bench

import (
	"fmt"
	"strings"
)

// TieBand is how close central ÷ local must be to 1 for "no clear winner"
// (±10 %: the spread of one quick run on a shared VM).
const TieBand = 0.10

// summary is the report's closing line: who won, by how much, and why in
// this machine's own terms. The medians of one run decompose exactly:
//
//	local   = raw_floor × (raw_xproc ÷ raw_floor) × (local ÷ raw_xproc)
//	                       address-space switch      local's framework
//	central = raw_floor × (raw_cross ÷ raw_floor) × (central ÷ raw_cross)
//	                       cross-CPU hand-off        central's framework
//
// A local pager stays on the faulting CPU but lives in another process
// (its vcore), so the faulting CPU switches into the pager's address space
// and back; the single pager takes every fault on another CPU. Which
// factor is larger on this machine says why the winner won.
func summary(r *Report) string {
	return mainSummary(r) + floorSummary(r.Targets)
}

// floorSummary is the summary's clause on the goals this machine's own
// floors cannot meet: each with its floor and the floor-relative target
// judged instead ("" when there is none).
func floorSummary(ts []Target) string {
	byKey := map[string]Target{}
	for _, t := range ts {
		byKey[t.Key] = t
	}
	var parts []string
	for _, t := range ts {
		if t.Status != StatusUnattainable {
			continue
		}
		p := fmt.Sprintf("%s %s is beyond this machine (measured %.2f, its floor %s %.2f)", t.Key, t.Goal, t.Value, t.FloorKey, t.Floor)
		if in, ok := byKey[t.Instead]; ok && in.Status != StatusNotMeasured {
			p += fmt.Sprintf(", judged instead %s %.2f %s: %s", in.Key, in.Value, in.Goal, in.Status)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, "; ")
}

func mainSummary(r *Report) string {
	rt := r.Ratios
	c, c99 := rt.CentralOverLocalMedian, rt.CentralOverLocalP99
	xas, fwL := rt.RawXprocOverRawMedian, rt.LocalOverRawXprocMedian
	cross, fwC := rt.RawCrossOverRawMedian, rt.CentralOverRawCrossMedian
	var b strings.Builder
	b.WriteString("summary: ")
	floors := xas > 0 && fwL > 0 && cross > 0 && fwC > 0
	switch {
	case c <= 0 && len(r.Modes) == 0 && r.Checkpoint != nil:
		return ckptSummary(r.Checkpoint)
	case c <= 0:
		b.WriteString("local vs central not measured (run both modes)")
		if xas > 0 && cross > 0 {
			fmt.Fprintf(&b, "; this machine's cross-CPU penalty is %.2f× (raw_cross ÷ raw_floor), its cross-address-space penalty %.2f× (raw_xproc ÷ raw_floor)", cross, xas)
		}
		if fwL > 0 {
			fmt.Fprintf(&b, "; local's framework costs %.2f× its floor raw_xproc", fwL)
		}
		return b.String()
	case c > 1+TieBand:
		fmt.Fprintf(&b, "local wins: the single pager's median fault takes %.2f× as long as local's (p99 %s)", c, ratioText(c99))
	case c < 1-TieBand:
		inv99 := "n/a"
		if c99 > 0 {
			inv99 = ratioText(1 / c99)
		}
		fmt.Fprintf(&b, "local LOSES: its median fault takes %.2f× as long as the single pager's (p99 %s)", 1/c, inv99)
	default:
		fmt.Fprintf(&b, "no clear winner: central ÷ local median %.2f× (p99 %s), within ±%.0f%%", c, ratioText(c99), 100*TieBand)
	}
	if !floors {
		b.WriteString("; why: not measured (needs the raw_floor, raw_xproc and raw_cross floors)")
		return b.String()
	}
	fmt.Fprintf(&b, "; why: local = floor × %.2f (switch to the pager's address space on the faulting CPU, raw_xproc ÷ raw_floor) × %.2f (framework, local ÷ raw_xproc),"+
		" central = floor × %.2f (hand-off to another CPU, raw_cross ÷ raw_floor) × %.2f (framework, central ÷ raw_cross)", xas, fwL, cross, fwC)
	switch {
	case c > 1+TieBand && cross > xas:
		b.WriteString(": this machine's cross-CPU hand-off costs more than its address-space switch")
	case c > 1+TieBand:
		b.WriteString(": the single pager's framework costs more than local's")
	case c < 1-TieBand && xas >= cross:
		b.WriteString(": on this machine the address-space switch on the faulting CPU costs more than a hand-off to another CPU")
	case c < 1-TieBand:
		b.WriteString(": the machine favours local (its address-space switch is cheaper than the cross-CPU hand-off), local's framework eats that and more")
	default:
		b.WriteString(": the two paths cost about the same here")
	}
	return b.String()
}

// ckptSummary is the closing line of a run of the checkpoint modes only:
// what a checkpoint and a restore cost, in this run's own terms.
func ckptSummary(c *CheckpointReport) string {
	var parts []string
	if c.TrackingOverhead > 0 {
		parts = append(parts, fmt.Sprintf("async dirty tracking costs %.0f ns per written page per epoch (%.2f× on this write loop)",
			c.TrackingNSPerPage, c.TrackingOverhead))
	}
	if c.IncrementalOverFull > 0 {
		parts = append(parts, fmt.Sprintf("an incremental checkpoint of 1 %% of the pages freezes the worker %.1f ms, %.2f× a full one", c.IncrementalFrozenMS, c.IncrementalOverFull))
	}
	if c.FullWriteOverDD > 0 {
		parts = append(parts, fmt.Sprintf("a full one writes at %.2f× dd's throughput", c.FullWriteOverDD))
	}
	if c.RestoreFirstTouchOverLocal > 0 {
		parts = append(parts, fmt.Sprintf("a restored page's first touch costs %.2f× a local fault", c.RestoreFirstTouchOverLocal))
	}
	if c.RestoreThroughputOverRead > 0 {
		parts = append(parts, fmt.Sprintf("a full restore (restore_prefetch) runs at %.2f× a read of the image", c.RestoreThroughputOverRead))
	}
	if c.RestoreLazyThroughputOverRead > 0 {
		parts = append(parts, fmt.Sprintf("a lazy one, touched sequentially, at %.2f×", c.RestoreLazyThroughputOverRead))
	}
	if c.RestartStartBigOverSmall > 0 {
		parts = append(parts, fmt.Sprintf("a restart reaches the worker's first instruction in %.2f× the time with %d× the pages",
			c.RestartStartBigOverSmall, c.RestartBigPages/max(c.RestartSmallPages, 1)))
	}
	if m := c.Move; m != nil && m.Live != nil && m.Restart != nil {
		parts = append(parts, fmt.Sprintf("a live move stops the subsystem %.1f ms (%.1f ms in all), a restart move %.1f ms (%.1f ms)",
			m.Live.DowntimeMS, m.Live.TotalMS, m.Restart.DowntimeMS, m.Restart.TotalMS))
	}
	if len(parts) == 0 {
		return "summary: checkpoint modes measured nothing (see errors)"
	}
	return "summary: " + strings.Join(parts, "; ")
}
