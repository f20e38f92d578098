package api

import "time"

// Rebalance is core's GET /v1/rebalance: the last load sample of every
// partition, the move core would make (rebalance = "advise") and the moves
// it made (rebalance = "auto").
type Rebalance struct {
	Mode     string `json:"mode"` // "off", "advise" or "auto"
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
	// Decision is what the last sample decided, and why: the move advised
	// or started, or why none (Waiting).
	Decision string `json:"decision,omitempty"`
	// InFlight is the automatic move under way (at most one).
	InFlight *RebalanceMove `json:"in_flight,omitempty"`
	// Moves are the last automatic moves that ended (at most 16), oldest
	// first; MovesDone and MovesFailed count every one since core started.
	Moves       []RebalanceMove `json:"moves"`
	MovesDone   uint64          `json:"moves_done"`
	MovesFailed uint64          `json:"moves_failed"`
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

// RebalanceMove is one move core made by itself (rebalance = "auto").
type RebalanceMove struct {
	Subsystem string `json:"subsystem"` // as in RebalanceAdvice
	From      int    `json:"from"`
	To        int    `json:"to"`
	Mode      string `json:"mode"` // "live" or "restart"
	Reason    string `json:"reason"`
	// ImbalanceBefore is the imbalance the move was decided on,
	// ImbalanceAfter the one the policy expected after it.
	ImbalanceBefore float64   `json:"imbalance_before"`
	ImbalanceAfter  float64   `json:"imbalance_after"`
	Started         time.Time `json:"started"`
	// Ended is absent while the move is in flight.
	Ended *time.Time `json:"ended,omitempty"`
	// Result is "in flight", "done" or "failed" (Error says why).
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
	// What the move reported (absent when it did not measure it).
	DowntimeMS      float64 `json:"downtime_ms,omitempty"`
	TotalMS         float64 `json:"total_ms,omitempty"`
	Bytes           int64   `json:"bytes,omitempty"`
	PagesLeftBehind int64   `json:"pages_left_behind,omitempty"`
}
