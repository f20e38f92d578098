// Package api defines the JSON documents the daemons serve over HTTP on
// their unix sockets (usable with `curl --unix-socket`), and a small client
// for them. Core serves /v1/info, /v1/partitions, /v1/vcores, /v1/dataspaces;
// a vcore serves /v1/info, /v1/subsystems, /v1/pager. Both serve /metrics.
package api

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"time"
)

// Info identifies the daemon behind a socket.
type Info struct {
	Role      string `json:"role"` // "core" or "vcore"
	Pid       int    `json:"pid"`
	PagerMode string `json:"pager_mode"` // "local" or "central"
	Node      *int   `json:"node,omitempty"`
	CPUs      string `json:"cpus,omitempty"`
	// CoreConnected is set by a vcore: whether its core session is up.
	CoreConnected *bool     `json:"core_connected,omitempty"`
	Started       time.Time `json:"started"`
	// Degraded is set by a core whose ledger cannot be written (read-only
	// or full state directory): claims are refused and lease changes wait.
	Degraded *Degraded `json:"degraded,omitempty"`
}

// Degraded describes a core whose ledger cannot be written.
type Degraded struct {
	Reason string    `json:"reason"` // the last write error
	Since  time.Time `json:"since"`  // the first failed write
	// Pending are the lease changes recorded but not yet written, as
	// "orphan HOLDER" or "release HOLDER"; core retries them.
	Pending []string `json:"pending,omitempty"`
}

// Partition is one node's share of the machine as core sees it.
type Partition struct {
	Node        int    `json:"node"`
	CPUs        string `json:"cpus"`
	Mems        string `json:"mems"`
	MemoryBytes uint64 `json:"memory_bytes"`
	CPULess     bool   `json:"cpuless"`
	// State: "free", "live" (a connected vcore holds it), "orphaned" (its
	// vcore is gone, processes may still run), "unconfirmed" (from the
	// ledger after a core restart, waiting for its vcore to re-register).
	State      string     `json:"state"`
	Holder     *Holder    `json:"holder,omitempty"`
	Cgroup     string     `json:"cgroup,omitempty"`
	GrantedAt  *time.Time `json:"granted_at,omitempty"`
	OrphanedAt *time.Time `json:"orphaned_at,omitempty"`
	// GraceLeft is how long an orphaned/unconfirmed lease has before core
	// reclaims it.
	GraceLeft string `json:"grace_left,omitempty"`
	// Pending is "orphan" or "release" when that change of the lease is
	// recorded but not yet written to the ledger (see Info.Degraded).
	Pending string `json:"pending,omitempty"`
	// Running is set for a lease whose vcore is not connected: the
	// processes still in the partition's cgroup, by subsystem cgroup.
	Running []Running `json:"running,omitempty"`
}

// Running is what still runs in one subsystem cgroup of a partition whose
// vcore is gone.
type Running struct {
	// Subsystem is the cgroup's name below the partition cgroup (the
	// subsystem's name); "" for processes in the partition cgroup itself.
	Subsystem string `json:"subsystem"`
	Pids      []int  `json:"pids"`
}

// Holder is the vcore holding a lease.
type Holder struct {
	ID     string `json:"id"`
	Pid    int    `json:"pid"`
	Socket string `json:"socket"`
}

// VCore is a vcore session as core sees it.
type VCore struct {
	ID           string    `json:"id"`
	Node         int       `json:"node"`
	Pid          int       `json:"pid"`
	Socket       string    `json:"socket"`
	CPUs         string    `json:"cpus"`
	Connected    bool      `json:"connected"`
	Since        time.Time `json:"since"`
	Uffds        int       `json:"uffds"`
	Forwarded    uint64    `json:"forwarded_faults"`
	ServedByCore bool      `json:"served_by_core"` // failover or central mode
}

