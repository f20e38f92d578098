package config

import "strings"

// decodePersistent reads `persistent` of a subsystem's local dataspace
// (core-owned dataspaces cannot be persistent: their memory is core's).
// A persistent dataspace keeps its memory in a checkpoint image under the
// vcore's state_dir (docs/CHECKPOINT.md): attaching it restores the pages
// of the last checkpoint, `vcored checkpoint` writes a new one. Pages the
// image lacks hold the dataspace's content.
func decodePersistent(t *table, ds *Dataspace) {
	if !strings.HasPrefix(t.path, "subsystem") {
		return
	}
	v, ok := t.get("persistent")
	if !ok {
		return
	}
	b, ok := v.(bool)
	if !ok {
		t.wrongType("persistent", "true or false", v)
		return
	}
	ds.Persistent = b
}

// decodeRestorePrefetch reads `restore_prefetch` of a persistent
// dataspace: on attach, the vcore maps the image's pages ahead of the
// faults, in the order the previous run first touched them (its
// TOUCH-ORDER), in the background. Off by default; meaningless (refused)
// without persistent = true.
func decodeRestorePrefetch(t *table, ds *Dataspace) {
	if !strings.HasPrefix(t.path, "subsystem") {
		return
	}
	t.setBool("restore_prefetch", &ds.RestorePrefetch)
	if ds.RestorePrefetch && !ds.Persistent {
		t.d.add(t.key("restore_prefetch"), ErrConflict, nil, "restore_prefetch needs persistent = true (it prefetches from the checkpoint image)")
	}
}

// Prefetch modes of a local dataspace (`prefetch`).
type Prefetch string

const (
	// PrefetchOff: every page is mapped by its own fault (with
	// fault-around). The default ("" for a core-owned dataspace).
	PrefetchOff Prefetch = "off"
	// PrefetchSequential: the pager follows sequential and strided fault
	// streams and maps pages ahead of them (pager.Region.Prefetch).
	PrefetchSequential Prefetch = "sequential"
)

// decodePrefetch reads `prefetch` of a subsystem's local dataspace (the
// vcore's pagers serve those; core-owned ones are not served there). Unset
// means off; a local dataspace's is always set.
func decodePrefetch(t *table, ds *Dataspace) {
	if !strings.HasPrefix(t.path, "subsystem") {
		return
	}
	ds.Prefetch = PrefetchOff
	setEnum(t, "prefetch", &ds.Prefetch, PrefetchOff, PrefetchSequential)
}

// decodeWritable reads `writable` of a core-owned dataspace: workers write
// to their private copies of it, so vcores keep no replica of it (they
// replicate read-only ones only).
func decodeWritable(t *table, ds *Dataspace) {
	if strings.HasPrefix(t.path, "subsystem") {
		return
	}
	v, ok := t.get("writable")
	if !ok {
		return
	}
	b, ok := v.(bool)
	if !ok {
		t.wrongType("writable", "true or false", v)
		return
	}
	ds.Writable = b
}
