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
