package bench

import (
	"fmt"

	"github.com/vcored/vcored/internal/config"
)

// ModeSpec is one row of the mode registry: how the runs of a mode are
// made and what the mode is for. A new mode (prefetch, replicas, …) is a
// new row here, its ratios a new field of Ratios, its goals new rows of
// targetSpecs; the plan, --modes, --help, the text table and the JSON
// follow the registry.
type ModeSpec struct {
	Name string
	// Family is what --modes selects the mode by besides its own name
	// (the reference floors all belong to raw_floor).
	Family string
	// Daemon is the pager mode of the daemons serving the workers; "" for
	// modes whose workers the bench runs directly.
	Daemon config.PagerMode
	Worker WorkerMode
	// Shared gives every worker the core-owned dataspace too (its faults
	// are forwarded to core; reported separately).
	Shared bool
	// CrossCPU pins the raw handler to core's CPU instead of the toucher's.
	CrossCPU bool
	// Prefetch turns prefetch on in the workers' own dataspace (prefetch
	// = "sequential").
	Prefetch bool
	// Pattern, if set, is the mode's access pattern whatever --pattern
	// says.
	Pattern Pattern
	// FaultAround is the raw handler's pages per fault (0: one).
	FaultAround int
	// FloorOf lists the modes whose targets need this one (their floor or
	// their reference): --modes naming one of them runs this one too.
	FloorOf []string
	// Zero gives the workers zero-filled content (as the kernel's first
	// touch has) instead of the pattern.
	Zero bool
	// CoreOnly: the workers touch only a core-owned read-only dataspace.
	CoreOnly bool
	// Warm: a warm-up worker per vcore touches it first (fills the
	// vcore's replica); the measured workers start after it.
	Warm bool
	// Ckpt is the role of the checkpoint-scenario workers of a mode
	// (CkptRoleCheckpoint, CkptRoleRestore); "" for the fault modes.
	Ckpt string
	// SyncTracking makes the vcore track writes synchronously
	// (VCORED_SYNC_WRITE_TRACKING=1), as on kernels before 6.7.
	SyncTracking bool
	// OptIn: the mode runs only when --modes names it (or its family).
	OptIn bool
	// Doc says in one line what the mode measures (--help, docs).
	Doc string
}

// Registry lists the bench's main modes in display order. Each runs with
// the bench's access pattern and one page per fault.
var Registry = []ModeSpec{
	{Name: ModeLocal, Family: ModeLocal, Daemon: config.PagerLocal, Worker: WorkerUffd, Shared: true, FloorOf: []string{ModeForwarded},
		Doc: "vcored: each vcore's pagers, on the partition's CPUs, serve its workers' faults"},
	{Name: ModeCentral, Family: ModeCentral, Daemon: config.PagerCentral, Worker: WorkerUffd,
		Doc: "vcored's baseline: one pager thread in core, on core's CPU, serves every fault"},
	{Name: ModeRaw, Family: ModeRaw, Worker: WorkerRaw,
		Doc: "floor: a minimal userfaultfd handler thread in the worker's own process, on the faulting CPU"},
	{Name: ModeRawXproc, Family: ModeRaw, Worker: WorkerXproc, FloorOf: []string{ModeForwarded},
		Doc: "floor of any pager outside the worker: the same handler in a process of its own, on the faulting CPU"},
	{Name: ModeRawCross, Family: ModeRaw, Worker: WorkerRaw, CrossCPU: true, FloorOf: []string{ModeForwarded},
		Doc: "the in-process handler on core's CPU: this machine's bare cross-CPU fault round trip"},
	{Name: ModeKernel, Family: ModeKernel, Worker: WorkerKernel, FloorOf: []string{ModeLocalPrefetch},
		Doc: "the kernel's own first touch of anonymous memory, no userfaultfd"},
	{Name: ModeLocalPrefetch, Family: ModeLocalPrefetch, Daemon: config.PagerLocal, Worker: WorkerUffd, Prefetch: true,
		Pattern: PatternSeq, Zero: true,
		Doc: "local with prefetch on, sequential toucher, zero content: per-page cost against the kernel's first touch" +
			" (with a non-sequential --pattern, local_prefetch_<pattern> runs that pattern with prefetch on, against local)"},
	{Name: ModePrefetchFloorXproc, Family: ModeLocalPrefetch, Worker: WorkerXproc, Pattern: PatternSeq, Zero: true,
		FaultAround: PrefetchFloorPages,
		Doc:         "floor of local_prefetch for a pager outside the worker: the same handler in a process of its own (as raw_xproc)"},
	{Name: ModePrefetchFloor, Family: ModeLocalPrefetch, Worker: WorkerRaw, Pattern: PatternSeq, Zero: true,
		FaultAround: PrefetchFloorPages,
		Doc: fmt.Sprintf("floor of local_prefetch: the in-process minimal handler copying %d pages per fault (the prefetch's copy size),"+
			" sequential, zero content, on the faulting CPU", PrefetchFloorPages)},
	{Name: ModeForwarded, Family: ModeForwarded, Daemon: config.PagerLocal, Worker: WorkerUffd, CoreOnly: true,
		Doc: "first touches of a core-owned read-only dataspace: each fault forwarded by the vcore to core"},
	{Name: ModeReplicated, Family: ModeForwarded, Daemon: config.PagerLocal, Worker: WorkerUffd, CoreOnly: true, Warm: true,
		Doc: "the same, by a second worker on the node after a first one touched every page: served from the vcore's replica"},
	{Name: ModeCheckpoint, Family: ModeCheckpoint, Daemon: config.PagerLocal, Ckpt: CkptRoleCheckpoint, OptIn: true,
		Doc: "a persistent dataspace: a write-heavy loop (a hot set rewritten many times per epoch) with async dirty tracking vs a plain dataspace, a full checkpoint vs dd," +
			" incremental checkpoints of 1 % of the pages (only with --modes)"},
	{Name: ModeCheckpointSync, Family: ModeCheckpoint, Daemon: config.PagerLocal, Ckpt: CkptRoleCheckpoint, SyncTracking: true, OptIn: true,
		Doc: "the same with sync write tracking (the pager takes a fault per first write, as kernels before 6.7 need)"},
	{Name: ModeRestore, Family: ModeRestore, Daemon: config.PagerLocal, Ckpt: CkptRoleRestore, OptIn: true,
		Doc: "restart of a worker with a checkpointed persistent dataspace, at two sizes: time to its first instruction," +
			" lazy first touches vs local faults, a full restore with restore_prefetch vs reading the image (only with --modes)"},
}

// ValidModes are the names --modes accepts: every registered mode.
var ValidModes = func() []string {
	var out []string
	for _, m := range Registry {
		out = append(out, m.Name)
	}
	return out
}()

// LookupMode returns the registry row of name.
func LookupMode(name string) (ModeSpec, bool) {
	for _, m := range Registry {
		if m.Name == name {
			return m, true
		}
	}
	return ModeSpec{}, false
}
