package config

import "time"

// Rebalance says what core does about load imbalance between partitions.
type Rebalance string

// Rebalance modes.
const (
	// RebalanceOff: core samples nothing.
	RebalanceOff Rebalance = "off"
	// RebalanceAdvise: core samples every partition's load and reports the
	// moves it would make (GET /v1/rebalance, the log, a metric).
	RebalanceAdvise Rebalance = "advise"
	// RebalanceAuto: core makes the moves. Refused until moves exist.
	RebalanceAuto Rebalance = "auto"
)

// Rebalancing defaults.
const (
	DefaultRebalanceInterval = 10 * time.Second
	MinRebalanceInterval     = 100 * time.Millisecond
)

// parseRebalance reads rebalance and rebalance_interval of the core file.
func parseRebalance(t *table, c *Core) {
	setEnum(t, "rebalance", &c.Rebalance, RebalanceOff, RebalanceAdvise, RebalanceAuto)
	if c.Rebalance == RebalanceAuto {
		t.d.add(t.key("rebalance"), ErrValue, nil, `"auto" needs moves between nodes, which are not implemented yet; use "advise" to see the moves core would make`)
		c.Rebalance = RebalanceOff
	}
	t.setDuration("rebalance_interval", &c.RebalanceInterval)
	if t.has("rebalance_interval") && c.RebalanceInterval < MinRebalanceInterval {
		t.d.add(t.key("rebalance_interval"), ErrValue, nil, "rebalance_interval %v is below %v", c.RebalanceInterval, MinRebalanceInterval)
	}
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
