package topology_test

// Multi-node checks of Host() against a real kernel. They need at least two
// NUMA nodes and skip on hosts with fewer; `make vmtest` runs them in qemu
// guests whose shape the harness exports (VMTEST_NODES,
// VMTEST_CPUS_PER_NODE, VMTEST_MEM_PER_NODE; see internal/vmtest), where
// Host() must find exactly that shape and a skip is a failure.

import (
	"os"
	"strconv"
	"testing"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// guestShape returns the topology the vmtest harness configured, ok=false
// outside a vmtest guest.
func guestShape(t *testing.T) (nodes, cpusPerNode int, memPerNode hw.Bytes, ok bool) {
	t.Helper()
	if os.Getenv("VMTEST") != "1" {
		return 0, 0, 0, false
	}
	atoi := func(k string) int {
		v, err := strconv.Atoi(os.Getenv(k))
		if err != nil || v <= 0 {
			t.Fatalf("vmtest guest: %s=%q is not a positive number", k, os.Getenv(k))
		}
		return v
	}
	return atoi("VMTEST_NODES"), atoi("VMTEST_CPUS_PER_NODE"), hw.Bytes(atoi("VMTEST_MEM_PER_NODE")), true
}

func hostWithNodes(t *testing.T, need int) *topology.Machine {
	t.Helper()
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Nodes) < need {
		if os.Getenv("VMTEST") == "1" {
			t.Fatalf("vmtest guest: Host() found %d NUMA nodes, need %d", len(m.Nodes), need)
		}
		t.Skipf("needs %d NUMA nodes, Host() found %d on this host; run it in a qemu guest: make vmtest", need, len(m.Nodes))
	}
	return m
}

// TestHostMatchesGuestTopology checks that Host() sees the NUMA shape qemu
// was given: node i holds CPUs i*C .. i*C+C-1 in package (socket) i, the
// SLIT says 10 to itself and 21 to every other node, each node has roughly
// its configured memory, and the whole machine is allowed.
func TestHostMatchesGuestTopology(t *testing.T) {
	m := hostWithNodes(t, 2)
	nodes, per, mem, ok := guestShape(t)
	if !ok {
		t.Skip("not in a vmtest guest (VMTEST unset): the expected shape is unknown; TestHostNodesConsistent checks this host")
	}
	for _, n := range m.Nodes {
		t.Logf("topology: node %d cpus %s distances %v memtotal %s", n.ID, n.CPUs, n.Distances, n.MemTotal)
	}
	if len(m.Nodes) != nodes {
		t.Fatalf("Host() found %d nodes, qemu was given %d", len(m.Nodes), nodes)
	}
	var all []hw.CPU
	for i, n := range m.Nodes {
		if n.ID != hw.Node(i) {
			t.Errorf("Nodes[%d].ID = %d, want %d", i, n.ID, i)
		}
		var want []hw.CPU
		for c := i * per; c < (i+1)*per; c++ {
			want = append(want, hw.CPU(c))
		}
		all = append(all, want...)
		if !n.CPUs.Equal(hw.NewSet(want...)) {
			t.Errorf("node %d CPUs = %s, want %s", n.ID, n.CPUs, hw.NewSet(want...))
		}
		if n.CPULess {
			t.Errorf("node %d is marked CPU-less", n.ID)
		}
		if len(n.Distances) != nodes {
			t.Errorf("node %d has %d distances, want %d", n.ID, len(n.Distances), nodes)
		}
		for j, d := range n.Distances {
			want := 21
			if j == i {
				want = 10
			}
			if d != want {
				t.Errorf("distance node %d → node %d = %d, want %d", i, j, d, want)
			}
			if got := m.Distance(n.ID, hw.Node(j)); got != want {
				t.Errorf("Machine.Distance(%d, %d) = %d, want %d", i, j, got, want)
			}
		}
		// The kernel keeps some of each node's RAM (node 0 most: the
		// kernel image and the initramfs), so only bound it.
		if n.MemTotal <= mem/2 || n.MemTotal > mem {
			t.Errorf("node %d MemTotal = %s, want in (%s, %s]", n.ID, n.MemTotal, mem/2, mem)
		}
	}
	online := m.OnlineCPUs()
	if !online.Equal(hw.NewSet(all...)) {
		t.Errorf("online CPUs = %s, want %s", online, hw.NewSet(all...))
	}
	for _, c := range m.CPUs {
		if !c.Online {
			continue
		}
		wantNode := hw.Node(int(c.ID) / per)
		if c.Node != wantNode {
			t.Errorf("cpu %d: Node = %d, want %d", c.ID, c.Node, wantNode)
		}
		if c.Package != int(wantNode) {
			t.Errorf("cpu %d: Package = %d, want %d (qemu puts one socket per node)", c.ID, c.Package, wantNode)
		}
	}
	// /init runs the tests in the root cgroup with no affinity set.
	if !m.AllowedCPUs.Equal(online) {
		t.Errorf("AllowedCPUs = %s, want every online CPU %s", m.AllowedCPUs, online)
	}
	if !m.AllowedNodes.Equal(m.NodeIDs()) {
		t.Errorf("AllowedNodes = %s, want every node %s", m.AllowedNodes, m.NodeIDs())
	}
}

// TestHostNodesConsistent checks what holds on any multi-node host: every
// online CPU is in exactly one node's CPU list and names that node, and the
// distance table is square, 10 on the diagonal, symmetric and larger off it.
func TestHostNodesConsistent(t *testing.T) {
	m := hostWithNodes(t, 2)
	owner := map[hw.CPU]hw.Node{}
	for _, n := range m.Nodes {
		for _, c := range n.CPUs.Slice() {
			if prev, dup := owner[c]; dup {
				t.Errorf("cpu %d is in node %d and node %d", c, prev, n.ID)
			}
			owner[c] = n.ID
		}
	}
	for _, c := range m.CPUs {
		if !c.Online {
			continue
		}
		if n, ok := owner[c.ID]; !ok || n != c.Node {
			t.Errorf("cpu %d says node %d, node CPU lists say %d (listed: %v)", c.ID, c.Node, n, ok)
		}
	}
	for i, a := range m.Nodes {
		if len(a.Distances) != len(m.Nodes) {
			t.Fatalf("node %d has %d distances for %d nodes", a.ID, len(a.Distances), len(m.Nodes))
		}
		for j, b := range m.Nodes {
			d, back := m.Distance(a.ID, b.ID), m.Distance(b.ID, a.ID)
			switch {
			case i == j && d != 10:
				t.Errorf("distance node %d → itself = %d, want 10", a.ID, d)
			case i != j && d <= 10:
				t.Errorf("distance node %d → node %d = %d, want > 10", a.ID, b.ID, d)
			case d != back:
				t.Errorf("distance node %d → node %d = %d but back = %d", a.ID, b.ID, d, back)
			}
		}
	}
}
