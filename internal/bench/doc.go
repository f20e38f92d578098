// Package bench is the engine of `vcored bench`: it measures page-fault
// latency, IPIs per fault and page placement of workers whose faults are
// served by local pagers (one per vcore, on the partition's CPUs), by the
// single central pager in core, by reference floors (a minimal userfaultfd
// handler in the worker's process on the faulting CPU, the same handler in
// a process of its own, and in the worker's process on core's CPU), and by
// the kernel itself (first touch of anonymous memory) — interleaved in one
// run — and reports the ratios between them, the targets, and a summary
// line saying who won and why in the machine's own terms. The modes are
// one registry (modes.go).
//
// The workers (`vcored worker`, package bench/worker) do the touching and
// timing; this package starts them (directly for the raw, xproc and kernel modes,
// as subsystems of real `vcored core` + `vcored vcore` daemons for the
// local and central modes), collects their result files, reads
// /proc/interrupts around each run, and builds the report, its JSON and
// its plot.
package bench

import "errors"

// ErrUsage marks errors in the caller's parameters (bad mode, pattern, …).
var ErrUsage = errors.New("bench: bad parameter")
