package replica

import (
	"testing"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/ramalloc"
	"github.com/vcored/vcored/topology"
)

// TestReplicaPagesOnTheVCoresNode: a store for each node of the host keeps
// its pages on that node (on a one-node host this checks node 0 only; the
// multi-node guests of `make vmtest` check every node).
func TestReplicaPagesOnTheVCoresNode(t *testing.T) {
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	const pages = 32
	for _, n := range m.Nodes {
		s := New(n.ID, hw.Bytes(pages*ps), ps)
		for pg := range pages {
			if err := s.Fill("ds", uint64(pg*ps), content.Pattern(3)); err != nil {
				s.Close()
				t.Fatalf("node %d: %v", n.ID, err)
			}
		}
		perNode, missing, err := ramalloc.PlacementOf(s.Memory())
		s.Close()
		if err != nil {
			t.Fatalf("node %d: placement: %v", n.ID, err)
		}
		if missing != 0 || perNode[n.ID] != pages || len(perNode) != 1 {
			t.Errorf("replica store of node %d: pages per node %v, %d not present; want all %d on node %d", n.ID, perNode, missing, pages, n.ID)
		}
	}
}
