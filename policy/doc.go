// Package policy decides who gets which CPUs and how much memory. Each
// policy is a pure function of its inputs (a topology.Machine value and
// plain sets and sizes): no I/O, no state, no clock. Calling one twice with
// the same inputs gives the same answer, which is what lets core and vcore
// recompute a plan after a restart and find what they granted before.
package policy
