package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/vcored/vcored/internal/plot"
)

func us(ns float64) string {
	if ns <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", ns/1e3)
}

func ratioText(v float64) string {
	if v <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f×", v)
}

// WriteText prints the report as tables: per mode, then fault-around,
// forwarded faults, memory, ratios and targets.
func (r *Report) WriteText(w io.Writer) error {
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs (%s), %d node(s) (%s), kernel %s, cgroups %s", m.CPUs, m.CPUList, m.Nodes, m.NodeList, m.Kernel, m.CgroupMode)
	if m.Model != "" {
		fmt.Fprintf(w, ", %s", m.Model)
	}
	if m.Virtualized {
		fmt.Fprintf(w, ", virtualized")
		if m.Hypervisor != "" {
			fmt.Fprintf(w, " (%s)", m.Hypervisor)
		}
	}
	fmt.Fprintln(w)
	if m.Emulated {
		fmt.Fprintln(w, "NOTE: the CPU looks emulated (qemu TCG): timings are not those of real hardware; placement is.")
	}
	p := r.Params
	if len(r.Modes) == 0 {
		fmt.Fprintf(w, "bench: checkpoint modes only, %d reps interleaved, core CPU %d (%.1f s)\n", p.Reps, p.CoreCPU, r.DurationS)
	} else {
		fmt.Fprintf(w, "bench: %d worker(s) per vcore, %d pages of %d B, pattern %s, %d reps interleaved, core CPU %d, partitions", p.Workers, p.Pages, p.PageSize, p.Pattern, p.Reps, p.CoreCPU)
		for _, pt := range p.Partitions {
			fmt.Fprintf(w, " node%d:%s", pt.Node, pt.CPUs)
		}
		fmt.Fprintf(w, " (%.1f s)\n\n", r.DurationS)
	}

	if len(r.Modes) > 0 {
		if err := r.writeFaults(w); err != nil {
			return err
		}
	}
	if r.Checkpoint != nil {
		r.Checkpoint.writeText(w, r.Params)
	}
	fmt.Fprintln(w, "\ntargets (ratios within this run; --check exits 1 if a measured one is missed):")
	for _, t := range r.Targets {
		fmt.Fprintf(w, "  %s\n", t.Text())
	}
	if len(r.Errors) > 0 {
		fmt.Fprintln(w, "\nerrors:")
		for _, e := range r.Errors {
			fmt.Fprintf(w, "  %s\n", e)
		}
	}
	fmt.Fprintf(w, "\n%s\n", r.Summary)
	return nil
}

