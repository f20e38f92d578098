package config

import (
	"math"
	"time"

	"github.com/vcored/vcored/policy"
)

// Rebalance says what core does about load imbalance between partitions.
type Rebalance string

// Rebalance modes.
const (
	// RebalanceOff: core samples nothing.
	RebalanceOff Rebalance = "off"
	// RebalanceAdvise: core samples every partition's load and reports the
	// moves it would make (GET /v1/rebalance, the log, a metric).
	RebalanceAdvise Rebalance = "advise"
	// RebalanceAuto: core samples as with advise and makes the moves, one
	// at a time (a core that cannot move subsystems refuses to start).
	RebalanceAuto Rebalance = "auto"
)

// Rebalancing defaults and limits.
const (
	DefaultRebalanceInterval    = 10 * time.Second
	MinRebalanceInterval        = 100 * time.Millisecond
	DefaultRebalanceMoveTimeout = 5 * time.Minute
	MinRebalanceMoveTimeout     = time.Second
	MaxRebalanceSamples         = 1000
)

// parseRebalance reads the rebalance keys of the core file.
func parseRebalance(t *table, c *Core) {
	setEnum(t, "rebalance", &c.Rebalance, RebalanceOff, RebalanceAdvise, RebalanceAuto)
	t.setDuration("rebalance_interval", &c.RebalanceInterval)
	if t.has("rebalance_interval") && c.RebalanceInterval < MinRebalanceInterval {
		t.d.add(t.key("rebalance_interval"), ErrValue, nil, "rebalance_interval %v is below %v", c.RebalanceInterval, MinRebalanceInterval)
	}
	p := &c.RebalancePolicy
	if t.setFloat("rebalance_threshold", &p.Threshold) && !(p.Threshold > 0) {
		t.d.add(t.key("rebalance_threshold"), ErrValue, nil, "%v is not a positive number (an imbalance in CPU demand per CPU, e.g. 0.25)", p.Threshold)
	}
	t.setInt("rebalance_samples", &p.Samples, 1, MaxRebalanceSamples)
	t.setDuration("rebalance_min_interval", &p.MinInterval)
	if t.has("rebalance_min_interval") {
		if p.MinInterval < MinRebalanceInterval {
			t.d.add(t.key("rebalance_min_interval"), ErrValue, nil, "rebalance_min_interval %v is below %v", p.MinInterval, MinRebalanceInterval)
		}
		p.FlapWindow = policy.FlapWindowFactor * p.MinInterval
	}
	t.setDuration("rebalance_move_timeout", &c.RebalanceMoveTimeout)
	if t.has("rebalance_move_timeout") && c.RebalanceMoveTimeout < MinRebalanceMoveTimeout {
		t.d.add(t.key("rebalance_move_timeout"), ErrValue, nil, "rebalance_move_timeout %v is below %v", c.RebalanceMoveTimeout, MinRebalanceMoveTimeout)
	}
}

// RebalanceUnavailable is the error of a core that cannot do what the
// rebalance key asks (why says what is missing), naming the file and line.
func (c *Core) RebalanceUnavailable(why string) error {
	return Errors{&Error{File: c.File, Line: lineOf(c.lines, "rebalance"), Key: "rebalance", Msg: why, Err: ErrValue}}
}

// setBool reads a boolean into dst.
func (t *table) setBool(k string, dst *bool) {
	v, ok := t.get(k)
	if !ok {
		return
	}
	b, ok := v.(bool)
	if !ok {
		t.wrongType(k, "a boolean (true or false)", v)
		return
	}
	*dst = b
}

// setFloat reads a finite number (an integer or a float) into dst; ok
// reports that one was read.
func (t *table) setFloat(k string, dst *float64) (ok bool) {
	v, ok := t.get(k)
	if !ok {
		return false
	}
	var f float64
	switch n := v.(type) {
	case float64:
		f = n
	case int64:
		f = float64(n)
	default:
		t.wrongType(k, "a number", v)
		return false
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		t.d.add(t.key(k), ErrValue, nil, "%v is not a finite number", f)
		return false
	}
	*dst = f
	return true
}
