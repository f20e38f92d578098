package statefile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type doc struct {
	N    int      `json:"n"`
	Tags []string `json:"tags"`
}

func TestRoundTripAndNoDebris(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "ledger.json")
	var got doc
	if found, err := Read(path, &got); err != nil || found {
		t.Fatalf("Read of a missing file: found=%v err=%v", found, err)
	}
	for i := 1; i <= 3; i++ {
		if err := Write(path, doc{N: i, Tags: []string{"a"}}); err != nil {
			t.Fatal(err)
		}
	}
	if found, err := Read(path, &got); err != nil || !found || got.N != 3 {
		t.Fatalf("Read = %+v found=%v err=%v", got, found, err)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("temp files left behind: %v", ents)
	}
}

func TestCorruptNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.json")
	os.WriteFile(path, []byte("{torn"), 0o600)
	var d doc
	found, err := Read(path, &d)
	if !found || err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("found=%v err=%v, want an error naming %s", found, err, path)
	}
}
