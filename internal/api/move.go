package api

import (
	"encoding/json"
	"time"
)

// Move modes.
const (
	// MoveLive keeps the subsystem running: its processes change cgroup
	// (the destination partition's CPUs and memory node), their pages are
	// migrated, and the destination vcore's pager serves their faults.
	MoveLive = "live"
	// MoveRestart checkpoints the subsystem while frozen, stops it on the
	// source and starts it on the destination, which restores its
	// persistent dataspaces lazily (post-copy).
	MoveRestart = "restart"
)

// MoveRequest asks core to move a subsystem (POST /v1/subsystems/NAME/move,
// root only; Core.Move). Subsystem is the subsystem's name, or
// "PARTITION/NAME" (e.g. "node0/toucher", as rebalance advice names it)
// when several vcores run one of that name. Exactly one of ToNode (with
// Mode; "" means live) and Back is meaningful: Back returns a moved
// subsystem to the node its vcore file puts it on.
type MoveRequest struct {
	Subsystem string `json:"subsystem,omitempty"`
	ToNode    int    `json:"to_node"`
	Mode      string `json:"mode,omitempty"`
	Back      bool   `json:"back,omitempty"`
}

// MoveResult answers a move.
type MoveResult struct {
	Subsystem string `json:"subsystem"`
	FromNode  int    `json:"from_node"`
	ToNode    int    `json:"to_node"`
	Mode      string `json:"mode"`
	Back      bool   `json:"back,omitempty"`
	// DowntimeMS: live, how long the subsystem's cgroup was frozen while
	// its processes changed cgroup and pager; restart, from freezing it on
	// the source until its command runs on the destination.
	DowntimeMS float64 `json:"downtime_ms"`
	// TotalMS: from the request until the move is complete: live, until
	// every page is migrated; restart, until every page of its persistent
	// dataspaces is resident on the destination (or the wait ended: see
	// PagesLeftBehind).
	TotalMS float64 `json:"total_ms"`
	// Bytes moved: live, the pages migrated; restart, the final
	// checkpoint's layer plus the pages restored on the destination.
	Bytes uint64 `json:"bytes"`
	// GBps is Bytes over the time spent moving them (0 when unknown).
	GBps float64 `json:"gb_per_s"`
	// Pages counted on the destination node afterwards (move_pages).
	Pages uint64 `json:"pages"`
	// PagesLeftBehind: live, pages still on another node (move_pages);
	// restart, pages of the image not yet restored when the move returned.
	PagesLeftBehind uint64 `json:"pages_left_behind"`
	// CheckpointPages/CheckpointBytes: the final checkpoint (restart).
	CheckpointPages int   `json:"checkpoint_pages,omitempty"`
	CheckpointBytes int64 `json:"checkpoint_bytes,omitempty"`
	// PreCopyPages/PreCopyBytes/PreCopyFrozenMS: the checkpoint written
	// before the final one while the subsystem ran on (restart; its
	// frozen time is not downtime of the move but a pause before it).
	PreCopyPages    int     `json:"pre_copy_pages,omitempty"`
	PreCopyBytes    int64   `json:"pre_copy_bytes,omitempty"`
	PreCopyFrozenMS float64 `json:"pre_copy_frozen_ms,omitempty"`
	// Pids now running the subsystem on the destination.
	Pids []int `json:"pids,omitempty"`
	// Warnings: what did not fully work but did not undo the move.
	Warnings []string `json:"warnings,omitempty"`
}

// Move is one subsystem core placed away from its configured node
// (GET /v1/moves on core, and `vcored status`).
type Move struct {
	Subsystem string    `json:"subsystem"`
	HomeNode  int       `json:"home_node"` // where its vcore file puts it
	HomeVCore string    `json:"home_vcore"`
	Node      int       `json:"node"` // where it runs now
	VCore     string    `json:"vcore"`
	Cgroup    string    `json:"cgroup"`
	Mode      string    `json:"mode"`
	At        time.Time `json:"at"`
}

