package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	corePath := filepath.Join(dir, "core.toml")
	vcorePath := filepath.Join(dir, "node0.toml")
	if err := os.WriteFile(corePath, []byte(fullCore), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vcorePath, []byte("node = 0\nmemory = \"1GiB\"\nbad = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCore(corePath)
	if err != nil || c.File != corePath || c.Pager != PagerCentral {
		t.Fatalf("LoadCore = %+v, %v", c, err)
	}
	_, err = LoadVCore(vcorePath)
	if !errors.Is(err, ErrUnknownKey) || !strings.HasPrefix(err.Error(), vcorePath+":3: bad: ") {
		t.Fatalf("LoadVCore err = %v", err)
	}
	missing := filepath.Join(dir, "missing.toml")
	if _, err := LoadCore(missing); !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, ErrRead) || err.Error() != missing+": no such file" {
		t.Errorf("LoadCore(missing) err = %v, want %q", err, missing+": no such file")
	}
	if _, err := LoadVCore(filepath.Join(dir, "missing.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadVCore(missing) err = %v", err)
	}
}

func TestCPURequest(t *testing.T) {
	v := mustVCore(t, "node = 0\nmemory = \"1GiB\"\n"+
		"[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\n"+
		"[[subsystem]]\nname = \"b\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\ncpus = 3\n"+
		"[[subsystem]]\nname = \"c\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\ncpus = \"1-2,5\"\n")
	for i, want := range []struct {
		all bool
		s   string
	}{{true, "all"}, {false, "3"}, {false, "1-2,5"}} {
		r := v.Subsystems[i].CPUs
		if r.IsAll() != want.all || r.String() != want.s {
			t.Errorf("subsystem %d: IsAll %t String %q, want %t %q", i, r.IsAll(), r, want.all, want.s)
		}
	}
}
