package bench

import (
	"fmt"
	"io"
	"slices"

	"github.com/vcored/vcored/internal/hist"
)

// CheckpointReport is the checkpoint scenario's part of the report (issue
// I.5): the top-level "checkpoint" object of the JSON. Every ratio is of
// figures measured in the same run; 0 means not measured.
type CheckpointReport struct {
	// TrackingOverhead is the write loop's thread CPU time on the
	// persistent dataspace with async dirty tracking ÷ on the plain
	// dataspace of the same vcore (median over the epochs): the loop is
	// write-heavy, a hot working set (CkptSizes.HotPages) rewritten
	// CkptSizes.Passes times per epoch in full-page writes, pass by pass
	// interleaved with the plain one; a checkpoint (which write-protects
	// the pages again) follows each epoch.
	TrackingOverhead float64 `json:"tracking_overhead"`
	// IncrementalFrozenMS is the median frozen time of a checkpoint after
	// 1 % of the persistent pages were written.
	IncrementalFrozenMS float64 `json:"incremental_frozen_ms"`
	// IncrementalOverFull is that ÷ the full checkpoint's frozen time, of
	// the same dataspace in the same run (median over the runs).
	IncrementalOverFull float64 `json:"incremental_over_full"`
	// FullWriteOverDD is a throughput ratio: the full checkpoint's bytes ÷
	// its frozen time, over the dd floor's (the same bytes written in
	// 1 MiB writes + fsync to the image's directory, next to it in the
	// run); that is, dd time ÷ full checkpoint time (median over runs).
	FullWriteOverDD float64 `json:"full_write_over_dd"`
	// RestoreFirstTouchOverLocal is the median first-touch (read) latency
	// of a restored persistent page after the restart ÷ that of a plain
	// local page of the same pager, touched interleaved page by page.
	RestoreFirstTouchOverLocal float64 `json:"restore_first_touch_over_local"`
	// RestoreThroughputOverRead is the full restore's throughput with
	// restore_prefetch = true — the persistent dataspace's bytes ÷ the
	// time from the restarted worker's attach call until every page is present
	// — ÷ a sequential read of the image's layer files in 1 MiB reads (the
	// page cache as the restore found it). The lazy restore's is
	// RestoreLazyThroughputOverRead.
	RestoreThroughputOverRead float64 `json:"restore_throughput_over_read"`
	// Move is filled by the move mode: live vs restart move of one
	// subsystem (nil when it did not run).
	Move *MoveReport `json:"move,omitempty"`

	// SyncTrackingOverhead is TrackingOverhead with sync tracking (a
	// pager fault per first write of a page per epoch): reported, no goal.
	SyncTrackingOverhead float64 `json:"sync_tracking_overhead,omitempty"`
	// TrackingNSPerPage and SyncTrackingNSPerPage are what tracking adds
	// per tracked page per epoch (tracked − untracked loop ÷ hot pages;
	// thread CPU time for async, wall time for sync): the overhead of any
	// other loop follows from them.
	TrackingNSPerPage     float64 `json:"tracking_ns_per_page,omitempty"`
	SyncTrackingNSPerPage float64 `json:"sync_tracking_ns_per_page,omitempty"`
	// WriteNSPerPage is one untracked full-page write (median epoch).
	WriteNSPerPage float64 `json:"write_ns_per_page,omitempty"`
	// The full checkpoint and its floor (medians).
	FullFrozenMS float64 `json:"full_frozen_ms,omitempty"`
	FullBytes    int64   `json:"full_bytes,omitempty"`
	FullMBps     float64 `json:"full_mb_per_s,omitempty"`
	DDMBps       float64 `json:"dd_mb_per_s,omitempty"`
	// IncrementalPages is the pages of an incremental layer.
	IncrementalPages int `json:"incremental_pages,omitempty"`
	// Restore latencies (ns) and throughputs.
	RestoreMedianNS int64 `json:"restore_first_touch_median_ns,omitempty"`
	RestoreP99NS    int64 `json:"restore_first_touch_p99_ns,omitempty"`
	LocalMedianNS   int64 `json:"local_first_touch_median_ns,omitempty"`
	LocalP99NS      int64 `json:"local_first_touch_p99_ns,omitempty"`
	// RestoreMBps is the lazy restore's sequential first-touch pass
	// (RestoreLazyThroughputOverRead), ImageReadMBps its image read.
	RestoreMBps   float64 `json:"restore_mb_per_s,omitempty"`
	ImageReadMBps float64 `json:"image_read_mb_per_s,omitempty"`
	// RestoreLazyThroughputOverRead is the lazy restore (restore_prefetch
	// off): the restarted worker's sequential first-touch pass over the
	// persistent pages it had not touched yet, one fault per page, in
	// bytes/s ÷ the image read's. Reported; the goal is the full restore's
	// (RestoreThroughputOverRead).
	RestoreLazyThroughputOverRead float64 `json:"restore_lazy_throughput_over_read,omitempty"`
	// The full restore with restore_prefetch = true: every page of the
	// persistent dataspace present RestorePrefetchMS after the restarted
	// worker began its attach (it touches nothing meanwhile), at
	// RestorePrefetchMBps; the image read next to it.
	RestorePrefetchMS            float64 `json:"restore_prefetch_ms,omitempty"`
	RestorePrefetchMBps          float64 `json:"restore_prefetch_mb_per_s,omitempty"`
	RestorePrefetchImageReadMBps float64 `json:"restore_prefetch_image_read_mb_per_s,omitempty"`
	RestoreTouches               int64   `json:"restore_touches,omitempty"`
	RestartBigPages              int     `json:"restart_big_pages,omitempty"`
	RestartSmallPages            int     `json:"restart_small_pages,omitempty"`
	// RestartStartMS is, per persistent dataspace size (pages), the
	// median time from the first life's last statement to the restarted
	// worker's first; RestartAttachMS from there to its attach returning.
	RestartStartMS  map[int]float64 `json:"restart_start_ms,omitempty"`
	RestartAttachMS map[int]float64 `json:"restart_attach_ms,omitempty"`
	// RestartStartBigOverSmall is RestartStartMS of the big dataspace ÷
	// the small one's: about 1 when starting does not depend on the size.
	RestartStartBigOverSmall float64 `json:"restart_start_big_over_small,omitempty"`
	// VerifiedPages passed the content check, over all lives and runs.
	VerifiedPages int64 `json:"verified_pages"`
	Runs          int   `json:"runs"`

	// restoreHist and localHist are the restore's first touches (--svg).
	restoreHist, localHist *hist.Histogram
}

