package vcore

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/vcore/replica"
)

// TestReplicaPageChecked: a ReplicaPage from core is kept only when it
// answers a forward in flight for the same dataspace and page, of a
// read-only file dataspace, and is one page long; anything else changes
// nothing in the replica store.
func TestReplicaPageChecked(t *testing.T) {
	ps := linux.PageSize()
	v := &VCore{
		log:      slog.New(slog.DiscardHandler),
		replicas: replica.New(0, hw.Bytes(16*ps), ps),
		core: map[string]wire.DataspaceInfo{
			"lib":  {Name: "lib", Content: wire.ContentFile},
			"rw":   {Name: "rw", Content: wire.ContentFile, Writable: true},
			"pat":  {Name: "pat", Content: wire.ContentPattern, Seed: 3},
			"zero": {Name: "zero"},
		},
		pending: map[uint64]pendingForward{},
	}
	defer v.replicas.Close()
	page := bytes.Repeat([]byte{0xab}, ps)
	fwd := func(seq uint64, ds string, off uint64) {
		v.pending[seq] = pendingForward{msg: wire.Forward{SeqNo: seq, Dataspace: ds, Offset: off}}
	}
	fwd(1, "lib", uint64(3*ps))
	fwd(2, "rw", 0)
	fwd(3, "pat", 0)
	fwd(4, "lib", uint64(5*ps))
	for _, bad := range []wire.ReplicaPage{
		{SeqNo: 9, Dataspace: "lib", Offset: uint64(3 * ps), Page: page},     // no such forward
		{SeqNo: 1, Dataspace: "lib", Offset: uint64(4 * ps), Page: page},     // another page
		{SeqNo: 1, Dataspace: "other", Offset: uint64(3 * ps), Page: page},   // another dataspace
		{SeqNo: 1, Dataspace: "lib", Offset: uint64(3 * ps), Page: page[:8]}, // not a page
		{SeqNo: 2, Dataspace: "rw", Offset: 0, Page: page},                   // writable
		{SeqNo: 3, Dataspace: "pat", Offset: 0, Page: page},                  // built from its pattern, not from core's bytes
	} {
		v.replicaPage(&bad)
		if n, _, fills, _ := v.replicas.Stats(); n != 0 || fills != 0 {
			t.Fatalf("ReplicaPage seq %d %q offset %d (%d bytes) was kept", bad.SeqNo, bad.Dataspace, bad.Offset, len(bad.Page))
		}
	}
	v.replicaPage(&wire.ReplicaPage{SeqNo: 4, Dataspace: "lib", Offset: uint64(5 * ps), Page: page})
	got := make([]byte, ps)
	if !v.replicas.Lookup("lib", uint64(5*ps), got) || !bytes.Equal(got, page) {
		t.Fatal("the page answering forward 4 was not kept as sent")
	}
}