// MoveOut is a vcore's answer to core's POST /v1/subsystems/NAME/move-out
// (internal to core and vcores, root only).
type MoveOut struct {
	// Spec is the subsystem's configuration (config.Subsystem as JSON).
	Spec json.RawMessage `json:"spec"`
	// Images are the image directories of its persistent dataspaces.
	Images map[string]string `json:"images,omitempty"`
	// Persistent: it has a persistent dataspace (a restart move needs one).
	Persistent bool   `json:"persistent"`
	Pids       []int  `json:"pids,omitempty"`
	Cgroup     string `json:"cgroup"`
	Node       int    `json:"node"`
	// Done: the subsystem left the vcore (only when the request said so).
	Done            bool    `json:"done"`
	FrozenAtUnixNS  int64   `json:"frozen_at_unix_ns,omitempty"`
	CheckpointPages int     `json:"checkpoint_pages,omitempty"`
	CheckpointBytes int64   `json:"checkpoint_bytes,omitempty"`
	FrozenMS        float64 `json:"frozen_ms,omitempty"`
	// PreCopy*: the checkpoint written before the final one, while the
	// subsystem ran on (restart).
	PreCopyPages    int     `json:"pre_copy_pages,omitempty"`
	PreCopyBytes    int64   `json:"pre_copy_bytes,omitempty"`
	PreCopyFrozenMS float64 `json:"pre_copy_frozen_ms,omitempty"`
}

// MoveOutRequest is the body of POST /v1/subsystems/NAME/move-out. Phase
// "query" changes nothing; "restart" checkpoints while frozen and stops
// the subsystem; "live" forgets it (its processes were moved already).
type MoveOutRequest struct {
	Phase string `json:"phase"`
	// ToNode is where the subsystem goes (phases live and restart).
	ToNode int `json:"to_node"`
	// Uffds the vcore must forget without telling core (live: core handed
	// them to the destination).
	Uffds []uint64 `json:"uffds,omitempty"`
}

// MoveInRequest is the body of POST /v1/move-in on the destination vcore.
type MoveInRequest struct {
	Name     string            `json:"name"`
	Mode     string            `json:"mode"`
	FromNode int               `json:"from_node"`
	Spec     json.RawMessage   `json:"spec"`
	Images   map[string]string `json:"images,omitempty"`
	// Pids to move into the destination (live).
	Pids []int `json:"pids,omitempty"`
	// SourceCgroup is the cgroup the pids are in (live), frozen meanwhile.
	SourceCgroup string `json:"source_cgroup,omitempty"`
}

// MoveIn answers a move-in.
type MoveIn struct {
	Cgroup string `json:"cgroup"`
	CPUs   string `json:"cpus"`
	Mems   string `json:"mems"`
	Pids   []int  `json:"pids"`
	// Migrated pages and bytes (live), and the time spent migrating.
	MigratedPages   uint64   `json:"migrated_pages"`
	MigrateMS       float64  `json:"migrate_ms"`
	FrozenMS        float64  `json:"frozen_ms"`
	StartedAtUnixNS int64    `json:"started_at_unix_ns"`
	Warnings        []string `json:"warnings,omitempty"`
}

// MovePlacement is a vcore's GET /v1/subsystems/NAME/placement: where the
// pages of the subsystem's processes are (move_pages over their
// persistent and local regions, or over every anonymous mapping).
type MovePlacement struct {
	Node int `json:"node"`
	// PagesByNode: resident pages per node.
	PagesByNode map[int]uint64 `json:"pages_by_node"`
	// Missing: pages of its persistent dataspaces' regions not resident.
	Missing uint64 `json:"missing"`
	// ImagePages: pages the images hold (restart: what is to be restored).
	ImagePages uint64 `json:"image_pages"`
	Pids       []int  `json:"pids"`
}

// NewUnboundedClient is NewClient without the client's own time limit:
// the request's context bounds it (a move checkpoints, starts processes
// and migrates memory).
func NewUnboundedClient(socket string) *Client {
	c := NewClient(socket)
	hc := *c.hc
	hc.Timeout = 0
	c.hc = &hc
	return c
}

// MoveWake is the body of POST /v1/subsystems/NAME/wake: the uffds core
// handed to the destination (it waits until it holds them all).
type MoveWake struct {
	Uffds []uint64 `json:"uffds"`
}