// MoveReport compares a live and a restart move of the same subsystem
// (issue I.3/I.5); filled by the move mode.
type MoveReport struct {
	Live    *MoveFigures `json:"live,omitempty"`
	Restart *MoveFigures `json:"restart,omitempty"`
}

// MoveFigures are one kind of move's times and size.
type MoveFigures struct {
	// DowntimeMS: the subsystem did not run (frozen or stopped).
	DowntimeMS float64 `json:"downtime_ms"`
	// TotalMS: from the move's start until every page was local.
	TotalMS float64 `json:"total_ms"`
	Bytes   int64   `json:"bytes"`
}

// SetMove records a move mode's figures in the report's checkpoint object
// (created if the checkpoint modes did not run): the hook for the move
// mode's part of Build.
func (r *Report) SetMove(m *MoveReport) {
	if r.Checkpoint == nil {
		r.Checkpoint = &CheckpointReport{}
	}
	r.Checkpoint.Move = m
}

// IsCkptMode reports whether mode is one of the checkpoint scenario's.
func IsCkptMode(mode string) bool {
	m, ok := LookupMode(mode)
	return ok && m.Ckpt != ""
}

func ms(ns float64) float64 { return ns / 1e6 }

// mbps is n bytes in ns nanoseconds, in MB/s (0 when unknown).
func mbps(n, ns float64) float64 {
	if n <= 0 || ns <= 0 {
		return 0
	}
	return n / ns * 1e3
}

