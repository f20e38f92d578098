package linux

import (
	"os"
	"path/filepath"
	"testing"
)

// TestStartWriteback: a regular file's range is handed to writeback; a
// pipe, which has no pages to write back, is an error naming it.
func TestStartWriteback(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := StartWriteback(f, 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := StartWriteback(w, 0, 4096); err == nil {
		t.Fatal("writeback of a pipe: no error")
	}
}
