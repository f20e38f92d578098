// Package bench is the engine of `vcored bench`: it measures page-fault
// latency, IPIs per fault and page placement of workers whose faults are
// served by local pagers (one per vcore, on the partition's CPUs), by the
// single central pager in core, by a minimal in-process userfaultfd handler
// (the raw floor), and by the kernel itself (first touch of anonymous
// memory) — interleaved in one run, and reports the ratios between them.
//
// The workers (`vcored worker`, package bench/worker) do the touching and
// timing; this package starts them (directly for the raw and kernel modes,
// as subsystems of real `vcored core` + `vcored vcore` daemons for the
// local and central modes), collects their result files, reads
// /proc/interrupts around each run, and builds the report, its JSON and
// its plot.
package bench

import "errors"

// ErrUsage marks errors in the caller's parameters (bad mode, pattern, …).
var ErrUsage = errors.New("bench: bad parameter")