// buildCheckpoint merges the checkpoint-scenario samples (nil: none).
func buildCheckpoint(samples []RunSample, pageSize int) *CheckpointReport {
	c := &CheckpointReport{}
	var asyncR, asyncNS, syncR, syncNS, writeNS []float64
	var ddOverFull, incrOverFull, incrMS, fullMS, fullB, fullMBps, ddMBps, incrPages []float64
	var restOverRead, restMBps, readMBps []float64
	var pfOverRead, pfMBps, pfReadMBps, pfMS []float64
	starts, attaches := map[int][]float64{}, map[int][]float64{}
	hr, hl := hist.New(), hist.New()
	var bigPages, smallPages int
	any := false
	for _, s := range samples {
		cs := s.Ckpt
		if cs == nil {
			continue
		}
		any = true
		c.VerifiedPages += cs.VerifiedPages
		if s.Err != nil {
			continue // partial: counted as verified so far, not measured
		}
		c.Runs++
		for _, e := range cs.Track {
			if e.UntrackedNS <= 0 || e.Pages <= 0 {
				continue
			}
			r := float64(e.TrackedNS) / float64(e.UntrackedNS)
			per := float64(e.TrackedNS-e.UntrackedNS) / float64(e.Pages)
			if cs.Sync && e.UntrackedWallNS > 0 {
				// Sync tracking waits for the pager off the CPU: wall time.
				r = float64(e.TrackedWallNS) / float64(e.UntrackedWallNS)
				per = float64(e.TrackedWallNS-e.UntrackedWallNS) / float64(e.Pages)
			}
			if cs.Sync {
				syncR, syncNS = append(syncR, r), append(syncNS, per)
			} else {
				asyncR, asyncNS = append(asyncR, r), append(asyncNS, per)
				writeNS = append(writeNS, float64(e.UntrackedNS)/float64(e.Pages*max(e.Passes, 1)))
			}
		}
		if !cs.Sync && cs.Full != nil && cs.Full.FrozenNS > 0 {
			// A checkpoint's cost is its whole time (the layer is written
			// after the thaw); its frozen time is reported on its own.
			full := float64(ckptTime(*cs.Full))
			fullMS, fullB = append(fullMS, ms(full)), append(fullB, float64(cs.Full.Bytes))
			fullMBps = append(fullMBps, mbps(float64(cs.Full.Bytes), full))
			if cs.DDNS > 0 {
				ddOverFull = append(ddOverFull, float64(cs.DDNS)/full)
				ddMBps = append(ddMBps, mbps(float64(cs.DDBytes), float64(cs.DDNS)))
			}
			var in []float64
			for _, i := range cs.Incrementals {
				in = append(in, float64(ckptTime(i)))
				incrMS = append(incrMS, ms(float64(i.FrozenNS)))
				incrPages = append(incrPages, float64(i.Pages))
			}
			if len(in) > 0 {
				incrOverFull = append(incrOverFull, medianOf(in)/full)
			}
		}
		for _, rs := range cs.Restores {
			if rs.Prefetch {
				rest := mbps(float64(rs.PresentPages)*float64(pageSize), float64(rs.PresentNS))
				read := mbps(float64(rs.ImageBytes), float64(rs.ImageReadNS))
				if rest > 0 && read > 0 && rs.PresentPages >= rs.Pages {
					pfMBps, pfReadMBps = append(pfMBps, rest), append(pfReadMBps, read)
					pfOverRead = append(pfOverRead, rest/read)
					pfMS = append(pfMS, ms(float64(rs.PresentNS)))
				}
				continue
			}
			starts[rs.Pages] = append(starts[rs.Pages], ms(float64(rs.StartNS)))
			attaches[rs.Pages] = append(attaches[rs.Pages], ms(float64(rs.AttachNS)))
			if rs.Pages == cs.Sizes.Pages {
				bigPages = rs.Pages
				if h, err := hist.FromSnapshot(rs.Restore); err == nil {
					hr.Merge(h)
				}
				if h, err := hist.FromSnapshot(rs.Local); err == nil {
					hl.Merge(h)
				}
				rest := mbps(float64(rs.SeqPages)*float64(pageSize), float64(rs.SeqWallNS))
				read := mbps(float64(rs.ImageBytes), float64(rs.ImageReadNS))
				if rest > 0 && read > 0 {
					restMBps, readMBps = append(restMBps, rest), append(readMBps, read)
					restOverRead = append(restOverRead, rest/read)
				}
			} else {
				smallPages = rs.Pages
			}
		}
	}
	if !any {
		return nil
	}
	c.TrackingOverhead, c.TrackingNSPerPage, c.WriteNSPerPage = medianOf(asyncR), medianOf(asyncNS), medianOf(writeNS)
	c.SyncTrackingOverhead, c.SyncTrackingNSPerPage = medianOf(syncR), medianOf(syncNS)
	c.FullFrozenMS, c.FullBytes, c.FullMBps, c.DDMBps = medianOf(fullMS), int64(medianOf(fullB)), medianOf(fullMBps), medianOf(ddMBps)
	c.FullWriteOverDD = medianOf(ddOverFull)
	c.IncrementalFrozenMS, c.IncrementalOverFull, c.IncrementalPages = medianOf(incrMS), medianOf(incrOverFull), int(medianOf(incrPages))
	if hr.Count() > 0 && hl.Count() > 0 {
		c.RestoreTouches = hr.Count()
		c.RestoreMedianNS, c.RestoreP99NS = hr.Quantile(0.5), hr.Quantile(0.99)
		c.LocalMedianNS, c.LocalP99NS = hl.Quantile(0.5), hl.Quantile(0.99)
		c.RestoreFirstTouchOverLocal = ratio(float64(c.RestoreMedianNS), float64(c.LocalMedianNS))
		c.restoreHist, c.localHist = hr, hl
	}
	c.RestoreMBps, c.ImageReadMBps, c.RestoreLazyThroughputOverRead = medianOf(restMBps), medianOf(readMBps), medianOf(restOverRead)
	c.RestorePrefetchMBps, c.RestorePrefetchImageReadMBps, c.RestoreThroughputOverRead = medianOf(pfMBps), medianOf(pfReadMBps), medianOf(pfOverRead)
	c.RestorePrefetchMS = medianOf(pfMS)
	if len(starts) > 0 {
		c.RestartStartMS, c.RestartAttachMS = map[int]float64{}, map[int]float64{}
		for p, v := range starts {
			c.RestartStartMS[p] = medianOf(v)
			c.RestartAttachMS[p] = medianOf(attaches[p])
		}
		c.RestartBigPages, c.RestartSmallPages = bigPages, smallPages
		if bigPages != smallPages && smallPages > 0 {
			c.RestartStartBigOverSmall = ratio(c.RestartStartMS[bigPages], c.RestartStartMS[smallPages])
		}
	}
	return c
}

