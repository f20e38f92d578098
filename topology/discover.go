package topology

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/vcored/vcored/internal/hw"
)

// ErrMalformed is wrapped by every error about a sysfs or procfs file whose
// content cannot be understood. Such errors name the file and quote its
// content. A missing required file gives an error that wraps fs.ErrNotExist
// instead.
var ErrMalformed = errors.New("malformed content")

// Paths inside the sysfs root.
const (
	nodeDir = "devices/system/node"
	cpuDir  = "devices/system/cpu"
)

// Option tunes Discover.
type Option func(*options)

type options struct {
	allowed      bool
	allowedCPUs  hw.CPUSet
	allowedNodes hw.NodeSet
}

// WithAllowed sets the CPUs and nodes this process may use, usually from
// ReadAllowed. Discover intersects them with the online CPUs and nodes.
// Without this option everything online is allowed.
func WithAllowed(cpus hw.CPUSet, nodes hw.NodeSet) Option {
	return func(o *options) {
		o.allowed, o.allowedCPUs, o.allowedNodes = true, cpus, nodes
	}
}

// Discover reads the machine's topology from a sysfs root (os.DirFS("/sys")
// for the real one). It reads, relative to the root:
//
//   - devices/system/node/online and, per online node N, nodeN/cpulist,
//     nodeN/meminfo (MemTotal, MemFree), nodeN/distance and, if present,
//     nodeN/hugepages/hugepages-<size>kB/{nr,free}_hugepages;
//   - devices/system/cpu/possible and online and, per online CPU N,
//     cpuN/topology/{physical_package_id,core_id,thread_siblings_list} and,
//     if present, cpuN/cache/index*/{level,shared_cpu_list}.
//
// The cache index with the highest level is the CPU's last-level cache. A
// CPU without cache information (some VMs) gets its SMT siblings as its LLC
// group. Offline CPUs are listed with Online false, Node, Package and Core
// -1 and empty sets: the kernel removes their topology directories. A node
// without online CPUs is marked CPULess.
//
// Missing optional files (cache, hugepages) are fine; a missing required
// file or malformed content is an error naming the file.
func Discover(sysfs fs.FS, opts ...Option) (*Machine, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	d := &discoverer{fsys: sysfs, llcFile: map[hw.CPU]string{}}

	nodeIDs, err := readSet[hw.Node](d, path.Join(nodeDir, "online"))
	if err != nil {
		return nil, err
	}
	possible, err := readSet[hw.CPU](d, path.Join(cpuDir, "possible"))
	if err != nil {
		return nil, err
	}
	online, err := readSet[hw.CPU](d, path.Join(cpuDir, "online"))
	if err != nil {
		return nil, err
	}
	if !online.IsSubsetOf(possible) {
		return nil, malformed(path.Join(cpuDir, "online"), online.String(),
			fmt.Errorf("CPUs %s are online but not possible (%s)", online.Difference(possible), possible))
	}

	m := &Machine{}
	for _, id := range nodeIDs.Slice() {
		n, err := d.readNode(id, nodeIDs.Len(), online)
		if err != nil {
			return nil, err
		}
		m.Nodes = append(m.Nodes, n)
	}

	nodeOf, err := nodeOfCPU(m.Nodes, online)
	if err != nil {
		return nil, err
	}
	for _, id := range possible.Slice() {
		cpu := CPU{ID: id, Node: -1, Package: -1, Core: -1}
		if online.Contains(id) {
			if err := d.readCPU(&cpu, online); err != nil {
				return nil, err
			}
			cpu.Online, cpu.Node = true, nodeOf[cpu.ID]
		}
		m.CPUs = append(m.CPUs, cpu)
	}
	if m.LLCGroups, err = d.llcGroups(m.CPUs); err != nil {
		return nil, err
	}

	nodes := m.NodeIDs()
	m.AllowedCPUs, m.AllowedNodes = online, nodes
	if o.allowed {
		m.AllowedCPUs = o.allowedCPUs.Intersect(online)
		m.AllowedNodes = o.allowedNodes.Intersect(nodes)
	}
	return m, nil
}

