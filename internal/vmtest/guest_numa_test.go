package vmtest

// Kernel-level multi-node checks: what the kernel does with mbind, with
// first touch and UFFDIO_COPY on unbound memory, and with a cgroup2 cpuset.
// They need at least two NUMA nodes and skip on hosts with fewer; `make
// vmtest` runs them in qemu guests with 2 and 4 nodes, where a skip would
// hide a broken guest and is a failure instead.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

const sysNode = "/sys/devices/system/node"

// inGuest reports whether the test runs in a vmtest guest (GuestEnv).
func inGuest() bool { return os.Getenv("VMTEST") == "1" }

// hostNodes returns the online NUMA nodes and their CPUs, from sysfs.
func hostNodes(t *testing.T) (hw.NodeSet, map[hw.Node]hw.CPUSet) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sysNode, "online"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return hw.NewSet[hw.Node](0), nil // a kernel without CONFIG_NUMA
		}
		t.Fatal(err)
	}
	nodes, err := hw.ParseNodeSet(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s/online: %v", sysNode, err)
	}
	cpus := map[hw.Node]hw.CPUSet{}
	for _, n := range nodes.Slice() {
		p := filepath.Join(sysNode, fmt.Sprintf("node%d", n), "cpulist")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if cpus[n], err = hw.ParseCPUSet(strings.TrimSpace(string(b))); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
	}
	return nodes, cpus
}

// needNodes skips the test unless the host has at least n NUMA nodes; in a
// vmtest guest it fails instead, and checks the guest has the node count
// the harness configured.
func needNodes(t *testing.T, n int) (hw.NodeSet, map[hw.Node]hw.CPUSet) {
	t.Helper()
	nodes, cpus := hostNodes(t)
	if inGuest() {
		if want := os.Getenv("VMTEST_NODES"); want != strconv.Itoa(nodes.Len()) {
			t.Fatalf("guest has %d NUMA nodes (%s), the harness configured VMTEST_NODES=%s", nodes.Len(), nodes, want)
		}
	}
	if nodes.Len() < n {
		if inGuest() {
			t.Fatalf("needs %d NUMA nodes, the guest has %d", n, nodes.Len())
		}
		t.Skipf("needs %d NUMA nodes, this host has %d (%s); run it in a qemu guest: make vmtest", n, nodes.Len(), nodes)
	}
	return nodes, cpus
}

// pagesOf maps npages anonymous pages and returns the mapping and the
// address of each page. The mapping is unmapped when the test ends.
func pagesOf(t *testing.T, npages int) ([]byte, []uintptr) {
	t.Helper()
	ps := linux.PageSize()
	b, err := linux.Mmap(npages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := linux.Munmap(b); err != nil {
			t.Error(err)
		}
	})
	addrs := make([]uintptr, npages)
	base := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	for i := range addrs {
		addrs[i] = base + uintptr(i*ps)
	}
	return b, addrs
}

// countNodes tallies move_pages results: node id → pages (negative keys are
// errnos, e.g. -2 = ENOENT, not present).
func countNodes(t *testing.T, addrs []uintptr) map[int]int {
	t.Helper()
	st, err := linux.PageNodes(0, addrs)
	if err != nil {
		t.Fatal(err)
	}
	c := map[int]int{}
	for _, s := range st {
		c[s]++
	}
	return c
}