// Checkpoint targets (issue I.5), ratios within one run.
const (
	TargetTrackingOverhead           = 1.05
	TargetIncrementalFrozenMS        = 20.0
	TargetIncrementalOverFull        = 0.05
	TargetFullWriteOverDD            = 0.8
	TargetRestoreFirstTouchOverLocal = 2.0
	TargetRestoreThroughputOverRead  = 0.8
	// TargetRestartStartBigOverSmall: starting a restored worker does not
	// depend on its dataspace's size (16× the pages at full size): at
	// most 2× the small one's time, generous for a few-ms figure on a
	// shared machine.
	TargetRestartStartBigOverSmall = 2.0
)

// ckptValue reads a checkpoint figure (0: not measured).
func ckptValue(f func(c *CheckpointReport) float64) func(r *Report) (float64, bool) {
	return func(r *Report) (float64, bool) {
		if r.Checkpoint == nil {
			return 0, false
		}
		v := f(r.Checkpoint)
		return v, v > 0
	}
}

// ckptTargetSpecs are the checkpoint scenario's rows of targetSpecs.
var ckptTargetSpecs = []targetSpec{
	{key: "tracking_overhead", name: "write loop with async dirty tracking ÷ without (checkpoint)",
		goal:  fmt.Sprintf("≤ %.2f", TargetTrackingOverhead),
		value: ckptValue(func(c *CheckpointReport) float64 { return c.TrackingOverhead }), pass: atMost(TargetTrackingOverhead)},
	{key: "incremental_frozen_ms", name: "frozen time of an incremental checkpoint, 1 % of the pages written (ms)",
		goal:  fmt.Sprintf("≤ %.0f", TargetIncrementalFrozenMS),
		value: ckptValue(func(c *CheckpointReport) float64 { return c.IncrementalFrozenMS }), pass: atMost(TargetIncrementalFrozenMS)},
	{key: "incremental_over_full", name: "incremental (1 %) ÷ full checkpoint, whole time (freeze to durable commit)",
		goal:  fmt.Sprintf("≤ %.2f", TargetIncrementalOverFull),
		value: ckptValue(func(c *CheckpointReport) float64 { return c.IncrementalOverFull }), pass: atMost(TargetIncrementalOverFull)},
	{key: "full_write_over_dd", name: "full checkpoint throughput ÷ dd of the same bytes to the same disk",
		goal:  fmt.Sprintf("≥ %.1f", TargetFullWriteOverDD),
		value: ckptValue(func(c *CheckpointReport) float64 { return c.FullWriteOverDD }), pass: atLeast(TargetFullWriteOverDD)},
	{key: "restore_first_touch_over_local", name: "first touch of a restored page ÷ a local fault, medians (restore)",
		goal:  fmt.Sprintf("≤ %.0f", TargetRestoreFirstTouchOverLocal),
		value: ckptValue(func(c *CheckpointReport) float64 { return c.RestoreFirstTouchOverLocal }), pass: atMost(TargetRestoreFirstTouchOverLocal)},
	{key: "restore_throughput_over_read", name: "full restore throughput (restore_prefetch: attach → every page present) ÷ sequential read of the image",
		goal:  fmt.Sprintf("≥ %.1f", TargetRestoreThroughputOverRead),
		value: ckptValue(func(c *CheckpointReport) float64 { return c.RestoreThroughputOverRead }), pass: atLeast(TargetRestoreThroughputOverRead)},
	{key: "restart_start_big_over_small", name: "restart to the worker's first instruction, big ÷ small dataspace",
		goal:  fmt.Sprintf("≤ %.0f", TargetRestartStartBigOverSmall),
		value: ckptValue(func(c *CheckpointReport) float64 { return c.RestartStartBigOverSmall }), pass: atMost(TargetRestartStartBigOverSmall)},
}

