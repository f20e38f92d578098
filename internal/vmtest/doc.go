// Package vmtest runs the project's multi-node integration tests inside a
// qemu guest that has a real, emulated NUMA topology.
//
// This host has one NUMA node, so every claim about nodes (mbind to another
// node, cpuset.mems, where pages land, a vcore per node, cgroup v2) is proven
// on a stock Debian kernel booted under qemu (TCG; KVM is not usable on this
// machine class) with N nodes of C CPUs each. The harness:
//
//  1. builds vcored and the test binaries of the guest packages statically
//     (CGO_ENABLED=0, `go test -c`);
//  2. packs them with busybox-static, the packages' testdata trees and a
//     generated /init into a newc cpio initramfs (written here, no cpio tool);
//  3. boots qemu with `-numa node,…` / `-numa dist,…` options (distance 10
//     local, 21 remote), streams the guest console, and
//  4. exits with the tests' exit code, parsed from the sentinel line the
//     guest prints last ("VMTEST-EXIT <code>"); ExitTimeout when the guest ran
//     out of time, ExitNoSentinel when it panicked or stopped without one.
//
// Inside the guest /init mounts proc, sysfs, devtmpfs, tmpfs (/tmp, /run) and
// cgroup2 on /sys/fs/cgroup (+cpuset +memory +pids enabled for children),
// brings lo up, sets kernel.numa_balancing=0 (with it on, move_pages
// misreports present pages on 6.1), exports VMTEST=1, VMTEST_NODES, VMTEST_CPUS_PER_NODE and
// VMTEST_MEM_PER_NODE (see GuestEnv), puts vcored on PATH (also exported as
// VCORED), and runs every test binary from its package directory (so
// testdata/ resolves as under `go test`).
//
// Adding a package to the guest: name its multi-node tests *_numa_test.go
// (any package holding one is picked up automatically), or append its path to
// CorePackages. Tests that need n nodes skip on hosts with fewer, saying how
// many they found; in the guest they read the expected shape from GuestEnv.
//
// Tools a test needs in the guest are added with --extra HOST[=GUEST]
// (default GUEST /usr/bin/<name>): a dynamically linked binary comes with
// its ELF interpreter and the libraries ldd lists, at their host paths
// (WithLibs). `make vmtest-nri` uses it for containerd, the shim, ctr,
// crictl (static builds) and Debian's runc.
//
// Entry points: `make vmtest` (2 then 4 nodes), `make vmtest2`, `make vmtest4`,
// `make vmtest-nri`, or `go run ./internal/vmtest/cmd/vmtest --nodes 2,4 --cpus-per-node 2`.
package vmtest
