package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseRebalance(t *testing.T) {
	c, err := ParseCore("core.toml", []byte("rebalance = \"advise\"\nrebalance_interval = \"2s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Rebalance != RebalanceAdvise || c.RebalanceInterval != 2*time.Second {
		t.Errorf("rebalance %q interval %v", c.Rebalance, c.RebalanceInterval)
	}
	if d := DefaultCore(); d.Rebalance != RebalanceOff || d.RebalanceInterval != DefaultRebalanceInterval {
		t.Errorf("defaults: %q %v", d.Rebalance, d.RebalanceInterval)
	}
	bad := []struct{ doc, want string }{
		{"rebalance = \"auto\"\n", `core.toml:1: rebalance: "auto" needs moves between nodes, which are not implemented yet; use "advise"`},
		{"rebalance = \"on\"\n", `"on" is not one of "off", "advise", "auto"`},
		{"rebalance = true\n", "expected a string"},
		{"rebalance_interval = \"10ms\"\n", "rebalance_interval 10ms is below 100ms"},
	}
	for _, b := range bad {
		c, err := ParseCore("core.toml", []byte(b.doc))
		if c != nil || !errors.Is(err, ErrValue) && !errors.Is(err, ErrType) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%q: %v, want an error containing %q", b.doc, err, b.want)
		}
	}
}

func TestParseMovable(t *testing.T) {
	const base = "node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"s\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\n"
	v, err := ParseVCore("node0.toml", []byte(base+"movable = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !v.Subsystems[0].Movable {
		t.Error("movable = true not recorded")
	}
	if v, err := ParseVCore("node0.toml", []byte(base)); err != nil || v.Subsystems[0].Movable {
		t.Errorf("default: %v, %v", v.Subsystems[0].Movable, err)
	}
	if _, err := ParseVCore("node0.toml", []byte(base+"movable = \"yes\"\n")); !errors.Is(err, ErrType) ||
		!strings.Contains(err.Error(), "subsystem[0].movable: expected a boolean") {
		t.Errorf("movable = \"yes\": %v", err)
	}
}
