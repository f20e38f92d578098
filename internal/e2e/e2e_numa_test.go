package e2e

// Multi-node tests: they need a kernel with at least two NUMA nodes and
// skip elsewhere. `make vmtest` runs them in qemu guests with 2 and 4 nodes
// (cgroup v2 only), where every other test of this package runs too.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
)

func needNodes(t *testing.T, c *cluster, n int) {
	t.Helper()
	if len(c.machine.Nodes) < n {
		t.Skipf("needs %d NUMA nodes, this host has %d (%s); run it in a qemu guest: make vmtest", n, len(c.machine.Nodes), c.machine.NodeIDs())
	}
}

// partitionCPUs is what a vcore of node gets: its usable CPUs minus core's.
func (c *cluster) partitionCPUs(node hw.Node) hw.CPUSet {
	n, _ := c.machine.NodeByID(node)
	lowest, _ := c.machine.AllowedCPUs.Min()
	return n.CPUs.Intersect(c.machine.AllowedCPUs).Difference(hw.NewSet(lowest))
}

// vcoreConfigFor returns a vcore TOML for node with its whole partition.
func (c *cluster) vcoreConfigFor(i int, node hw.Node, subsystems string) string {
	return fmt.Sprintf(`node = %d
core_socket = %q
socket = %q
state_dir = %q
cpus = %q
memory = "384MiB"
stop_grace = "2s"
%s
`, node, c.coreSocket(), c.vcoreSocket(i), c.path(fmt.Sprintf("vcore%d-state", i)), c.partitionCPUs(node), subsystems)
}

// TestNumaVCorePerNode: core plus one vcore per node; each subsystem is
// confined to its node's CPUs and memory (cpuset.cpus / cpuset.mems).
func TestNumaVCorePerNode(t *testing.T) {
	c := newCluster(t)
	needNodes(t, c, 2)
	c.startCore(c.coreConfig(""))
	for i, n := range c.machine.Nodes {
		if c.partitionCPUs(n.ID).IsEmpty() {
			continue
		}
		c.startVCore(i, c.vcoreConfigFor(i, n.ID, strings.Replace(sleeper, `memory = "64MiB"`, `memory = "32MiB"`, 1)))
	}
	for i, n := range c.machine.Nodes {
		cpus := c.partitionCPUs(n.ID)
		if cpus.IsEmpty() {
			continue
		}
		pid := sleeperPid(t, c.vcoreSocket(i))
		gotCPUs, _ := procStatus(pid, "Cpus_allowed_list")
		gotMems, _ := procStatus(pid, "Mems_allowed_list")
		t.Logf("placement: node %d vcore: sleeper pid %d Cpus_allowed_list=%s Mems_allowed_list=%s", n.ID, pid, gotCPUs, gotMems)
		if gotCPUs != cpus.String() || gotMems != fmt.Sprint(n.ID) {
			t.Errorf("node %d: sleeper on cpus %q mems %q, want %q and %d", n.ID, gotCPUs, gotMems, cpus, n.ID)
		}
	}
}

// workerPlacement runs one worker subsystem on the vcore of node and
// returns its per-dataspace placement.
func runPlacementWorker(t *testing.T, c *cluster, node hw.Node, args []string, local, shared string) map[string]map[int]int {
	t.Helper()
	res := c.path("w.json")
	c.startVCore(0, c.vcoreConfigFor(0, node, c.workerSubsystem("w", res, args, local, shared)))
	r := waitResult(t, c, res, 256)
	out := map[string]map[int]int{}
	for _, ds := range r.Dataspaces {
		out[ds.Name] = ds.Placement
	}
	return out
}

// TestNumaPagerPlacement: with no memory policy, a page lands on the node of
// the CPU that resolves its fault. The local pager on node L places an
// unbound dataspace on L; the central pager (core, node 0) places it on
// node 0; a bound dataspace lands on L either way (mbind); faults on a
// core-owned dataspace are forwarded from node L and served by core.
func TestNumaPagerPlacement(t *testing.T) {
	probe := newCluster(t)
	needNodes(t, probe, 2)
	last := probe.machine.Nodes[len(probe.machine.Nodes)-1].ID
	coreNode := probe.machine.Nodes[0].ID
	args := func(ds string, unbound bool) []string {
		a := []string{"--dataspace", ds, "--pages", "256", "--verify", "pattern:7"}
		if unbound {
			a = append(a, "--unbound")
		}
		return a
	}
	shared := `
[[dataspace]]
name = "shared"
size = "1MiB"
content = "pattern"
seed = 7
`
	for _, tc := range []struct {
		name     string
		pager    string
		ds       string
		unbound  bool
		wantNode hw.Node
	}{
		{"local-unbound", "local", "local", true, last},
		{"central-unbound", "central", "local", true, coreNode},
		{"local-bound", "local", "local", false, last},
		{"central-bound", "central", "local", false, last},
		{"forwarded-from-last-node", "local", "shared", false, coreNode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			c.startCore(c.coreConfig(shared), "--pager", tc.pager)
			sharedName := ""
			if tc.ds == "shared" {
				sharedName = "shared"
			}
			pl := runPlacementWorker(t, c, last, args(tc.ds, tc.unbound), patternDS, sharedName)[tc.ds]
			t.Logf("placement: %s: worker on node %d, pager %s, %s: pages per node %v", tc.name, last, tc.pager, tc.ds, pl)
			if pl[int(tc.wantNode)] != 256 {
				t.Errorf("pages per node %v, want all 256 on node %d", pl, tc.wantNode)
			}
			if tc.ds == "shared" {
				if v := pagerStats(t, c.vcoreSocket(0), "shared"); v.Forwarded < 256 {
					t.Errorf("vcore forwarded %d faults, want >= 256", v.Forwarded)
				}
			}
		})
	}
}

// TestNumaBenchQuick: `vcored bench --quick` on a multi-node machine; the
// local pagers keep every page on the worker's node, the single pager does
// not (its CPU is on node 0, and there is a vcore on another node).
func TestNumaBenchQuick(t *testing.T) {
	c := newCluster(t)
	needNodes(t, c, 2)
	out := c.path("bench.json")
	cmd := exec.Command(vcoredBin, "bench", "--quick", "--reps", "1", "--pages", "256", "--modes", "local,central", "--json", out)
	cmd.Dir = c.dir
	b, err := cmd.CombinedOutput()
	t.Logf("bench output:\n%s", b)
	if err != nil {
		t.Fatalf("vcored bench: %v", err)
	}
	var rep struct {
		Modes map[string]struct {
			Faults         int     `json:"faults"`
			LocalNodeShare float64 `json:"local_node_share"`
		} `json:"modes"`
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	local, central := rep.Modes["local"], rep.Modes["central"]
	t.Logf("placement: bench local_node_share local=%.3f central=%.3f", local.LocalNodeShare, central.LocalNodeShare)
	if local.Faults == 0 || local.LocalNodeShare != 1 {
		t.Errorf("local mode: %d faults, local node share %.3f, want 1", local.Faults, local.LocalNodeShare)
	}
	if central.Faults == 0 || central.LocalNodeShare >= 1 {
		t.Errorf("central mode: %d faults, local node share %.3f, want < 1", central.Faults, central.LocalNodeShare)
	}
	_ = time.Second
}