// discoverer reads files from one sysfs root.
type discoverer struct {
	fsys fs.FS
	// llcFile names the shared_cpu_list each CPU's LLC came from, for errors.
	llcFile map[hw.CPU]string
}

// read returns a file's content. Errors name the file and keep fs.ErrNotExist.
func (d *discoverer) read(name string) (string, error) {
	b, err := fs.ReadFile(d.fsys, name)
	if err != nil {
		return "", fmt.Errorf("topology: %w", err)
	}
	return string(b), nil
}

// malformed builds the error for a file whose content makes no sense: it
// names the file, quotes (the start of) its content and wraps both
// ErrMalformed and the reason.
func malformed(name, content string, why error) error {
	content = strings.TrimSpace(content)
	if len(content) > 80 {
		content = content[:80] + "…"
	}
	return fmt.Errorf("topology: %s: %q: %w: %w", name, content, ErrMalformed, why)
}

// readSet reads a Linux list file ("0-3,8").
func readSet[T hw.ID](d *discoverer, name string) (hw.Set[T], error) {
	s, err := d.read(name)
	if err != nil {
		return hw.Set[T]{}, err
	}
	set, err := hw.Parse[T](s)
	if err != nil {
		return hw.Set[T]{}, malformed(name, s, err)
	}
	return set, nil
}

// readInt reads a file holding one decimal integer (may be negative: some
// platforms report physical_package_id -1).
func (d *discoverer) readInt(name string) (int, error) {
	s, err := d.read(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, malformed(name, s, errors.New("not a decimal integer"))
	}
	return n, nil
}

// readNode reads one online node. nNodes is the number of online nodes: the
// distance file has one entry per online node.
func (d *discoverer) readNode(id hw.Node, nNodes int, online hw.CPUSet) (Node, error) {
	dir := path.Join(nodeDir, "node"+strconv.Itoa(int(id)))
	n := Node{ID: id}

	cpus, err := readSet[hw.CPU](d, path.Join(dir, "cpulist"))
	if err != nil {
		return Node{}, err
	}
	n.CPUs = cpus.Intersect(online)
	n.CPULess = n.CPUs.IsEmpty()

	if n.MemTotal, n.MemFree, err = d.readMeminfo(path.Join(dir, "meminfo"), id); err != nil {
		return Node{}, err
	}
	if n.Distances, err = d.readDistances(path.Join(dir, "distance"), nNodes); err != nil {
		return Node{}, err
	}
	if n.HugePages, err = d.readHugePages(path.Join(dir, "hugepages")); err != nil {
		return Node{}, err
	}
	return n, nil
}

// readMeminfo reads MemTotal and MemFree from a node meminfo file, whose
// lines look like "Node 0 MemTotal:        4024532 kB".
func (d *discoverer) readMeminfo(name string, id hw.Node) (total, free hw.Bytes, err error) {
	s, err := d.read(name)
	if err != nil {
		return 0, 0, err
	}
	var haveTotal, haveFree bool
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "Node" || f[1] != strconv.Itoa(int(id)) {
			continue
		}
		var dst *hw.Bytes
		switch f[2] {
		case "MemTotal:":
			dst, haveTotal = &total, true
		case "MemFree:":
			dst, haveFree = &free, true
		default:
			continue
		}
		kb, perr := strconv.ParseUint(f[3], 10, 64)
		if perr != nil || len(f) != 5 || f[4] != "kB" || kb > uint64(^hw.Bytes(0)/hw.KiB) {
			return 0, 0, malformed(name, strings.TrimSpace(line), errors.New(`want "Node N Key: <number> kB"`))
		}
		*dst = hw.Bytes(kb) * hw.KiB
	}
	if !haveTotal || !haveFree {
		return 0, 0, malformed(name, s, fmt.Errorf("no \"Node %d MemTotal:\" and \"Node %d MemFree:\" lines", id, id))
	}
	return total, free, nil
}