// writeFaults prints the fault modes' tables and ratios.
func (r *Report) writeFaults(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\truns\tfaults\tmedian µs\tp90 µs\tp99 µs\tp99.9 µs\tper page µs\tfaults/s\tIPIs/fault\tCAL\tRES\tTLB\tlocal node\tverified\t")
	for _, name := range r.ModeOrder() {
		md := r.Modes[name]
		if md.Faults == 0 {
			fmt.Fprintf(tw, "%s\t%d\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t\n", name, md.Runs)
			continue
		}
		ipi, cal, res, tlb := "n/a", "", "", ""
		if md.IPIs != nil {
			ipi = fmt.Sprintf("%.3f", md.IPIsPerFault)
			cal, res, tlb = fmt.Sprintf("%.3f", md.IPIs.CALPerFault), fmt.Sprintf("%.3f", md.IPIs.RESPerFault), fmt.Sprintf("%.3f", md.IPIs.TLBPerFault)
		}
		share := "n/a"
		if md.LocalNodeShare >= 0 {
			share = fmt.Sprintf("%.1f%%", 100*md.LocalNodeShare)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%d\t\n", name, md.Runs, md.Faults,
			us(float64(md.MedianNS)), us(float64(md.P90NS)), us(float64(md.P99NS)), us(float64(md.P999NS)), us(md.PerPageNS),
			md.FaultsPerSec, ipi, cal, res, tlb, share, md.VerifiedPages)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "(latency: one timed 8-byte first touch per page, timer included; IPIs: CAL+RES+TLB on all CPUs over the touch loops ÷ faults)")
	for _, spec := range Registry {
		if _, ok := r.Modes[spec.Name]; ok {
			fmt.Fprintf(w, "  %-10s %s\n", spec.Name, spec.Doc)
		}
	}

	// Per-CPU IPIs and placement per node when there is more than one.
	for _, name := range r.ModeOrder() {
		md := r.Modes[name]
		if md.IPIs == nil || len(md.IPIs.PerCPU) < 2 {
			continue
		}
		var parts []string
		for _, cpu := range slices.Sorted(maps.Keys(md.IPIs.PerCPU)) {
			c := md.IPIs.PerCPU[cpu]
			parts = append(parts, fmt.Sprintf("cpu%s CAL %.3f RES %.3f TLB %.3f", cpu, c.CAL, c.RES, c.TLB))
		}
		fmt.Fprintf(w, "  IPIs per fault by CPU, %s: %s\n", name, strings.Join(parts, "; "))
	}
	for _, name := range r.ModeOrder() {
		if b := r.Modes[name].Breakdown; b != nil {
			fmt.Fprintf(w, "  fault breakdown, %s: worker per fault %.2f µs = pager read %.2f + pager work %.2f + ioctls %.2f + rest %.2f (trap, wake-ups, scheduling)\n",
				name, b.WorkerMeanNS/1e3, b.ReadNS/1e3, b.WorkNS/1e3, b.IoctlNS/1e3, b.RestNS/1e3)
		}
	}
	if r.Machine.Nodes > 1 {
		for _, name := range r.ModeOrder() {
			md := r.Modes[name]
			var parts []string
			for _, n := range slices.Sorted(maps.Keys(md.Placement)) {
				parts = append(parts, fmt.Sprintf("node%d:%d", n, md.Placement[n]))
			}
			fmt.Fprintf(w, "  placement %s: %s\n", name, strings.Join(parts, " "))
		}
	}

	if fa := r.FaultAround; fa != nil {
		fmt.Fprintf(w, "\nsequential access, per-page cost (µs): kernel first touch %s; raw floor fault-around 1 %s, %d %s; raw_xproc fault-around %d %s; local fault-around 1 %s, %d %s\n",
			us(fa.KernelPerPageNS), us(fa.RawFA1PerPageNS), fa.Pages, us(fa.RawPerPageNS), fa.Pages, us(fa.RawXprocPerPageNS), us(fa.LocalFA1PerPageNS), fa.Pages, us(fa.LocalPerPageNS))
	}
	if f := r.Forwarded; f != nil {
		fmt.Fprintf(w, "forwarded faults (core-owned dataspace, local runs): %d, median %s µs, p99 %s µs", f.Faults, us(float64(f.MedianNS)), us(float64(f.P99NS)))
		if f.VCoreMedianNS > 0 {
			fmt.Fprintf(w, " (vcore round trip median %s µs, p99 %s µs)", us(float64(f.VCoreMedianNS)), us(float64(f.VCoreP99NS)))
		}
		fmt.Fprintln(w)
	}
	if mem := r.Memory; mem != nil {
		for _, mode := range slices.Sorted(maps.Keys(mem.VmHWM)) {
			var parts []string
			for _, d := range slices.Sorted(maps.Keys(mem.VmHWM[mode])) {
				parts = append(parts, fmt.Sprintf("%s %.1f MiB", d, float64(mem.VmHWM[mode][d])/(1<<20)))
			}
			fmt.Fprintf(w, "peak RSS (VmHWM), %s runs: %s\n", mode, strings.Join(parts, ", "))
		}
		if mem.TrackingBytesPerPage > 0 {
			fmt.Fprintf(w, "pager tracking memory: %.1f bytes per registered page\n", mem.TrackingBytesPerPage)
		}
	}

	rt := r.Ratios
	fmt.Fprintf(w, "\nratios: central÷local median %s, p99 %s; local÷raw floor median %s; raw floor÷kernel median %s\n",
		ratioText(rt.CentralOverLocalMedian), ratioText(rt.CentralOverLocalP99), ratioText(rt.LocalOverRawMedian), ratioText(rt.RawOverKernelMedian))
	fmt.Fprintf(w, "        framework over its floor (local ÷ raw_xproc): median %s, p99 %s (rep by rep %s)\n",
		ratioText(rt.LocalOverRawXprocMedian), ratioText(rt.LocalOverRawXprocP99), ratioText(rt.LocalOverRawXprocP99PerRep))
	if r.FaultAround != nil {
		fmt.Fprintf(w, "        fault-around %d per page ÷ kernel first touch: local %s, raw floor %s, raw_xproc %s (rep by rep); local ÷ raw_xproc %s (rep by rep)\n",
			r.FaultAround.Pages, ratioText(rt.FaultAroundPerPageOverKernel), ratioText(rt.RawFaultAroundOverKernel),
			ratioText(rt.RawXprocFaultAroundOverKernel), ratioText(rt.FaultAroundPerPageOverRawXproc))
	}
	if rt.PrefetchPerPageOverKernel > 0 || rt.PrefetchOnOverOff > 0 {
		fmt.Fprintf(w, "        prefetch: local_prefetch per page ÷ kernel first touch (seq) %s; prefetch on ÷ off per page (--pattern %s) %s\n",
			ratioText(rt.PrefetchPerPageOverKernel), r.Params.Pattern, ratioText(rt.PrefetchOnOverOff))
	}
	if rt.PrefetchFloorPerPageOverKernel > 0 || rt.PrefetchPerPageOverFloor > 0 {
		fmt.Fprintf(w, "        prefetch floor (%s: %d pages per copy, in-process) per page ÷ kernel %s; local_prefetch ÷ that floor %s, ÷ kernel %s (rep by rep)\n",
			ModePrefetchFloor, PrefetchFloorPages, ratioText(rt.PrefetchFloorPerPageOverKernel), ratioText(rt.PrefetchPerPageOverFloor),
			ratioText(rt.PrefetchPerPageOverKernelPerRep))
	}
	if rt.PrefetchXprocFloorPerPageOverKernel > 0 || rt.PrefetchPerPageOverXprocFloor > 0 {
		fmt.Fprintf(w, "        prefetch floor outside the worker (%s: %d pages per copy, own process) per page ÷ kernel %s; local_prefetch ÷ that floor %s (rep by rep)\n",
			ModePrefetchFloorXproc, PrefetchFloorPages, ratioText(rt.PrefetchXprocFloorPerPageOverKernel), ratioText(rt.PrefetchPerPageOverXprocFloor))
	}
	if rt.ReplicatedOverLocalMedian > 0 || rt.ForwardedOverLocalMedian > 0 {
		fmt.Fprintf(w, "        core-owned read-only dataspace ÷ local, medians: replicated %s, forwarded (first fault) %s\n",
			ratioText(rt.ReplicatedOverLocalMedian), ratioText(rt.ForwardedOverLocalMedian))
	}
	if rt.RawCrossOverRawXprocMedian > 0 || rt.ForwardedOverRawCrossMedian > 0 {
		fmt.Fprintf(w, "        forwarded floor (raw_cross ÷ raw_xproc, medians) %s; forwarded ÷ raw_cross %s\n",
			ratioText(rt.RawCrossOverRawXprocMedian), ratioText(rt.ForwardedOverRawCrossMedian))
	}
	if rt.CentralOverLocalVsFloors > 0 {
		fmt.Fprintf(w, "        central ÷ local against what the floors allow, (central ÷ local) ÷ (raw_cross ÷ raw_xproc): %s\n",
			ratioText(rt.CentralOverLocalVsFloors))
	}
	ipis := func(v float64, ok bool) string {
		if !ok || v < 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.3f", v)
	}
	_, okL := r.measured(ModeLocal)
	_, okC := r.measured(ModeCentral)
	fmt.Fprintf(w, "        IPIs per fault: local %s, central %s\n", ipis(rt.LocalIPIsPerFault, okL), ipis(rt.CentralIPIsPerFault, okC))
	fmt.Fprintf(w, "        this machine's own penalties: cross-CPU (raw_cross ÷ raw_floor) %s, cross-address-space (raw_xproc ÷ raw_floor) %s;"+
		" central ÷ the bare cross-CPU round trip (raw_cross) %s\n",
		ratioText(rt.RawCrossOverRawMedian), ratioText(rt.RawXprocOverRawMedian), ratioText(rt.CentralOverRawCrossMedian))

	return nil
}