// onCPUs runs f on a fresh OS thread pinned to cpus. The thread is thrown
// away afterwards (the goroutine exits still locked), so the pin never leaks
// into other tests.
func onCPUs(t *testing.T, cpus hw.CPUSet, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the runtime ends the thread
		if err := linux.SetThreadAffinity(cpus); err != nil {
			done <- err
			return
		}
		cpu, node, err := linux.Getcpu()
		if err == nil && !cpus.Contains(cpu) {
			err = fmt.Errorf("pinned to %s but running on cpu %d (node %d)", cpus, cpu, node)
		}
		if err == nil {
			err = f()
		}
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestMbindPlacesPagesOnNode binds a region to each node in turn with
// mbind(MPOL_BIND), touches it from this thread wherever it runs, and
// checks move_pages reports every page on the bound node.
func TestMbindPlacesPagesOnNode(t *testing.T) {
	nodes, _ := needNodes(t, 2)
	const npages = 64
	for _, n := range nodes.Slice() {
		b, addrs := pagesOf(t, npages)
		if err := linux.Mbind(addrs[0], uintptr(len(b)), linux.MPOL_BIND, hw.NewSet(n), linux.MPOL_MF_STRICT); err != nil {
			t.Fatal(err)
		}
		for i := range addrs {
			b[i*linux.PageSize()] = 1
		}
		got := countNodes(t, addrs)
		t.Logf("placement: mbind(MPOL_BIND, node %d), %d pages touched: %s", n, npages, fmtCounts(got))
		if got[int(n)] != npages {
			t.Errorf("mbind to node %d: pages by node %s, want all %d on node %d", n, fmtCounts(got), npages, n)
		}
	}
}

// TestUnboundPagesFollowTheAllocatingCPU checks the kernel fact the pager
// design rests on: with no memory policy on the region, a page lands on the
// node of the CPU that allocates it — the toucher on first touch, and the
// thread calling UFFDIO_COPY (the pager), not the faulting one, for
// userfaultfd. So a central pager on node 0 puts every page on node 0.
func TestUnboundPagesFollowTheAllocatingCPU(t *testing.T) {
	nodes, cpus := needNodes(t, 2)
	const npages = 32
	ps := linux.PageSize()
	src := make([]byte, npages*ps)
	for i := range src {
		src[i] = byte(i)
	}
	for _, n := range nodes.Slice() {
		if cpus[n].IsEmpty() {
			continue // a memory-only node runs no thread
		}
		t.Run(fmt.Sprintf("first-touch/node%d", n), func(t *testing.T) {
			b, addrs := pagesOf(t, npages)
			onCPUs(t, cpus[n], func() error {
				for i := range addrs {
					b[i*ps] = 1
				}
				return nil
			})
			got := countNodes(t, addrs)
			t.Logf("placement: first touch on cpus %s (node %d), no policy: %s", cpus[n], n, fmtCounts(got))
			if got[int(n)] != npages {
				t.Errorf("pages by node %s, want all %d on node %d", fmtCounts(got), npages, n)
			}
		})
		t.Run(fmt.Sprintf("uffd-copy/node%d", n), func(t *testing.T) {
			u, err := linux.OpenUffd()
			if errors.Is(err, linux.ErrNotSupported) {
				t.Skip(err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			if _, err := u.API(0); err != nil {
				t.Fatal(err)
			}
			b, addrs := pagesOf(t, npages)
			if _, err := u.Register(addrs[0], uintptr(len(b)), linux.UFFDIO_REGISTER_MODE_MISSING); err != nil {
				t.Fatal(err)
			}
			onCPUs(t, cpus[n], func() error {
				copied, err := u.Copy(addrs[0], src, 0)
				if err == nil && copied != int64(len(src)) {
					err = fmt.Errorf("UFFDIO_COPY copied %d of %d bytes", copied, len(src))
				}
				return err
			})
			got := countNodes(t, addrs)
			t.Logf("placement: UFFDIO_COPY from cpus %s (node %d) into an unbound region: %s", cpus[n], n, fmtCounts(got))
			if got[int(n)] != npages {
				t.Errorf("pages by node %s, want all %d on node %d (the copier's node)", fmtCounts(got), npages, n)
			}
			if b[ps+1] != src[ps+1] {
				t.Errorf("copied content: byte %d is %d, want %d", ps+1, b[ps+1], src[ps+1])
			}
		})
	}
}

// cgroup2Cpuset returns the cgroup2 root when it is mounted at
// /sys/fs/cgroup with the cpuset controller enabled for children.
func cgroup2Cpuset(t *testing.T) string {
	t.Helper()
	const root = "/sys/fs/cgroup"
	b, err := os.ReadFile(filepath.Join(root, "cgroup.subtree_control"))
	reason := ""
	switch {
	case err != nil:
		reason = fmt.Sprintf("no cgroup2 at %s (%v)", root, err)
	case !strings.Contains(" "+strings.TrimSpace(string(b))+" ", " cpuset "):
		reason = fmt.Sprintf("cpuset is not enabled in %s/cgroup.subtree_control (%q)", root, strings.TrimSpace(string(b)))
	}
	if reason != "" {
		if inGuest() {
			t.Fatal(reason)
		}
		t.Skip(reason)
	}
	return root
}

// TestHelperCpusetChild is not a test: TestCgroup2CpusetConfines runs the
// test binary as a child in a cgroup with it. It reports the CPU it runs on
// and where fresh pages land, then waits for stdin to close.
func TestHelperCpusetChild(t *testing.T) {
	if os.Getenv("VMTEST_HELPER") != "cpuset-child" {
		t.Skip("helper process for TestCgroup2CpusetConfines")
	}
	const npages = 16
	b, addrs := pagesOf(t, npages)
	for i := range addrs {
		b[i*linux.PageSize()] = 1
	}
	st, err := linux.PageNodes(0, addrs)
	if err != nil {
		t.Fatal(err)
	}
	cpu, node, err := linux.Getcpu()
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, x := range st {
		s = append(s, strconv.Itoa(x))
	}
	fmt.Printf("HELPER cpu=%d node=%d pages=%s\n", cpu, node, strings.Join(s, ","))
	io.Copy(io.Discard, os.Stdin)
}

// TestCgroup2CpusetConfines creates a child cgroup with the last node's
// CPUs in cpuset.cpus and the node in cpuset.mems, starts a process in it
// (clone3 CLONE_INTO_CGROUP), and checks the kernel confines it: its
// Cpus_allowed_list and Mems_allowed_list, the CPU it runs on, and where the
// pages it touches land.
func TestCgroup2CpusetConfines(t *testing.T) {
	nodes, cpus := needNodes(t, 2)
	root := cgroup2Cpuset(t)
	last := nodes.Slice()[nodes.Len()-1]
	if cpus[last].IsEmpty() {
		t.Skipf("node %d has no CPUs", last)
	}
	dir := filepath.Join(root, fmt.Sprintf("vmtest-cpuset-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	write := func(file, val string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0o644); err != nil {
			t.Fatalf("write %q to %s: %v", val, filepath.Join(dir, file), err)
		}
	}
	write("cpuset.cpus", cpus[last].String())
	write("cpuset.mems", hw.NewSet(last).String())
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperCpusetChild$")
	cmd.Env = append(os.Environ(), "VMTEST_HELPER=cpuset-child")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v", err)
		}
	}()
	var report string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "HELPER ") {
			report = strings.TrimPrefix(sc.Text(), "HELPER ")
			break
		}
	}
	go io.Copy(io.Discard, stdout)
	if report == "" {
		t.Fatal("helper printed no report")
	}

	pid := cmd.Process.Pid
	procCg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	field := func(name string) string {
		for line := range strings.Lines(string(status)) {
			if k, v, ok := strings.Cut(line, ":"); ok && k == name {
				return strings.TrimSpace(v)
			}
		}
		t.Fatalf("/proc/%d/status has no %s", pid, name)
		return ""
	}
	cpuList, memList := field("Cpus_allowed_list"), field("Mems_allowed_list")
	t.Logf("placement: cgroup %s cpuset.cpus=%s cpuset.mems=%d: pid %d in %s, Cpus_allowed_list=%s Mems_allowed_list=%s, helper: %s",
		filepath.Base(dir), cpus[last], last, pid, strings.TrimSpace(string(procCg)), cpuList, memList, report)

	if want := "0::/" + filepath.Base(dir); strings.TrimSpace(string(procCg)) != want {
		t.Errorf("/proc/%d/cgroup = %q, want %q", pid, strings.TrimSpace(string(procCg)), want)
	}
	if gotCPUs, err := hw.ParseCPUSet(cpuList); err != nil || !gotCPUs.Equal(cpus[last]) {
		t.Errorf("Cpus_allowed_list = %q, want %s (node %d's CPUs)", cpuList, cpus[last], last)
	}
	if memList != hw.NewSet(last).String() {
		t.Errorf("Mems_allowed_list = %q, want %d", memList, last)
	}
	// The helper's own view: the CPU it ran on and where its pages landed.
	var cpu, node int
	var pages string
	if _, err := fmt.Sscanf(report, "cpu=%d node=%d pages=%s", &cpu, &node, &pages); err != nil {
		t.Fatalf("helper report %q: %v", report, err)
	}
	if !cpus[last].Contains(hw.CPU(cpu)) || node != int(last) {
		t.Errorf("helper ran on cpu %d (node %d), want a CPU of node %d (%s)", cpu, node, last, cpus[last])
	}
	for _, p := range strings.Split(pages, ",") {
		if p != strconv.Itoa(int(last)) {
			t.Errorf("helper's pages landed on %s, want all on node %d", pages, last)
			break
		}
	}
}

// fmtCounts renders a node → pages tally as "node1:64" (errnos as
// "errno-2:3"), in key order.
func fmtCounts(c map[int]int) string {
	keys := make([]int, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		if k < 0 {
			parts = append(parts, fmt.Sprintf("errno%d:%d", k, c[k]))
		} else {
			parts = append(parts, fmt.Sprintf("node%d:%d", k, c[k]))
		}
	}
	return strings.Join(parts, " ")
}