// readDistances reads a node's SLIT row: one distance per online node.
func (d *discoverer) readDistances(name string, nNodes int) ([]int, error) {
	s, err := d.read(name)
	if err != nil {
		return nil, err
	}
	f := strings.Fields(s)
	if len(f) != nNodes {
		return nil, malformed(name, s, fmt.Errorf("%d distances for %d online nodes", len(f), nNodes))
	}
	dist := make([]int, len(f))
	for i, tok := range f {
		v, err := strconv.Atoi(tok)
		if err != nil || v < 0 {
			return nil, malformed(name, s, fmt.Errorf("distance %d (%q) is not a non-negative number", i, tok))
		}
		dist[i] = v
	}
	return dist, nil
}

// readHugePages reads nodeN/hugepages/hugepages-<size>kB/. The directory is
// optional (kernels without hugetlbfs); a size directory present must hold
// both counts.
func (d *discoverer) readHugePages(dir string) (map[hw.Bytes]HugePages, error) {
	entries, err := fs.ReadDir(d.fsys, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	out := map[hw.Bytes]HugePages{}
	for _, e := range entries {
		kbStr, ok := strings.CutPrefix(e.Name(), "hugepages-")
		if !ok {
			continue
		}
		sub := path.Join(dir, e.Name())
		kbStr, ok = strings.CutSuffix(kbStr, "kB")
		kb, err := strconv.ParseUint(kbStr, 10, 32)
		if !ok || err != nil || kb == 0 {
			return nil, malformed(sub, e.Name(), errors.New(`directory name is not "hugepages-<size>kB"`))
		}
		var hp HugePages
		if hp.Total, err = d.readCount(path.Join(sub, "nr_hugepages")); err != nil {
			return nil, err
		}
		if hp.Free, err = d.readCount(path.Join(sub, "free_hugepages")); err != nil {
			return nil, err
		}
		out[hw.Bytes(kb)*hw.KiB] = hp
	}
	return out, nil
}

// readCount reads a non-negative integer.
func (d *discoverer) readCount(name string) (int, error) {
	n, err := d.readInt(name)
	if err == nil && n < 0 {
		err = malformed(name, strconv.Itoa(n), errors.New("negative count"))
	}
	return n, err
}

// readCPU fills the package, core, siblings and LLC of an online CPU.
func (d *discoverer) readCPU(c *CPU, online hw.CPUSet) error {
	dir := path.Join(cpuDir, "cpu"+strconv.Itoa(int(c.ID)))
	var err error
	if c.Package, err = d.readInt(path.Join(dir, "topology/physical_package_id")); err != nil {
		return err
	}
	if c.Core, err = d.readInt(path.Join(dir, "topology/core_id")); err != nil {
		return err
	}
	name := path.Join(dir, "topology/thread_siblings_list")
	sib, err := readSet[hw.CPU](d, name)
	if err != nil {
		return err
	}
	if !sib.Contains(c.ID) {
		return malformed(name, sib.String(), fmt.Errorf("does not contain cpu %d itself", c.ID))
	}
	c.Siblings = sib.Intersect(online)

	llcName, llc, err := d.readLLC(path.Join(dir, "cache"))
	if err != nil {
		return err
	}
	if llcName == "" { // no cache information
		c.LLC = c.Siblings
		return nil
	}
	if !llc.Contains(c.ID) {
		return malformed(llcName, llc.String(), fmt.Errorf("does not contain cpu %d itself", c.ID))
	}
	c.LLC = llc.Intersect(online)
	d.llcFile[c.ID] = llcName
	return nil
}

// readLLC returns the shared_cpu_list of the highest-level cache index in
// a cpuN/cache directory and that file's name; name is "" when the
// directory is absent or holds no index.
func (d *discoverer) readLLC(dir string) (name string, shared hw.CPUSet, err error) {
	entries, err := fs.ReadDir(d.fsys, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", hw.CPUSet{}, nil
	}
	if err != nil {
		return "", hw.CPUSet{}, fmt.Errorf("topology: %w", err)
	}
	type index struct{ n, level int }
	var idx []index
	for _, e := range entries {
		s, ok := strings.CutPrefix(e.Name(), "index")
		if !ok || !e.IsDir() {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			continue
		}
		level, err := d.readInt(path.Join(dir, e.Name(), "level"))
		if err != nil {
			return "", hw.CPUSet{}, err
		}
		idx = append(idx, index{n, level})
	}
	if len(idx) == 0 {
		return "", hw.CPUSet{}, nil
	}
	// Highest level wins; among equals the lowest index number.
	best := slices.MinFunc(idx, func(a, b index) int {
		return cmp.Or(cmp.Compare(b.level, a.level), cmp.Compare(a.n, b.n))
	})
	name = path.Join(dir, "index"+strconv.Itoa(best.n), "shared_cpu_list")
	shared, err = readSet[hw.CPU](d, name)
	return name, shared, err
}

// nodeOfCPU maps every online CPU to its node; each must be in exactly one
// node's cpulist.
func nodeOfCPU(nodes []Node, online hw.CPUSet) (map[hw.CPU]hw.Node, error) {
	nodeOf := map[hw.CPU]hw.Node{}
	for _, n := range nodes {
		for _, c := range n.CPUs.Slice() {
			if prev, dup := nodeOf[c]; dup {
				name := path.Join(nodeDir, "node"+strconv.Itoa(int(n.ID)), "cpulist")
				return nil, malformed(name, n.CPUs.String(), fmt.Errorf("cpu %d is also in node %d", c, prev))
			}
			nodeOf[c] = n.ID
		}
	}
	for _, c := range online.Slice() {
		if _, ok := nodeOf[c]; !ok {
			return nil, malformed(path.Join(cpuDir, "online"), online.String(),
				fmt.Errorf("online cpu %d is in no node's cpulist", c))
		}
	}
	return nodeOf, nil
}

// llcGroups returns the distinct LLC sets of online CPUs ordered by their
// lowest CPU. Two groups that overlap without being equal mean the cache
// files contradict each other; the error names both CPUs' files.
func (d *discoverer) llcGroups(cpus []CPU) ([]hw.CPUSet, error) {
	type group struct {
		set   hw.CPUSet
		first hw.CPU // the CPU whose file introduced the group
	}
	var groups []group
	for _, c := range cpus {
		if !c.Online || slices.ContainsFunc(groups, func(g group) bool { return g.set.Equal(c.LLC) }) {
			continue
		}
		for _, g := range groups {
			if !g.set.Intersect(c.LLC).IsEmpty() {
				return nil, malformed(d.llcSource(c.ID), c.LLC.String(),
					fmt.Errorf("overlaps the last-level cache group %s of cpu %d (%s)", g.set, g.first, d.llcSource(g.first)))
			}
		}
		groups = append(groups, group{c.LLC, c.ID})
	}
	// CPUs come in ascending order and each is in its own group, so the
	// groups are already ordered by their lowest CPU.
	out := make([]hw.CPUSet, len(groups))
	for i, g := range groups {
		out[i] = g.set
	}
	return out, nil
}

// llcSource names the file a CPU's LLC group came from.
func (d *discoverer) llcSource(cpu hw.CPU) string {
	if name := d.llcFile[cpu]; name != "" {
		return name
	}
	// No cache information: the LLC group is the SMT siblings.
	return path.Join(cpuDir, "cpu"+strconv.Itoa(int(cpu)), "topology/thread_siblings_list")
}