// Subsystem is one subsystem of a vcore.
type Subsystem struct {
	Name             string   `json:"name"`
	State            string   `json:"state"`
	Pids             []int    `json:"pids"`
	Restarts         int      `json:"restarts"`
	LastExit         string   `json:"last_exit,omitempty"`
	CPUs             string   `json:"cpus"`
	Mems             string   `json:"mems"`
	Cgroup           string   `json:"cgroup"`
	MemoryUsageBytes uint64   `json:"memory_usage_bytes"`
	MemoryLimitBytes uint64   `json:"memory_limit_bytes"`
	QuotaUsedBytes   uint64   `json:"quota_used_bytes"`
	QuotaLimitBytes  uint64   `json:"quota_limit_bytes"`
	Dataspaces       []string `json:"dataspaces,omitempty"`
	Adopted          bool     `json:"adopted"`
	// Movable: its vcore file says movable = true (it may be restarted on
	// another node by a rebalancing move).
	Movable bool `json:"movable"`
	// MovedTo: the subsystem was moved away to this node (`vcored move`);
	// its home vcore no longer runs it. MovedFrom: this vcore runs it for
	// the vcore of that node, whose file declares it.
	MovedTo   *int   `json:"moved_to,omitempty"`
	MovedFrom *int   `json:"moved_from,omitempty"`
	MoveMode  string `json:"move_mode,omitempty"`
	// Tracking says, per attached persistent dataspace, how its writes
	// are tracked for checkpoints: "async" (UFFD_FEATURE_WP_ASYNC and
	// PAGEMAP_SCAN, Linux 6.7+) or "sync" (write-protect faults served by
	// the pager).
	Tracking map[string]string `json:"tracking,omitempty"`
}

// DataspaceStats are a pager's counters for one dataspace.
type DataspaceStats struct {
	Dataspace string `json:"dataspace"`
	Faults    uint64 `json:"faults"`
	Pages     uint64 `json:"pages"`
	// Prefetched: of Pages, those mapped ahead of a fault stream
	// (prefetch = "sequential").
	Prefetched uint64 `json:"prefetched"`
	// Replicated: faults of a core-owned dataspace served from this
	// vcore's node-local replica instead of being forwarded.
	Replicated uint64 `json:"replicated,omitempty"`
	// Breakdown of the faults resolved here, mean ns per fault: the
	// read(2) that returned it (its share of the batch), the pager's own
	// work, the UFFDIO_COPY/ZEROPAGE/WAKE ioctls (0: none timed).
	ReadMeanNs  float64 `json:"read_mean_ns,omitempty"`
	WorkMeanNs  float64 `json:"work_mean_ns,omitempty"`
	IoctlMeanNs float64 `json:"ioctl_mean_ns,omitempty"`
	Forwarded   uint64  `json:"forwarded"`
	Errors      uint64  `json:"errors"`
	MedianNs    int64   `json:"median_ns"`
	P99Ns       int64   `json:"p99_ns"`
	MeanNs      float64 `json:"mean_ns"`
	// ForwardMedianNs/ForwardP99Ns: round trip of forwarded faults as the
	// vcore saw it (send to core → core's reply).
	ForwardMedianNs int64 `json:"forward_median_ns,omitempty"`
	ForwardP99Ns    int64 `json:"forward_p99_ns,omitempty"`
}

// Pager is the pager section of a daemon.
type Pager struct {
	Mode    string `json:"mode"`
	CPUs    string `json:"cpus"`
	Threads int    `json:"threads"`
	// Placement of the pager threads (pager_placement as resolved:
	// "same-cpu" or "sibling") and why (auto's measurement).
	Placement       string `json:"placement,omitempty"`
	PlacementReason string `json:"placement_reason,omitempty"`
	Uffds           int    `json:"uffds"`
	TrackingBytes   uint64 `json:"tracking_bytes"`
	TrackedPages    uint64 `json:"tracked_pages"`
	// PeakTrackingBytes/PeakTrackedPages: the high-water mark of the two
	// above since the daemon started.
	PeakTrackingBytes uint64           `json:"peak_tracking_bytes"`
	PeakTrackedPages  uint64           `json:"peak_tracked_pages"`
	Dataspaces        []DataspaceStats `json:"dataspaces"`
}

// Client talks to a daemon's socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the daemon listening on socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, hc: &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			DisableKeepAlives: true,
		},
	}}
}

// Get fetches path (e.g. "/v1/partitions") and decodes the JSON into v.
func (c *Client) Get(ctx context.Context, path string, v any) error {
	return c.Do(ctx, http.MethodGet, path, nil, v)
}

// WriteJSON serves v as JSON (for the daemons' handlers).
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
