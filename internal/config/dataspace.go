package config

import (
	"fmt"
	"math"
	"strings"

	"github.com/vcored/vcored/internal/hw"
)

// pageAlign is the granularity dataspace sizes must have. The smallest page
// size Linux uses on any architecture is 4 KiB; a daemon on a machine with
// larger pages rounds the size up to its page size.
const pageAlign = 4 * hw.KiB

// Dataspace declares a region that workers map by name: core-owned ones in
// core.toml ([[dataspace]]), subsystem-local ones in a vcore file
// ([[subsystem.dataspace]]).
type Dataspace struct {
	// Name is what a worker passes to Attach; unique within its file
	// (core) or subsystem (vcore).
	Name string
	// Size is the region's size, a multiple of 4 KiB.
	Size hw.Bytes
	// Content is what the pages hold before first write.
	Content Content
	// Source is the file a ContentFile dataspace is copied from ("" otherwise).
	Source string
	// Seed parameterises ContentPattern (0 otherwise).
	Seed uint64
	// Persistent (local dataspaces only): the memory outlives the worker
	// in a checkpoint image under the vcore's state_dir.
	Persistent bool
	// RestorePrefetch (persistent dataspaces only): on attach, map the
	// image's pages in the previous run's first-touch order, in the
	// background.
	RestorePrefetch bool
	// Prefetch (local dataspaces only): whether the vcore's pagers map
	// pages ahead of sequential and strided fault streams.
	Prefetch Prefetch
	// Writable (core-owned dataspaces only): workers write to it, so
	// vcores keep no node-local replica of its pages.
	Writable bool
}

// decodeDataspace reads one [[dataspace]] table.
func decodeDataspace(t *table) Dataspace {
	var ds Dataspace
	if t.required("name", "the name workers attach it by") {
		t.setString("name", &ds.Name, checkName)
	}
	if t.required("size", `a size such as "64MiB"`) && t.setSize("size", &ds.Size) {
		switch {
		case ds.Size == 0:
			t.d.add(t.key("size"), ErrValue, nil, "size must be at least 4KiB")
		case ds.Size%pageAlign != 0:
			t.d.add(t.key("size"), ErrValue, nil, "size %s is not a multiple of 4KiB", ds.Size)
		}
	}
	t.setString("source", &ds.Source, func(s string) string {
		if !strings.HasPrefix(s, "/") {
			return fmt.Sprintf("source %q must be an absolute path", s)
		}
		return ""
	})
	ds.Content = ContentZero
	if t.has("source") {
		ds.Content = ContentFile
	}
	setEnum(t, "content", &ds.Content, ContentZero, ContentPattern, ContentFile)
	var seed int
	t.setInt("seed", &seed, 0, math.MaxInt64)
	ds.Seed = uint64(seed)
	switch {
	case ds.Content == ContentFile && !t.has("source"):
		t.d.add(t.key("content"), ErrMissing, nil, `content = "file" needs a source`)
	case ds.Content != ContentFile && t.has("source") && t.has("content"):
		t.d.add(t.key("source"), ErrConflict, nil, "source is only used with content = \"file\" (content is %q)", ds.Content)
	}
	if t.has("seed") && ds.Content != ContentPattern {
		t.d.add(t.key("seed"), ErrConflict, nil, "seed is only used with content = \"pattern\"")
	}
	decodePersistent(t, &ds)
	decodeRestorePrefetch(t, &ds)
	decodePrefetch(t, &ds)
	decodeWritable(t, &ds)
	t.done()
	return ds
}

// checkUniqueNames reports a dataspace name used twice in one list.
func checkUniqueNames(d *decoder, path string, list []Dataspace) {
	seen := map[string]int{}
	for i, ds := range list {
		if ds.Name == "" {
			continue
		}
		if j, dup := seen[ds.Name]; dup {
			d.add(keyPath(indexPath(path, i), "name"), ErrConflict, nil, "dataspace name %q is already used by %s", ds.Name, indexPath(path, j))
			continue
		}
		seen[ds.Name] = i
	}
}
