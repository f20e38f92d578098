package topology

import (
	"io/fs"
	"path"
	"strconv"

	"github.com/vcored/vcored/internal/hw"
)

// NodeMeminfo reads node's MemTotal and MemFree from
// devices/system/node/nodeN/meminfo of sysfs (rooted like Discover's), the
// same way Discover does: for samplers that follow free memory over time
// without rediscovering the machine. Errors name the file and keep
// fs.ErrNotExist (a node without a meminfo file) and ErrMalformed.
func NodeMeminfo(sysfs fs.FS, node hw.Node) (total, free hw.Bytes, err error) {
	d := &discoverer{fsys: sysfs}
	return d.readMeminfo(path.Join(nodeDir, "node"+strconv.Itoa(int(node)), "meminfo"), node)
}
