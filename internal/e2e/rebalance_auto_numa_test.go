package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
)

// TestNumaRebalanceAuto: with rebalance = "auto", more busy loops than CPUs
// on the first node with CPUs and a sleeper on every other one make core
// move a busy loop away by itself (live: the burners are not movable),
// a move that cuts the imbalance:
// /v1/rebalance, the log, the metrics and `vcored status` report the move,
// and the kernel shows the moved process confined to the destination
// node's CPUs and memory. No subsystem moves twice within the flap window.
// Needs several NUMA nodes (make vmtest: the 2- and 4-node guests) and a
// core that can move subsystems; it skips, saying so, with one that cannot.
func TestNumaRebalanceAuto(t *testing.T) {
	c := newCluster(t)
	needNodes(t, c, 2)
	var nodes []hw.Node
	for _, n := range c.machine.Nodes {
		if !c.partitionCPUs(n.ID).IsEmpty() {
			nodes = append(nodes, n.ID)
		}
	}
	if len(nodes) < 2 {
		t.Skipf("needs two nodes with CPUs left after core's; have %v", nodes)
	}
	const minInterval = 2 * time.Second
	core, refusal := c.startCoreAuto(t, fmt.Sprintf("rebalance_interval = \"200ms\"\nrebalance_samples = 3\nrebalance_min_interval = %q\nrebalance_move_timeout = \"60s\"\n", minInterval))
	if core == nil {
		t.Skipf("this core cannot move subsystems between nodes (the moves are not in this build), so it refuses rebalance = \"auto\":\n%s", refusal)
	}
	hot := nodes[0]
	var burners string
	for i := range c.partitionCPUs(hot).Len() + 1 {
		burners += burner(fmt.Sprintf("burner%d", i))
	}
	c.startVCore(0, c.vcoreConfigFor(0, hot, burners))
	for i, n := range nodes[1:] {
		c.startVCore(i+1, c.vcoreConfigFor(i+1, n, sleeper))
	}
	// The burners' pids (a live move keeps them). Core may have moved one
	// already (it samples every 200 ms): look on every vcore.
	pids := map[string]int{}
	eventually(t, 30*time.Second, "every burner running", func() (bool, string) {
		for i := range nodes {
			for _, s := range get[[]api.Subsystem](t, c.vcoreSocket(i), "/v1/subsystems") {
				if strings.HasPrefix(s.Name, "burner") && s.State == "running" && len(s.Pids) > 0 {
					pids[s.Name] = s.Pids[0]
				}
			}
		}
		return len(pids) == c.partitionCPUs(hot).Len()+1, fmt.Sprintf("%v", pids)
	})

	var last api.Rebalance
	eventually(t, 120*time.Second, "an automatic move done", func() (bool, string) {
		last = get[api.Rebalance](t, c.coreSocket(), "/v1/rebalance")
		if last.MovesFailed > 0 {
			t.Fatalf("a move failed: %+v", last.Moves)
		}
		return last.MovesDone >= 1, fmt.Sprintf("%+v", last)
	})
	m := last.Moves[0]
	t.Logf("move: %+v", m)
	bare := strings.TrimPrefix(m.Subsystem, fmt.Sprintf("node%d/", hot))
	pid, ok := pids[bare]
	if !ok || m.From != int(hot) || m.Mode != "live" || m.Result != "done" || m.To == int(hot) || m.Ended == nil || m.Reason == "" {
		t.Fatalf("move %+v: want a burner of node %d moved live to another node", m, hot)
	}
	to := hw.Node(m.To)
	gotCPUs, _ := procStatus(pid, "Cpus_allowed_list")
	gotMems, _ := procStatus(pid, "Mems_allowed_list")
	t.Logf("placement after the move: %s pid %d Cpus_allowed_list=%s Mems_allowed_list=%s (node %d partition: %s)",
		bare, pid, gotCPUs, gotMems, to, c.partitionCPUs(to))
	// The burner asks for one CPU: its cpuset is some of the destination
	// partition's CPUs.
	cpus, err := hw.Parse[hw.CPU](gotCPUs)
	if err != nil || cpus.IsEmpty() || !cpus.IsSubsetOf(c.partitionCPUs(to)) || gotMems != fmt.Sprint(to) {
		t.Errorf("moved %s (pid %d) runs on cpus %q mems %q, want some of node %d's %s and %d", bare, pid, gotCPUs, gotMems, to, c.partitionCPUs(to), to)
	}
	if nm, err := os.ReadFile(fmt.Sprintf("/proc/%d/numa_maps", pid)); err == nil {
		t.Logf("numa_maps of pid %d after the move:\n%s", pid, nm)
	}

	log := c.core.log.String()
	for _, want := range []string{"rebalance: moving a subsystem", "rebalance: move done"} {
		if !strings.Contains(log, want) {
			t.Errorf("core log lacks %q", want)
		}
	}
	if mt := getText(t, c.coreSocket(), "/metrics"); !strings.Contains(mt, `vcored_rebalance_moves_total{mode="live",result="done"} `) ||
		strings.Contains(mt, `vcored_rebalance_moves_total{mode="live",result="done"} 0`) {
		t.Errorf("metrics do not count the move:\n%s", mt)
	}
	out, err := exec.Command(vcoredBin, "status", "--socket", c.coreSocket()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "REBALANCE auto") || !strings.Contains(string(out), m.Subsystem) {
		t.Errorf("vcored status does not show the move: %v\n%s", err, out)
	}

	// Let the rebalancer go on for a few min intervals: whatever else it
	// moves, no subsystem moves twice within the flap window (ten min
	// intervals), and the imbalance it reports comes down.
	time.Sleep(4 * minInterval)
	last = get[api.Rebalance](t, c.coreSocket(), "/v1/rebalance")
	seen := map[string]time.Time{}
	for _, mv := range last.Moves {
		id := mv.Subsystem[strings.Index(mv.Subsystem, "/")+1:]
		if at, ok := seen[id]; ok && mv.Started.Sub(at) < 10*minInterval {
			t.Errorf("%s moved twice within the flap window: %+v", id, last.Moves)
		}
		seen[id] = mv.Started
	}
	t.Logf("after %d moves (%d failed): imbalance %.2f (the first move found %.2f and expected %.2f), decision %q", last.MovesDone, last.MovesFailed,
		last.Imbalance, m.ImbalanceBefore, m.ImbalanceAfter, last.Decision)
	if !(m.ImbalanceAfter < m.ImbalanceBefore) {
		t.Errorf("move %+v does not cut the imbalance", m)
	}
}