// Text is the target's line in the text report.
func (t Target) Text() string {
	switch t.Status {
	case StatusNotMeasured:
		return fmt.Sprintf("%-12s  %s (goal %s)", "not measured", t.Name, t.Goal)
	case StatusUnattainable:
		return fmt.Sprintf("%-12s  %s = %.3g (goal %s): not attainable on this machine (its floor, %s, is %.3g); judged instead: %s",
			"UNATTAINABLE", t.Name, t.Value, t.Goal, t.FloorKey, t.Floor, t.Instead)
	case StatusInfo:
		return fmt.Sprintf("%-12s  %s = %.3g (goal %s; not judged: %s is judged as written, its floor meets it or was not measured)",
			"info", t.Name, t.Value, t.Goal, t.For)
	}
	line := fmt.Sprintf("%-12s  %s = %.3g (goal %s)", t.Status, t.Name, t.Value, t.Goal)
	switch {
	case t.For != "":
		line += fmt.Sprintf(" — judged in place of %s, which this machine's floor cannot meet", t.For)
	case t.FloorKey != "" && t.Floor > 0:
		line += fmt.Sprintf(" (attainable: its floor, %s, is %.3g)", t.FloorKey, t.Floor)
	case t.FloorKey != "":
		line += fmt.Sprintf(" (its floor, %s, not measured: judged as written)", t.FloorKey)
	}
	return line
}

// WriteJSON writes the report as indented JSON to path.
func (r *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encode report: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// WriteSVG plots the latency CDF of every measured mode to path.
func (r *Report) WriteSVG(path string) error {
	var series []plot.Series
	for _, name := range r.ModeOrder() {
		if h := r.Modes[name].Hist(); h != nil && h.Count() > 0 {
			series = append(series, plot.Series{Name: name, Hist: h})
		}
	}
	if r.Forwarded != nil && r.Forwarded.hist != nil {
		series = append(series, plot.Series{Name: "forwarded (core-owned)", Hist: r.Forwarded.hist})
	}
	if c := r.Checkpoint; c != nil && c.restoreHist != nil {
		series = append(series, plot.Series{Name: "restore: restored pages (read)", Hist: c.restoreHist},
			plot.Series{Name: "restore: local pages (read)", Hist: c.localHist})
	}
	title := fmt.Sprintf("vcored bench: first-touch latency, %d pages, %s, %d CPUs / %d node(s), %s",
		r.Params.Pages, r.Params.Pattern, r.Machine.CPUs, r.Machine.Nodes, r.Machine.Kernel)
	if err := plot.CDFFile(path, title, series); err != nil {
		return fmt.Errorf("bench: svg: %w", err)
	}
	return nil
}