// writeCheckpointText prints the checkpoint section of the text report.
func (c *CheckpointReport) writeText(w io.Writer, p Params) {
	fmt.Fprintf(w, "\ncheckpoint (%d runs, %d pages verified)", c.Runs, c.VerifiedPages)
	if s := p.Checkpoint; s != nil {
		fmt.Fprintf(w, ": persistent dataspace %d pages, write loop: a hot set of %d pages × %d passes per epoch (thread CPU time), restore sizes %d and %d pages",
			s.Pages, s.HotPages, s.Passes, s.Pages, s.SmallPages)
	}
	fmt.Fprintln(w)
	if c.TrackingOverhead > 0 || c.SyncTrackingOverhead > 0 {
		fmt.Fprintf(w, "  dirty tracking: write loop tracked ÷ untracked: async %s (+%.0f ns per page per epoch), sync %s (+%.0f ns); a full-page write %.0f ns\n",
			ratioText(c.TrackingOverhead), c.TrackingNSPerPage, ratioText(c.SyncTrackingOverhead), c.SyncTrackingNSPerPage, c.WriteNSPerPage)
	}
	if c.FullFrozenMS > 0 {
		fmt.Fprintf(w, "  full checkpoint: %.1f ms frozen, %.1f MiB, %.0f MB/s; dd floor %.0f MB/s: throughput ratio %s\n",
			c.FullFrozenMS, float64(c.FullBytes)/(1<<20), c.FullMBps, c.DDMBps, ratioText(c.FullWriteOverDD))
	}
	if c.IncrementalFrozenMS > 0 {
		fmt.Fprintf(w, "  incremental checkpoint (%d pages): %.2f ms frozen, %s of the full one\n",
			c.IncrementalPages, c.IncrementalFrozenMS, ratioText(c.IncrementalOverFull))
	}
	if c.RestoreMedianNS > 0 {
		fmt.Fprintf(w, "  restore (lazy): first touch median %s µs (p99 %s) vs local fault %s µs (p99 %s): %s; sequential first-touch pass %.0f MB/s vs image read %.0f MB/s: %s\n",
			us(float64(c.RestoreMedianNS)), us(float64(c.RestoreP99NS)), us(float64(c.LocalMedianNS)), us(float64(c.LocalP99NS)),
			ratioText(c.RestoreFirstTouchOverLocal), c.RestoreMBps, c.ImageReadMBps, ratioText(c.RestoreLazyThroughputOverRead))
	}
	if c.RestorePrefetchMS > 0 {
		fmt.Fprintf(w, "  restore (restore_prefetch = true): every page present %.1f ms after the attach began, %.0f MB/s vs image read %.0f MB/s: %s\n",
			c.RestorePrefetchMS, c.RestorePrefetchMBps, c.RestorePrefetchImageReadMBps, ratioText(c.RestoreThroughputOverRead))
	}
	if len(c.RestartStartMS) > 0 {
		fmt.Fprintf(w, "  restart to the worker's first instruction (then to its attach returning):")
		sizes := make([]int, 0, len(c.RestartStartMS))
		for p := range c.RestartStartMS {
			sizes = append(sizes, p)
		}
		slices.Sort(sizes)
		for _, p := range sizes {
			fmt.Fprintf(w, " %d pages %.1f ms (+%.1f ms);", p, c.RestartStartMS[p], c.RestartAttachMS[p])
		}
		fmt.Fprintf(w, " big ÷ small %s\n", ratioText(c.RestartStartBigOverSmall))
	}
	if m := c.Move; m != nil {
		for _, k := range []struct {
			name string
			f    *MoveFigures
		}{{"live", m.Live}, {"restart", m.Restart}} {
			if k.f != nil {
				fmt.Fprintf(w, "  move %s: downtime %.1f ms, total %.1f ms, %.1f MiB\n", k.name, k.f.DowntimeMS, k.f.TotalMS, float64(k.f.Bytes)/(1<<20))
			}
		}
	}
}

// ckptTime is a checkpoint's whole time, freeze to durable commit (the
// vcore's total_ns; a vcore that does not report it: frozen time, which
// then included the write).
func ckptTime(c CkptCheckpoint) int64 {
	if c.TotalNS > 0 {
		return c.TotalNS
	}
	return c.FrozenNS
}
