package vcore

import (
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// Pager placement (pager_placement): where the pager threads run.

// placementThreads is pager.Options.Threads for placement p: same-cpu is
// one thread per CPU pinned to it (0), sibling as many threads each
// allowed on every CPU of the partition.
func placementThreads(p config.PagerPlacement, cpus hw.CPUSet) int {
	if p == config.PlacementSibling {
		return cpus.Len()
	}
	return 0
}

// choosePlacement resolves the configured placement for a partition of
// cpus; measure returns the mean cost per fault of a placement. It returns
// the placement and why, in words for the log and /v1/pager.
func choosePlacement(want config.PagerPlacement, cpus hw.CPUSet, measure func(config.PagerPlacement) (time.Duration, error)) (config.PagerPlacement, string) {
	if cpus.Len() < 2 {
		if want == config.PlacementSibling {
			return config.PlacementSameCPU, fmt.Sprintf("sibling asked for, but the partition has one CPU (%s): same-cpu only", cpus)
		}
		return config.PlacementSameCPU, fmt.Sprintf("the partition has one CPU (%s): same-cpu only, nothing to measure", cpus)
	}
	if want != config.PlacementAuto {
		return want, "configured"
	}
	same, errS := measure(config.PlacementSameCPU)
	sib, errB := measure(config.PlacementSibling)
	switch {
	case errS != nil && errB != nil:
		return config.PlacementSameCPU, fmt.Sprintf("auto: neither could be measured (same-cpu: %v; sibling: %v): same-cpu", errS, errB)
	case errB != nil:
		return config.PlacementSameCPU, fmt.Sprintf("auto: sibling could not be measured (%v): same-cpu", errB)
	case errS != nil:
		return config.PlacementSibling, fmt.Sprintf("auto: same-cpu could not be measured (%v): sibling", errS)
	case sib < same:
		return config.PlacementSibling, fmt.Sprintf("auto: measured sibling %s per fault, same-cpu %s", sib, same)
	}
	return config.PlacementSameCPU, fmt.Sprintf("auto: measured same-cpu %s per fault, sibling %s", same, sib)
}

// placementProbePages is how many faults one measurement takes.
const placementProbePages = 256

// measurePlacement serves placementProbePages first touches of a private
// zero region of this process, touched by a thread pinned to the first
// CPU of cpus, with a Pager placed as p, and returns the mean time per
// touch.
func measurePlacement(p config.PagerPlacement, cpus hw.CPUSet) (time.Duration, error) {
	pg, err := pager.New(pager.Options{CPUs: cpus, Threads: placementThreads(p, cpus)})
	if err != nil {
		return 0, err
	}
	defer pg.Close()
	ps := linux.PageSize()
	mem, err := linux.Mmap(placementProbePages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		return 0, err
	}
	stuck := false
	defer func() {
		if !stuck { // a toucher still running would fault on an unmapped page
			linux.Munmap(mem)
		}
	}()
	u, err := linux.OpenUffd()
	if err != nil {
		return 0, err
	}
	if err := pg.AddUffd(1, u, 0, true); err != nil {
		u.Close()
		return 0, err
	}
	defer pg.RemoveUffd(1)
	base := uintptr(unsafe.Pointer(&mem[0]))
	if err := pg.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "placement-probe", Content: content.Zero()}); err != nil {
		return 0, err
	}
	type res struct {
		d   time.Duration
		err error
	}
	done := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		first := cpus.Slice()[0]
		if err := linux.SetThreadAffinity(hw.NewSet(first)); err != nil {
			done <- res{err: err}
			return
		}
		start := time.Now()
		for off := 0; off < len(mem); off += ps {
			mem[off] = 1
		}
		done <- res{d: time.Since(start) / placementProbePages}
	}()
	select {
	case r := <-done:
		return r.d, r.err
	case <-time.After(30 * time.Second):
		// The toucher is stuck in a fault; closing the uffd lets it go on
		// with zero pages, so its mapping must stay.
		stuck = true
		return 0, fmt.Errorf("placement probe: %d faults took over 30 s", placementProbePages)
	}
}
