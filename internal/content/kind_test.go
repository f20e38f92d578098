package content

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestOpenKinds(t *testing.T) {
	for _, k := range Kinds {
		if !k.Valid() {
			t.Errorf("%q not valid", k)
		}
	}
	if Kind("tape").Valid() {
		t.Error("unknown kind valid")
	}
	src, c, err := Open(KindPattern, 9, nil)
	if err != nil || c != nil || KindOf(src) != KindPattern {
		t.Fatalf("pattern: %v %v %v", src, c, err)
	}
	if src, _, err := Open(KindZero, 0, nil); err != nil || !src.IsZero() || KindOf(src) != KindZero {
		t.Fatalf("zero: %v %v", src, err)
	}
	if _, _, err := Open(KindFile, 0, nil); !errors.Is(err, ErrKind) {
		t.Errorf("file without a file: %v", err)
	}
	if _, _, err := Open("tape", 0, nil); !errors.Is(err, ErrKind) {
		t.Errorf("unknown kind: %v", err)
	}

	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	src, c, err = Open(KindFile, 0, f)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if KindOf(src) != KindFile || src.Size() != 5 {
		t.Errorf("file source: kind %s size %d", KindOf(src), src.Size())
	}
	if g, ok := FileOf(src); !ok || g != f {
		t.Errorf("FileOf: %v %v", g, ok)
	}
	buf := make([]byte, 8)
	if err := src.Fill(buf, 0); err != nil || string(buf) != "hello\x00\x00\x00" {
		t.Errorf("Fill: %q %v", buf, err)
	}
	// A file given with another kind is refused and closed.
	g, _ := os.Open(path)
	if _, _, err := Open(KindPattern, 1, g); !errors.Is(err, ErrKind) {
		t.Errorf("pattern with a file: %v", err)
	}
	if _, err := g.Stat(); err == nil {
		t.Error("the refused file was not closed")
	}
	// A directory is no file content.
	d, _ := os.Open(t.TempDir())
	if _, _, err := Open(KindFile, 0, d); err == nil {
		t.Error("a directory was accepted as file content")
	}
}
