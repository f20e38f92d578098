package config

import (
	"strings"
	"testing"
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
