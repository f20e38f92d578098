package replica

import (
	"testing"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
)

// TestReplicaStore: pages are built from the content, found again, the
// least recently used dropped beyond the budget; writable or file content
// (or content core did not announce) is never replicable.
func TestReplicaStore(t *testing.T) {
	ps := linux.PageSize()
	s := New(0, hw.Bytes(2*ps), ps)
	defer s.Close()
	src := content.Pattern(5)
	page := make([]byte, ps)
	if s.Lookup("d", 0, page) {
		t.Fatal("a page found before any fill")
	}
	for _, pg := range []uint64{0, 1} {
		if err := s.Fill("d", pg*uint64(ps), src); err != nil {
			t.Fatal(err)
		}
	}
	if !s.Lookup("d", 0, page) || content.VerifyPattern(page, 5, 0) != nil {
		t.Fatal("page 0: not found or wrong content")
	}
	// Page 1 is now the least recently used: a third page drops it.
	if err := s.Fill("d", 2*uint64(ps), src); err != nil {
		t.Fatal(err)
	}
	if s.Lookup("d", uint64(ps), page) {
		t.Error("page 1 kept beyond the budget")
	}
	if !s.Lookup("d", 2*uint64(ps), page) || content.VerifyPattern(page, 5, uint64(2*ps)) != nil {
		t.Error("page 2: not found or wrong content")
	}
	if !s.Lookup("d", 0, page) {
		t.Error("page 0 (recently used) dropped")
	}
	if n, _, fills, drops := s.Stats(); n != 2 || fills != 3 || drops != 1 {
		t.Errorf("stats: %d pages, %d fills, %d drops; want 2, 3, 1", n, fills, drops)
	}
	for _, info := range []wire.DataspaceInfo{
		{Name: "w", Content: wire.ContentPattern, Writable: true},
		{Name: "f", Content: wire.ContentFile},
		{Name: "unsaid"},
	} {
		if _, ok := Replicable(info); ok {
			t.Errorf("%+v is replicable", info)
		}
	}
	if _, ok := Replicable(wire.DataspaceInfo{Content: wire.ContentZero}); !ok {
		t.Error("zero content is not replicable")
	}
}

// TestReplicaFromCoreBytes: read-only file content is replicated from the
// bytes core sends (FillBytes), kept exactly and LRU-dropped like any
// page; a writable file dataspace, or zero/pattern content, is not.
func TestReplicaFromCoreBytes(t *testing.T) {
	ps := linux.PageSize()
	s := New(0, hw.Bytes(2*ps), ps)
	defer s.Close()
	if !FromCore(wire.DataspaceInfo{Content: wire.ContentFile}) {
		t.Error("read-only file content is not replicated from core's bytes")
	}
	for _, info := range []wire.DataspaceInfo{
		{Content: wire.ContentFile, Writable: true},
		{Content: wire.ContentPattern, Seed: 1},
		{Content: wire.ContentZero},
	} {
		if FromCore(info) {
			t.Errorf("%+v is replicated from core's bytes", info)
		}
	}
	pages := [3][]byte{}
	for i := range pages {
		pages[i] = make([]byte, ps)
		for j := range pages[i] {
			pages[i][j] = byte(i*7 + j)
		}
		if err := s.FillBytes("f", uint64(i*ps), pages[i]); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, ps)
	if s.Lookup("f", 0, got) {
		t.Error("page 0 kept beyond the budget of 2 pages")
	}
	for i := 1; i < 3; i++ {
		if !s.Lookup("f", uint64(i*ps), got) || string(got) != string(pages[i]) {
			t.Errorf("page %d: not found or not the bytes filled", i)
		}
	}
	if err := s.FillBytes("f", 0, got[:100]); err == nil {
		t.Error("a short page was accepted")
	}
}
