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
