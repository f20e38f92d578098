package config

import (
	"github.com/BurntSushi/toml"

	"github.com/vcored/vcored/internal/content"
)

// Content says what a dataspace's pages hold before anyone writes them: the
// one content enum of internal/content.
type Content = content.Kind

// Content kinds.
const (
	ContentZero    = content.KindZero    // zero-filled (the default without a source)
	ContentPattern = content.KindPattern // a deterministic pattern per offset (content.Pattern(seed)); used by tests and bench
	ContentFile    = content.KindFile    // read-only copy of the file at Source (the default with a source)
)

// Kind is the kind of a configuration file.
type Kind int

// File kinds.
const (
	KindCore  Kind = iota // core.toml
	KindVCore             // a vcore file, e.g. node0.toml
)

func (k Kind) String() string {
	if k == KindVCore {
		return "vcore"
	}
	return "core"
}

// vcoreOnlyKeys are top-level keys that only a vcore file has.
var vcoreOnlyKeys = []string{"node", "core_socket", "subsystem", "memory", "cpus"}

// DetectKind tells a vcore file from a core file: a file with any top-level
// key that only vcore files have (node, core_socket, memory, cpus,
// [[subsystem]]) is a vcore file; every other file, including one that is not
// valid TOML, is a core file (whose parser then reports the problems).
func DetectKind(data []byte) Kind {
	var root map[string]any
	if _, err := toml.Decode(string(data), &root); err != nil {
		return KindCore
	}
	for _, k := range vcoreOnlyKeys {
		if _, ok := root[k]; ok {
			return KindVCore
		}
	}
	return KindCore
}
