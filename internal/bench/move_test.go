package bench

import (
	"strings"
	"testing"

	"github.com/vcored/vcored/topology"
)

// TestMoveNodesNoCPUs: a machine whose nodes have no CPU besides core's
// has nothing to move between, and RunMove says so without starting
// anything.
func TestMoveNodesOneCPU(t *testing.T) {
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	_, parts, err := moveNodes(m)
	if err != nil {
		t.Skip(err)
	}
	for _, p := range parts {
		if p.CPUs.IsEmpty() {
			t.Errorf("partition of node %d without CPUs offered for a move", p.Node)
		}
	}
	for i := range parts {
		for j := range i {
			if parts[i].Node == parts[j].Node {
				t.Errorf("node %d offered twice", parts[i].Node)
			}
		}
	}
}

func TestFormatMove(t *testing.T) {
	one := FormatMove(&MoveBench{Pages: 256, Verified: true, Skipped: "live: this machine has 1 NUMA node(s)",
		Restart: &MoveMeasure{SameNode: true, DowntimeMS: 3, TotalMS: 9, Bytes: 1 << 20}})
	if !strings.Contains(one, "not measured: live: this machine has 1") || !strings.Contains(one, "(same node: the mechanics only)") ||
		strings.Contains(one, "live    node") {
		t.Errorf("one-node FormatMove:\n%s", one)
	}
	out := FormatMove(&MoveBench{Pages: 256, Verified: true,
		Live:    &MoveMeasure{FromNode: 0, ToNode: 1, DowntimeMS: 1.5, TotalMS: 20, Bytes: 1 << 20},
		Restart: &MoveMeasure{FromNode: 1, ToNode: 0, DowntimeMS: 40, TotalMS: 90, Bytes: 2 << 20}})
	for _, want := range []string{"live    node 0 -> 1: downtime 1.5 ms, total 20.0 ms, 1.0 MiB", "restart node 1 -> 0: downtime 40.0 ms"} {
		if !strings.Contains(out, want) {
			t.Errorf("FormatMove lacks %q:\n%s", want, out)
		}
	}
}
