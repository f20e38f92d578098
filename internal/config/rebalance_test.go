package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/policy"
)

func TestParseRebalance(t *testing.T) {
	c, err := ParseCore("core.toml", []byte("rebalance = \"advise\"\nrebalance_interval = \"2s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Rebalance != RebalanceAdvise || c.RebalanceInterval != 2*time.Second {
		t.Errorf("rebalance %q interval %v", c.Rebalance, c.RebalanceInterval)
	}
	d := DefaultCore()
	if d.Rebalance != RebalanceOff || d.RebalanceInterval != DefaultRebalanceInterval || d.RebalancePolicy != policy.DefaultRebalanceConfig() ||
		d.RebalanceMoveTimeout != DefaultRebalanceMoveTimeout {
		t.Errorf("defaults: %+v", d)
	}
	if err := d.RebalancePolicy.Check(); err != nil {
		t.Errorf("default policy: %v", err)
	}
	// auto parses; the thresholds set the policy, and the flap window
	// follows the min interval.
	c, err = ParseCore("core.toml", []byte("rebalance = \"auto\"\nrebalance_threshold = 1\nrebalance_samples = 1\nrebalance_min_interval = \"5s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := policy.RebalanceConfig{Threshold: 1, Samples: 1, MinInterval: 5 * time.Second, FlapWindow: policy.FlapWindowFactor * 5 * time.Second, MinGain: 0.1}
	if c.Rebalance != RebalanceAuto || c.RebalancePolicy != want {
		t.Errorf("auto: %q %+v, want %+v", c.Rebalance, c.RebalancePolicy, want)
	}
	if err := c.RebalancePolicy.Check(); err != nil {
		t.Errorf("parsed policy: %v", err)
	}
	bad := []struct{ doc, want string }{
		{"rebalance = \"on\"\n", `core.toml:1: rebalance: "on" is not one of "off", "advise", "auto"`},
		{"\nrebalance = true\n", "core.toml:2: rebalance: expected a string"},
		{"rebalance_interval = \"10ms\"\n", "rebalance_interval 10ms is below 100ms"},
		{"rebalance_threshold = 0\n", "core.toml:1: rebalance_threshold: 0 is not a positive number"},
		{"rebalance_threshold = -0.5\n", "-0.5 is not a positive number"},
		{"rebalance_threshold = nan\n", "NaN is not a finite number"},
		{"rebalance_threshold = \"0.3\"\n", "rebalance_threshold: expected a number"},
		{"rebalance_samples = 0\n", "rebalance_samples: 0 is out of range [1, 1000]"},
		{"rebalance_samples = 1.5\n", "rebalance_samples: expected an integer"},
		{"rebalance_min_interval = \"0s\"\n", "rebalance_min_interval 0s is below 100ms"},
		{"rebalance_move_timeout = \"10ms\"\n", "rebalance_move_timeout 10ms is below 1s"},
		{"rebalance_flap_window = \"1m\"\n", "rebalance_flap_window"},
	}
	for _, b := range bad {
		c, err := ParseCore("core.toml", []byte(b.doc))
		if c != nil || !errors.Is(err, ErrValue) && !errors.Is(err, ErrType) && !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%q: %v, want an error containing %q", b.doc, err, b.want)
		}
	}
}

func TestRebalanceUnavailable(t *testing.T) {
	c, err := ParseCore("/etc/vcored/core.toml", []byte("socket = \"/run/x.sock\"\nrebalance = \"auto\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.RebalanceUnavailable("no moves here")
	if !errors.Is(err, ErrValue) || err.Error() != "/etc/vcored/core.toml:2: rebalance: no moves here" {
		t.Errorf("%v", err)
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
