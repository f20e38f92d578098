package config

import (
	"strings"
	"testing"
	"time"
)

func TestPersistentDataspace(t *testing.T) {
	const sub = "node = 0\nmemory = \"1GiB\"\ncpus = \"1\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"sleep\", \"1\"]\nmemory = \"64MiB\"\n[[subsystem.dataspace]]\nname = \"p\"\nsize = \"4MiB\"\n"
	v, _, err := parseVCore("node0.toml", []byte(sub+"persistent = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !v.Subsystems[0].Local[0].Persistent {
		t.Error("persistent = true not read")
	}
	v, _, err = parseVCore("node0.toml", []byte(sub))
	if err != nil || v.Subsystems[0].Local[0].Persistent {
		t.Errorf("default: persistent %v, %v", v.Subsystems[0].Local[0].Persistent, err)
	}
	if _, _, err := parseVCore("node0.toml", []byte(sub+"persistent = \"yes\"\n")); err == nil || !strings.Contains(err.Error(), "persistent") {
		t.Errorf("persistent = \"yes\": %v", err)
	}
	// Core-owned dataspaces cannot be persistent: an unknown key there.
	if _, _, err := parseCore("core.toml", []byte("[[dataspace]]\nname = \"d\"\nsize = \"4MiB\"\npersistent = true\n")); err == nil || !strings.Contains(err.Error(), "persistent") {
		t.Errorf("persistent core dataspace: %v", err)
	}
}

func TestPrefetchKey(t *testing.T) {
	const sub = "node = 0\ncore_socket = \"/c\"\nsocket = \"/v\"\nstate_dir = \"/s\"\nmemory = \"1GiB\"\n" +
		"[[subsystem]]\nname = \"s\"\ncommand = [\"x\"]\nmemory = \"64MiB\"\n[[subsystem.dataspace]]\nname = \"d\"\nsize = \"4MiB\"\n"
	for _, c := range []struct {
		line string
		want Prefetch
	}{{"", PrefetchOff}, {"prefetch = \"off\"\n", PrefetchOff}, {"prefetch = \"sequential\"\n", PrefetchSequential}} {
		v, _, err := parseVCore("node0.toml", []byte(sub+c.line))
		if err != nil || v.Subsystems[0].Local[0].Prefetch != c.want {
			t.Errorf("%q: prefetch %q, %v; want %q", c.line, v.Subsystems[0].Local[0].Prefetch, err, c.want)
		}
	}
	if _, _, err := parseVCore("node0.toml", []byte(sub+"prefetch = \"random\"\n")); err == nil || !strings.Contains(err.Error(), "prefetch") {
		t.Errorf("prefetch = \"random\": %v", err)
	}
	// Core-owned dataspaces are not served by a vcore's pagers: an unknown key there.
	if _, _, err := parseCore("core.toml", []byte("[[dataspace]]\nname = \"d\"\nsize = \"4MiB\"\nprefetch = \"sequential\"\n")); err == nil || !strings.Contains(err.Error(), "prefetch") {
		t.Errorf("prefetch in a core dataspace: %v", err)
	}
}

func TestRestorePrefetchKey(t *testing.T) {
	const sub = "node = 0\nmemory = \"1GiB\"\ncpus = \"1\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"sleep\", \"1\"]\nmemory = \"64MiB\"\n[[subsystem.dataspace]]\nname = \"p\"\nsize = \"4MiB\"\n"
	v, _, err := parseVCore("node0.toml", []byte(sub+"persistent = true\nrestore_prefetch = true\n"))
	if err != nil || !v.Subsystems[0].Local[0].RestorePrefetch {
		t.Fatalf("restore_prefetch = true: %v, %v", err, v)
	}
	v, _, err = parseVCore("node0.toml", []byte(sub+"persistent = true\n"))
	if err != nil || v.Subsystems[0].Local[0].RestorePrefetch {
		t.Errorf("default: restore_prefetch %v, %v", v.Subsystems[0].Local[0].RestorePrefetch, err)
	}
	for _, bad := range []string{"restore_prefetch = true\n", "persistent = true\nrestore_prefetch = \"yes\"\n"} {
		if _, _, err := parseVCore("node0.toml", []byte(sub+bad)); err == nil || !strings.Contains(err.Error(), "restore_prefetch") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, _, err := parseCore("core.toml", []byte("[[dataspace]]\nname = \"d\"\nsize = \"4MiB\"\nrestore_prefetch = true\n")); err == nil || !strings.Contains(err.Error(), "restore_prefetch") {
		t.Errorf("restore_prefetch in a core dataspace: %v", err)
	}
}

func TestCheckpointInterval(t *testing.T) {
	sub := func(interval string, persistent bool) []byte {
		s := "node = 0\nmemory = \"1GiB\"\ncpus = \"1\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"sleep\", \"1\"]\nmemory = \"64MiB\"\n" +
			interval + "[[subsystem.dataspace]]\nname = \"p\"\nsize = \"4MiB\"\n"
		if persistent {
			s += "persistent = true\n"
		}
		return []byte(s)
	}
	v, _, err := parseVCore("node0.toml", sub("checkpoint_interval = \"30s\"\n", true))
	if err != nil || v.Subsystems[0].CheckpointInterval != 30*time.Second {
		t.Fatalf("30s: %v, %v", v.Subsystems[0].CheckpointInterval, err)
	}
	if v, _, err := parseVCore("node0.toml", sub("", true)); err != nil || v.Subsystems[0].CheckpointInterval != 0 {
		t.Errorf("default: %v, %v; want 0 (only when asked)", v.Subsystems[0].CheckpointInterval, err)
	}
	for _, c := range []struct {
		line       string
		persistent bool
		want       string
	}{
		{"checkpoint_interval = \"100ms\"\n", true, "node0.toml:8: subsystem[0].checkpoint_interval"},
		{"checkpoint_interval = \"30s\"\n", false, "needs a dataspace with persistent = true"},
		{"checkpoint_interval = 30\n", true, "checkpoint_interval"},
	} {
		if _, _, err := parseVCore("node0.toml", sub(c.line, c.persistent)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q (persistent %v): %v; want an error naming %q", c.line, c.persistent, err, c.want)
		}
	}
}
