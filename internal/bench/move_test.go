package bench

import (
	"context"
	"strings"
	"testing"

	"github.com/vcored/vcored/topology"
)

// TestRunMoveNeedsTwoNodes: on a machine with one node that can host a
// vcore, the move mode measures nothing and says why (never a number).
func TestRunMoveNeedsTwoNodes(t *testing.T) {
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	_, parts, err := moveNodes(m)
	if err != nil {
		t.Skip(err)
	}
	if len(parts) >= 2 {
		t.Skipf("this machine can move between nodes (%d nodes with a partition)", len(parts))
	}
	res, err := RunMove(context.Background(), MoveConfig{Exe: "/nonexistent", Machine: m, Quick: true, Dir: t.TempDir(), CgroupParent: "vcored-bench-move-test"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Live != nil || res.Restart != nil || !strings.Contains(res.Skipped, "a move needs two") {
		t.Fatalf("one-node result %+v", res)
	}
	if out := FormatMove(res); !strings.Contains(out, "skipped") {
		t.Errorf("FormatMove = %q", out)
	}
}

func TestFormatMove(t *testing.T) {
	out := FormatMove(&MoveBench{Pages: 256, Verified: true,
		Live:    &MoveMeasure{FromNode: 0, ToNode: 1, DowntimeMS: 1.5, TotalMS: 20, Bytes: 1 << 20},
		Restart: &MoveMeasure{FromNode: 1, ToNode: 0, DowntimeMS: 40, TotalMS: 90, Bytes: 2 << 20}})
	for _, want := range []string{"live    node 0 -> 1: downtime 1.5 ms, total 20.0 ms, 1.0 MiB", "restart node 1 -> 0: downtime 40.0 ms"} {
		if !strings.Contains(out, want) {
			t.Errorf("FormatMove lacks %q:\n%s", want, out)
		}
	}
}
