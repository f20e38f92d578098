package api

import (
	"context"
	"net/http"
)

// CheckpointResult answers POST /v1/subsystems/NAME/checkpoint on a vcore:
// what the checkpoint of a subsystem's persistent dataspaces wrote.
type CheckpointResult struct {
	Subsystem string `json:"subsystem"`
	// FrozenNS is how long the subsystem's cgroup was frozen (from the
	// start of the freeze to the end of the thaw).
	FrozenNS int64 `json:"frozen_ns"`
	// TotalNS is the whole checkpoint, from the start of the freeze to
	// the answer: the layers written and fsynced and the manifests
	// renamed (durable) after the thaw, the touch orders, compaction.
	TotalNS int64 `json:"total_ns"`
	// Pages and Bytes sum the dataspaces' new layers.
	Pages      int                   `json:"pages"`
	Bytes      int64                 `json:"bytes"`
	Dataspaces []CheckpointDataspace `json:"dataspaces"`
}

// CheckpointDataspace is one persistent dataspace of a checkpoint.
type CheckpointDataspace struct {
	Name  string `json:"name"`
	Image string `json:"image"` // the image directory
	// Attached: a worker had it attached; otherwise nothing was written
	// (the image already holds its last state).
	Attached  bool  `json:"attached"`
	Pages     int   `json:"pages"`      // pages in the new layer (written since the last checkpoint)
	DataPages int   `json:"data_pages"` // of them, not all zero
	Bytes     int64 `json:"bytes"`      // the layer file's size
	Layers    int   `json:"layers"`     // layers in the image afterwards
	// Rescan: the dirty set was lost (an earlier checkpoint failed after
	// collecting it), so every present page was stored.
	Rescan    bool `json:"rescan,omitempty"`
	Compacted bool `json:"compacted,omitempty"` // old layers were merged afterwards
	// WrittenFrozen: the pages written since the last checkpoint were more
	// than the checkpoint's copy buffer holds, so they went to the layer
	// file while the subsystem was frozen (its fsync and the manifest's
	// rename came after the thaw). Otherwise they were copied into
	// memory while frozen and written after the thaw.
	WrittenFrozen bool `json:"written_frozen,omitempty"`
	// CopiedFrozen is how many of Pages were read out of the worker while
	// it was frozen: those written after the pre-copy (which copies the
	// written pages before the freeze), or all of them when
	// WrittenFrozen or Rescan.
	CopiedFrozen int `json:"copied_frozen"`
	// TouchPages is the length of the first-touch order recorded with
	// the image (TOUCH-ORDER), for a restore's prefetch.
	TouchPages int `json:"touch_pages"`
}

// Post sends an empty POST to path and decodes the JSON answer into v. It
// has no time limit of its own: ctx bounds it.
func (c *Client) Post(ctx context.Context, path string, v any) error {
	hc := *c.hc
	hc.Timeout = 0
	return (&Client{Socket: c.Socket, hc: &hc}).Do(ctx, http.MethodPost, path, nil, v)
}
