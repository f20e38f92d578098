package api

import "time"

// Rebalance is core's GET /v1/rebalance: the last load sample of every
// partition and the move core would make (rebalance = "advise").
type Rebalance struct {
	Mode     string `json:"mode"` // "off" or "advise"
	Interval string `json:"interval,omitempty"`
	// SampledAt is the time of the last sample (absent before the first).
	SampledAt *time.Time `json:"sampled_at,omitempty"`
	Samples   uint64     `json:"samples"`
	// Imbalance is the hottest partition's load minus the coolest's, a
	// load being CPU demand per CPU.
	Imbalance float64 `json:"imbalance"`
	// Advice holds at most one move; Waiting says why there is none.
	Advice  []RebalanceAdvice `json:"advice"`
	Waiting string            `json:"waiting,omitempty"`
	// MachinePressure is /proc/pressure/cpu "some" avg10 (0..1), when the
	// kernel has PSI.
	MachinePressure *float64             `json:"machine_cpu_pressure,omitempty"`
	Partitions      []RebalancePartition `json:"partitions"`
}

// RebalanceAdvice is one move core would make.
type RebalanceAdvice struct {
	Subsystem       string    `json:"subsystem"` // "<partition>/<name>", e.g. "node0/toucher"
	From            int       `json:"from"`
	To              int       `json:"to"`
	Mode            string    `json:"mode"` // "live" or "restart"
	ImbalanceBefore float64   `json:"imbalance_before"`
	ImbalanceAfter  float64   `json:"imbalance_after"`
	Reason          string    `json:"reason"`
	Since           time.Time `json:"since"` // first advised (unchanged since)
}

// RebalancePartition is one node's live partitions in the last sample.
type RebalancePartition struct {
	Node         int                  `json:"node"`
	CPUs         string               `json:"cpus"`
	Demand       float64              `json:"demand"` // CPUs' worth
	Load         float64              `json:"load"`   // demand per CPU
	MemoryBytes  uint64               `json:"memory_bytes"`
	MemFreeBytes uint64               `json:"mem_free_bytes"`
	Error        string               `json:"error,omitempty"`
	Subsystems   []RebalanceSubsystem `json:"subsystems"`
}

// RebalanceSubsystem is one subsystem's sampled load.
type RebalanceSubsystem struct {
	Name        string  `json:"name"`
	Cgroup      string  `json:"cgroup"`
	Usage       float64 `json:"usage"`    // CPUs busy
	Pressure    float64 `json:"pressure"` // share of time waiting for a CPU (0 without per-cgroup PSI)
	Source      string  `json:"source,omitempty"`
	CPUs        int     `json:"cpus"`
	MemoryBytes uint64  `json:"memory_bytes"`
	FaultRate   float64 `json:"fault_rate"` // page faults its vcore's pager resolved per second
	Movable     bool    `json:"movable"`
	Error       string  `json:"error,omitempty"`
}
