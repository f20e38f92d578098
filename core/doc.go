// Package core is the root daemon. It owns the machine's topology and the
// ledger of partition leases, keeps the housekeeping CPUs for itself, owns
// the shared (core-owned) dataspaces, and is the fallback pager:
//
//   - it grants each vcore an exclusive partition (a node's CPUs, or a subset,
//     and memory) and creates the partition's cgroup;
//   - it holds a dup of every worker userfaultfd a vcore registers, so it can
//     resolve faults the vcore forwards (core-owned dataspaces), serve every
//     fault itself in the single-pager baseline (pager = "central"), and take
//     over a dead vcore's faults until a new vcore re-claims the partition;
//   - when a vcore disappears its partition is orphaned: the CPUs stay
//     reserved while anything runs there; after the orphan grace period core
//     stops what is left and frees the lease.
//
// Core never touches a live vcore's subsystems. Killing core (even with
// SIGKILL) leaves every vcore and subsystem running; vcores re-register with
// the next core, which rebuilds its view from the ledger file plus those
// re-registrations.
package core
