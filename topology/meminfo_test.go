package topology

import (
	"errors"
	"io/fs"
	"os"
	"testing"
	"testing/fstest"

	"github.com/vcored/vcored/internal/hw"
)

// TestNodeMeminfo: NodeMeminfo reads what Discover reads, per node.
func TestNodeMeminfo(t *testing.T) {
	sysfs := os.DirFS("testdata/epyc-8node-nps4")
	m, err := Discover(sysfs)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range m.Nodes {
		total, free, err := NodeMeminfo(sysfs, n.ID)
		if err != nil || total != n.MemTotal || free != n.MemFree {
			t.Errorf("node %d: %s, %s, %v; Discover says %s, %s", n.ID, total, free, err, n.MemTotal, n.MemFree)
		}
	}
	if _, _, err := NodeMeminfo(sysfs, 99); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing node: %v, want fs.ErrNotExist", err)
	}
	bad := fstest.MapFS{"devices/system/node/node1/meminfo": {Data: []byte("Node 1 MemTotal: lots kB\nNode 1 MemFree: 1 kB\n")}}
	if _, _, err := NodeMeminfo(bad, hw.Node(1)); !errors.Is(err, ErrMalformed) {
		t.Errorf("malformed: %v, want ErrMalformed", err)
	}
}
