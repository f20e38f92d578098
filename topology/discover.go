package topology

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
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
	memDir  = "devices/system/memory"
)

// Distances the kernel assumes when firmware gives none (LOCAL_DISTANCE and
// REMOTE_DISTANCE in include/linux/topology.h).
const (
	localDistance  = 10
	remoteDistance = 20
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
//   - devices/system/node/online (and possible) and, per online node N,
//     nodeN/cpulist, nodeN/meminfo (MemTotal, MemFree), nodeN/distance and,
//     if present, nodeN/hugepages/hugepages-<size>kB/{nr,free}_hugepages;
//   - devices/system/cpu/possible and online and, per online CPU N,
//     cpuN/topology/{physical_package_id,core_id,thread_siblings_list} and,
//     if present, cpuN/cache/index*/{level,shared_cpu_list}.
//
// Every file may end in white space and NUL bytes. Discover accepts the
// shapes real kernels of every version and architecture produce, and
// records in Machine.Notes what it had to infer:
//
//   - no node/online (older kernels): the nodeN directories are the online
//     nodes; no node directory at all (a kernel without CONFIG_NUMA, s390):
//     one node 0 holds every online CPU and the memory blocks under
//     devices/system/memory;
//   - a distance row may have one entry per online node, per possible node
//     or per node id; a node without a distance file takes the other nodes'
//     rows, else 10 to itself and 20 to the others;
//   - no cpu/possible or cpu/online: cpu/present and the cpuN directories
//     (with their cpuN/online files) stand in;
//   - an online CPU in no node's cpulist belongs to the single node, or to
//     the node its cpuN/nodeM link names; otherwise it is reported and left
//     out of AllowedCPUs;
//   - an online CPU without a topology directory is its own core in an
//     unknown package (-1); physical_package_id -1 (arm64, ppc64 LPARs) is
//     kept as an unknown package;
//   - *_list files missing with their hex-mask twins (cpumap,
//     thread_siblings, shared_cpu_map) present: the masks are read;
//   - the last-level cache is the highest cache level any CPU describes. A
//     CPU that does not describe that level (no cache directory, no index3),
//     or a machine whose caches are all private to one core, gets the group
//     of CPUs sharing its package within its node, or its node when the
//     package is unknown.
//
// Offline CPUs are listed with Online false, Node, Package and Core -1 and
// empty sets: the kernel removes their topology directories. A node without
// online CPUs is marked CPULess.
//
// A missing required file inside a directory that exists, or content that
// cannot be understood, is an error naming the file.
func Discover(sysfs fs.FS, opts ...Option) (*Machine, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	d := &discoverer{fsys: sysfs, llcFile: map[hw.CPU]string{}, caches: map[hw.CPU]cacheInfo{}}

	nl, err := d.nodeList()
	if err != nil {
		return nil, err
	}
	possible, online, err := d.cpuLists()
	if err != nil {
		return nil, err
	}

	m := &Machine{}
	if nl.noNUMA {
		n, err := d.soleNode(online)
		if err != nil {
			return nil, err
		}
		m.Nodes, m.memUnknown = []Node{n}, true
	} else {
		rows := map[hw.Node]distanceRow{}
		for _, id := range nl.ids.Slice() {
			n, row, err := d.readNode(id, online)
			if err != nil {
				return nil, err
			}
			m.Nodes = append(m.Nodes, n)
			rows[id] = row
		}
		if err := d.distances(m.Nodes, rows, nl); err != nil {
			return nil, err
		}
	}

	nodeOf, unplaced, err := d.placeCPUs(m.Nodes, online)
	if err != nil {
		return nil, err
	}
	for _, id := range possible.Slice() {
		cpu := CPU{ID: id, Node: -1, Package: -1, Core: -1}
		if online.Contains(id) {
			if err := d.readCPU(&cpu, online); err != nil {
				return nil, err
			}
			cpu.Online = true
			if n, ok := nodeOf[id]; ok {
				cpu.Node = n
			}
		}
		m.CPUs = append(m.CPUs, cpu)
	}
	d.noteCPUs()
	d.assignLLC(m.CPUs, online)
	if m.LLCGroups, err = d.llcGroups(m.CPUs); err != nil {
		return nil, err
	}

	nodes := m.NodeIDs()
	usable := online.Difference(unplaced)
	m.AllowedCPUs, m.AllowedNodes = usable, nodes
	if o.allowed {
		m.AllowedCPUs = o.allowedCPUs.Intersect(usable)
		m.AllowedNodes = o.allowedNodes.Intersect(nodes)
	}
	m.Notes = d.notes
	return m, nil
}

// discoverer reads files from one sysfs root.
type discoverer struct {
	fsys fs.FS
	// llcFile names the shared_cpu_list each CPU's LLC came from, for errors.
	llcFile map[hw.CPU]string
	// caches holds what each online CPU's cache directory says.
	caches map[hw.CPU]cacheInfo
	// noTopology and unknownPkg collect CPUs for one note each.
	noTopology, unknownPkg []hw.CPU
	notes                  []string
}

// note records something Discover inferred.
func (d *discoverer) note(format string, args ...any) {
	d.notes = append(d.notes, fmt.Sprintf(format, args...))
}

// clean drops what sysfs captures may carry around a value: trailing NUL
// bytes (some capture tools pad files) and white space on both ends.
func clean(s string) string {
	return strings.TrimSpace(strings.TrimRight(s, "\x00 \t\n\r\v\f"))
}

// read returns a file's cleaned content. Errors name the file and keep
// fs.ErrNotExist.
func (d *discoverer) read(name string) (string, error) {
	b, err := fs.ReadFile(d.fsys, name)
	if err != nil {
		return "", fmt.Errorf("topology: %w", err)
	}
	return clean(string(b)), nil
}

// exists reports whether name exists (file or directory).
func (d *discoverer) exists(name string) bool {
	_, err := fs.Stat(d.fsys, name)
	return err == nil
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

// readListOrMask reads a CPU list file, or, when it is missing, its
// hex-mask twin ("cpulist" / "cpumap"): kernels before the *_list files
// had only the masks. It returns the name of the file it read. When both
// are missing the error names the list file and wraps fs.ErrNotExist.
func (d *discoverer) readListOrMask(list, mask string) (hw.CPUSet, string, error) {
	set, err := readSet[hw.CPU](d, list)
	if !errors.Is(err, fs.ErrNotExist) {
		return set, list, err
	}
	s, merr := d.read(mask)
	if errors.Is(merr, fs.ErrNotExist) {
		return hw.CPUSet{}, list, fmt.Errorf("topology: neither %s nor %s: %w", list, path.Base(mask), fs.ErrNotExist)
	}
	if merr != nil {
		return hw.CPUSet{}, mask, merr
	}
	set, merr = parseMask(s)
	if merr != nil {
		return hw.CPUSet{}, mask, malformed(mask, s, merr)
	}
	return set, mask, nil
}

// parseMask parses the kernel's hex bitmap format: comma-separated 32-bit
// words of up to 8 hex digits, most significant first ("00000000,0000f00f").
func parseMask(s string) (hw.CPUSet, error) {
	if s == "" {
		return hw.CPUSet{}, nil
	}
	words := strings.Split(s, ",")
	var ids []hw.CPU
	for i, w := range slices.Backward(words) {
		base := (len(words) - 1 - i) * 32
		if w == "" || len(w) > 8 {
			return hw.CPUSet{}, fmt.Errorf("mask word %q is not 1-8 hex digits", w)
		}
		v, err := strconv.ParseUint(w, 16, 32)
		if err != nil {
			return hw.CPUSet{}, fmt.Errorf("mask word %q is not hexadecimal", w)
		}
		for b := range 32 {
			if v&(1<<b) == 0 {
				continue
			}
			if base+b > hw.MaxID {
				return hw.CPUSet{}, fmt.Errorf("bit %d exceeds the maximum id %d", base+b, hw.MaxID)
			}
			ids = append(ids, hw.CPU(base+b))
		}
	}
	return hw.NewSet(ids...), nil
}

// readInt reads a file holding one decimal integer (may be negative: some
// platforms report physical_package_id -1).
func (d *discoverer) readInt(name string) (int, error) {
	s, err := d.read(name)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, malformed(name, s, errors.New("not a decimal integer"))
	}
	return n, nil
}

// dirIDs returns the ids N of the directories named prefix+N in dir, and
// whether dir exists. Entries whose suffix is not a decimal id are not
// devices of that kind ("cpufreq", "cpuidle") and are skipped.
func (d *discoverer) dirIDs(dir, prefix string) ([]int, bool, error) {
	entries, err := fs.ReadDir(d.fsys, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("topology: %w", err)
	}
	var ids []int
	for _, e := range entries {
		s, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || s == "" || strings.Trim(s, "0123456789") != "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n > hw.MaxID {
			return nil, true, fmt.Errorf("topology: %s: %w: id above %d", path.Join(dir, e.Name()), ErrMalformed, hw.MaxID)
		}
		ids = append(ids, n)
	}
	return ids, true, nil
}

// nodeListing is which nodes Discover reads, and what the kernel's
// distance rows may be indexed by.
type nodeListing struct {
	ids          hw.NodeSet // the nodes read, each with a nodeN directory
	online       hw.NodeSet // the online nodes as the kernel lists them
	possible     hw.NodeSet
	havePossible bool
	noNUMA       bool // no node directory: one node 0 stands for the machine
}

// nodeList finds the online nodes: node/online, else the nodeN
// directories; no node directory at all means a kernel without NUMA.
func (d *discoverer) nodeList() (nodeListing, error) {
	onlineName := path.Join(nodeDir, "online")
	dirIDs, haveDir, err := d.dirIDs(nodeDir, "node")
	if err != nil {
		return nodeListing{}, err
	}
	if !haveDir {
		if !d.exists(cpuDir) {
			// Not a sysfs tree at all: name the first file we need.
			_, err := d.read(onlineName)
			return nodeListing{}, cmpErr(err, fmt.Errorf("topology: %s: %w", nodeDir, fs.ErrNotExist))
		}
		d.note("no %s (kernel without NUMA support): one node 0 holds every online CPU", nodeDir)
		return nodeListing{ids: hw.NewSet[hw.Node](0), online: hw.NewSet[hw.Node](0), noNUMA: true}, nil
	}
	dirs := hw.NewSet(toIDs[hw.Node](dirIDs)...)

	var nl nodeListing
	nl.possible, err = readSet[hw.Node](d, path.Join(nodeDir, "possible"))
	switch {
	case err == nil:
		nl.havePossible = true
	case !errors.Is(err, fs.ErrNotExist):
		return nodeListing{}, err
	}

	nl.online, err = readSet[hw.Node](d, onlineName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if dirs.IsEmpty() {
			d.note("no %s and no node directories (kernel without NUMA support): one node 0 holds every online CPU", onlineName)
			return nodeListing{ids: hw.NewSet[hw.Node](0), online: hw.NewSet[hw.Node](0), noNUMA: true}, nil
		}
		d.note("no %s (older kernel): the online nodes are the nodeN directories (%s)", onlineName, dirs)
		nl.online = dirs
	case err != nil:
		return nodeListing{}, err
	case nl.online.IsEmpty():
		return nodeListing{}, malformed(onlineName, "", errors.New("no node is online"))
	}
	nl.ids = nl.online.Intersect(dirs)
	if nl.ids.IsEmpty() {
		return nodeListing{}, malformed(onlineName, nl.online.String(), fmt.Errorf("none of these nodes has a directory (there are %s)", orDash(dirs.String())))
	}
	if missing := nl.online.Difference(dirs); !missing.IsEmpty() {
		d.note("nodes %s are listed in %s but have no directory: ignored", missing, onlineName)
	}
	return nl, nil
}

// cmpErr returns a if it is non-nil, else b.
func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func toIDs[T hw.ID](ns []int) []T {
	out := make([]T, len(ns))
	for i, n := range ns {
		out[i] = T(n)
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// cpuLists reads the possible and online CPUs, falling back to
// cpu/present and the cpuN directories when a file is missing.
func (d *discoverer) cpuLists() (possible, online hw.CPUSet, err error) {
	possibleName, onlineName := path.Join(cpuDir, "possible"), path.Join(cpuDir, "online")
	dirIDs, _, err := d.dirIDs(cpuDir, "cpu")
	if err != nil {
		return hw.CPUSet{}, hw.CPUSet{}, err
	}
	dirs := hw.NewSet(toIDs[hw.CPU](dirIDs)...)
	present, err := readSet[hw.CPU](d, path.Join(cpuDir, "present"))
	havePresent := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return hw.CPUSet{}, hw.CPUSet{}, err
	}

	online, err = readSet[hw.CPU](d, onlineName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		cands, from := dirs, "the cpuN directories"
		if havePresent {
			cands, from = present, path.Join(cpuDir, "present")
		}
		if cands.IsEmpty() {
			return hw.CPUSet{}, hw.CPUSet{}, err
		}
		// A hot-pluggable CPU has cpuN/online; the boot CPU often has not.
		var ids []hw.CPU
		for _, c := range cands.Slice() {
			name := path.Join(cpuDir, "cpu"+strconv.Itoa(int(c)), "online")
			v, err := d.readInt(name)
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case err != nil:
				return hw.CPUSet{}, hw.CPUSet{}, err
			case v != 0 && v != 1:
				return hw.CPUSet{}, hw.CPUSet{}, malformed(name, strconv.Itoa(v), errors.New("want 0 or 1"))
			case v == 0:
				continue
			}
			ids = append(ids, c)
		}
		online = hw.NewSet(ids...)
		d.note("no %s: the online CPUs (%s) are %s less those whose cpuN/online says 0", onlineName, online, from)
	case err != nil:
		return hw.CPUSet{}, hw.CPUSet{}, err
	}

	possible, err = readSet[hw.CPU](d, possibleName)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if havePresent {
			possible = present.Union(online)
		} else {
			possible = dirs.Union(online)
		}
		d.note("no %s: the possible CPUs are the present and online ones (%s)", possibleName, possible)
	case err != nil:
		return hw.CPUSet{}, hw.CPUSet{}, err
	}
	if !online.IsSubsetOf(possible) {
		return hw.CPUSet{}, hw.CPUSet{}, malformed(onlineName, online.String(),
			fmt.Errorf("CPUs %s are online but not possible (%s)", online.Difference(possible), possible))
	}
	return possible, online, nil
}

// distanceRow is a node's distance file as read: the values, or missing.
type distanceRow struct {
	name    string
	content string
	values  []int
	missing bool
}

// readNode reads one online node; its distance row is resolved later,
// when every node's row is known.
func (d *discoverer) readNode(id hw.Node, online hw.CPUSet) (Node, distanceRow, error) {
	dir := path.Join(nodeDir, "node"+strconv.Itoa(int(id)))
	n := Node{ID: id}

	cpus, _, err := d.readListOrMask(path.Join(dir, "cpulist"), path.Join(dir, "cpumap"))
	if err != nil {
		return Node{}, distanceRow{}, err
	}
	n.CPUs = cpus.Intersect(online)
	n.CPULess = n.CPUs.IsEmpty()

	if n.MemTotal, n.MemFree, err = d.readMeminfo(path.Join(dir, "meminfo"), id); err != nil {
		return Node{}, distanceRow{}, err
	}
	row, err := d.readDistanceRow(path.Join(dir, "distance"))
	if err != nil {
		return Node{}, distanceRow{}, err
	}
	if n.HugePages, err = d.readHugePages(path.Join(dir, "hugepages")); err != nil {
		return Node{}, distanceRow{}, err
	}
	return n, row, nil
}

// soleNode builds the one node of a machine without NUMA sysfs: every
// online CPU, and the online memory blocks as its size (free memory is
// unknown here; Host fills both from /proc/meminfo).
func (d *discoverer) soleNode(online hw.CPUSet) (Node, error) {
	n := Node{ID: 0, CPUs: online, CPULess: online.IsEmpty(), Distances: []int{localDistance}}
	name := path.Join(memDir, "block_size_bytes")
	s, err := d.read(name)
	if errors.Is(err, fs.ErrNotExist) {
		d.note("no %s: the memory size is unknown", name)
		return n, nil
	}
	if err != nil {
		return Node{}, err
	}
	block, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil || block == 0 {
		return Node{}, malformed(name, s, errors.New("not a hexadecimal block size"))
	}
	ids, _, err := d.dirIDs(memDir, "memory")
	if err != nil {
		return Node{}, err
	}
	var blocks uint64
	for _, id := range ids {
		state := path.Join(memDir, "memory"+strconv.Itoa(id), "state")
		s, err := d.read(state)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return Node{}, err
		}
		if s == "online" {
			blocks++
		}
	}
	if blocks > uint64(^hw.Bytes(0))/block {
		return Node{}, malformed(name, s, fmt.Errorf("%d blocks of this size overflow", blocks))
	}
	n.MemTotal = hw.Bytes(blocks * block)
	d.note("node 0 size is its %d online memory blocks of %s; free memory is unknown", blocks, hw.Bytes(block))
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

// readDistanceRow reads a node's SLIT row. A missing file is not an error
// (some s390 and ppc64 kernels have none); its values are filled in later.
func (d *discoverer) readDistanceRow(name string) (distanceRow, error) {
	s, err := d.read(name)
	if errors.Is(err, fs.ErrNotExist) {
		return distanceRow{name: name, missing: true}, nil
	}
	if err != nil {
		return distanceRow{}, err
	}
	row := distanceRow{name: name, content: s}
	for i, tok := range strings.Fields(s) {
		v, err := strconv.Atoi(tok)
		if err != nil || v < 0 {
			return distanceRow{}, malformed(name, s, fmt.Errorf("distance %d (%q) is not a non-negative number", i, tok))
		}
		row.values = append(row.values, v)
	}
	return row, nil
}

// distances fills every node's Distances from the rows read. The kernel
// prints one entry per online node; some kernels and architectures print
// one per possible node or per node id, so a row is indexed by the first of
// these whose size matches its length. A node without a row takes the
// other nodes' entries for it, else the kernel's defaults.
func (d *discoverer) distances(nodes []Node, rows map[hw.Node]distanceRow, nl nodeListing) error {
	maxID := hw.Node(0)
	for _, s := range []hw.NodeSet{nl.online, nl.possible} {
		if ids := s.Slice(); len(ids) > 0 {
			maxID = max(maxID, ids[len(ids)-1])
		}
	}
	type basis struct {
		ids  hw.NodeSet
		what string
	}
	bases := []basis{{nl.online, "online node"}, {nl.ids, "node read"}}
	if nl.havePossible {
		bases = append(bases, basis{nl.possible, "possible node"})
	}
	bases = append(bases, basis{hw.Range[hw.Node](0, maxID), "node id from 0"})

	// dist[a][b] for the nodes read, when some row gives it.
	dist := map[hw.Node]map[hw.Node]int{}
	var viaOther []string
	var missing []hw.Node
	for _, n := range nodes {
		row := rows[n.ID]
		if row.missing {
			missing = append(missing, n.ID)
			continue
		}
		var chosen *basis
		for i, b := range bases {
			if b.ids.Len() == len(row.values) && nl.ids.IsSubsetOf(b.ids) {
				chosen = &bases[i]
				break
			}
		}
		if chosen == nil {
			return malformed(row.name, row.content, fmt.Errorf("%d distances for %d online nodes", len(row.values), nl.online.Len()))
		}
		if chosen.what != "online node" {
			viaOther = append(viaOther, fmt.Sprintf("node %d: one per %s (%s)", n.ID, chosen.what, chosen.ids))
		}
		dist[n.ID] = map[hw.Node]int{}
		for i, col := range chosen.ids.Slice() {
			if nl.ids.Contains(col) {
				dist[n.ID][col] = row.values[i]
			}
		}
	}
	if len(viaOther) > 0 {
		d.note("distance rows not indexed by online node: %s", strings.Join(viaOther, "; "))
	}
	if len(missing) > 0 {
		d.note("nodes %s have no distance file: their distances are taken from the other nodes' rows, else %d to themselves and %d to the others",
			hw.NewSet(missing...), localDistance, remoteDistance)
	}
	for i := range nodes {
		a := nodes[i].ID
		nodes[i].Distances = make([]int, len(nodes))
		for j, nb := range nodes {
			b := nb.ID
			v, ok := dist[a][b]
			if !ok {
				v, ok = dist[b][a]
			}
			if !ok {
				v = remoteDistance
				if a == b {
					v = localDistance
				}
			}
			nodes[i].Distances[j] = v
		}
	}
	return nil
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

// placeCPUs maps every online CPU to its node. Each may be in at most one
// node's cpulist. An online CPU in none belongs to the single node, or to
// the node its cpuN/nodeM link names; the rest are returned as unplaced.
func (d *discoverer) placeCPUs(nodes []Node, online hw.CPUSet) (map[hw.CPU]hw.Node, hw.CPUSet, error) {
	nodeOf := map[hw.CPU]hw.Node{}
	for _, n := range nodes {
		for _, c := range n.CPUs.Slice() {
			if prev, dup := nodeOf[c]; dup {
				name := path.Join(nodeDir, "node"+strconv.Itoa(int(n.ID)), "cpulist")
				return nil, hw.CPUSet{}, malformed(name, n.CPUs.String(), fmt.Errorf("cpu %d is also in node %d", c, prev))
			}
			nodeOf[c] = n.ID
		}
	}
	var unlisted []hw.CPU
	for _, c := range online.Slice() {
		if _, ok := nodeOf[c]; !ok {
			unlisted = append(unlisted, c)
		}
	}
	if len(unlisted) == 0 {
		return nodeOf, hw.CPUSet{}, nil
	}
	add := func(c hw.CPU, id hw.Node) {
		nodeOf[c] = id
		for i := range nodes {
			if nodes[i].ID == id {
				nodes[i].CPUs = nodes[i].CPUs.Union(hw.NewSet(c))
				nodes[i].CPULess = false
			}
		}
	}
	if len(nodes) == 1 {
		for _, c := range unlisted {
			add(c, nodes[0].ID)
		}
		d.note("online cpus %s are in no node's cpulist: given to the only node, %d", hw.NewSet(unlisted...), nodes[0].ID)
		return nodeOf, hw.CPUSet{}, nil
	}
	var linked, unplaced []hw.CPU
	for _, c := range unlisted {
		links, _, err := d.dirIDs(path.Join(cpuDir, "cpu"+strconv.Itoa(int(c))), "node")
		if err != nil {
			return nil, hw.CPUSet{}, err
		}
		var known []hw.Node
		for _, l := range links {
			if slices.ContainsFunc(nodes, func(n Node) bool { return n.ID == hw.Node(l) }) {
				known = append(known, hw.Node(l))
			}
		}
		if len(known) == 1 {
			add(c, known[0])
			linked = append(linked, c)
		} else {
			unplaced = append(unplaced, c)
		}
	}
	if len(linked) > 0 {
		d.note("online cpus %s are in no node's cpulist: placed by their cpuN/nodeM links", hw.NewSet(linked...))
	}
	if len(unplaced) > 0 {
		d.note("online cpus %s are in no node's cpulist and name no node: node -1, left out of the allowed CPUs", hw.NewSet(unplaced...))
	}
	return nodeOf, hw.NewSet(unplaced...), nil
}

// readCPU fills the package, core and siblings of an online CPU and
// records its cache information.
func (d *discoverer) readCPU(c *CPU, online hw.CPUSet) error {
	dir := path.Join(cpuDir, "cpu"+strconv.Itoa(int(c.ID)))
	topo := path.Join(dir, "topology")
	if !d.exists(topo) {
		// Uniprocessor kernels and some architectures have no topology
		// directory: the CPU is its own core in an unknown package.
		d.noTopology = append(d.noTopology, c.ID)
		c.Siblings = hw.NewSet(c.ID)
	} else {
		var err error
		if c.Package, err = d.readInt(path.Join(topo, "physical_package_id")); err != nil {
			return err
		}
		if c.Package < 0 {
			c.Package = -1
			d.unknownPkg = append(d.unknownPkg, c.ID)
		}
		if c.Core, err = d.readInt(path.Join(topo, "core_id")); err != nil {
			return err
		}
		sib, name, err := d.readListOrMask(path.Join(topo, "thread_siblings_list"), path.Join(topo, "thread_siblings"))
		if err != nil {
			return err
		}
		if !sib.Contains(c.ID) {
			return malformed(name, sib.String(), fmt.Errorf("does not contain cpu %d itself", c.ID))
		}
		c.Siblings = sib.Intersect(online)
	}

	ci, err := d.readCache(path.Join(dir, "cache"))
	if err != nil {
		return err
	}
	if ci.level > 0 && !ci.shared.Contains(c.ID) {
		return malformed(ci.name, ci.shared.String(), fmt.Errorf("does not contain cpu %d itself", c.ID))
	}
	ci.shared = ci.shared.Intersect(online)
	d.caches[c.ID] = ci
	return nil
}

// noteCPUs records the CPUs whose topology had to be guessed.
func (d *discoverer) noteCPUs() {
	if len(d.noTopology) > 0 {
		d.note("online cpus %s have no topology directory: each is its own core (core -1) in an unknown package (-1)", hw.NewSet(d.noTopology...))
	}
	if len(d.unknownPkg) > 0 {
		d.note("cpus %s report physical_package_id -1: their package is unknown", hw.NewSet(d.unknownPkg...))
	}
}

// cacheInfo is the highest-level cache a CPU describes; level 0 when it
// describes none.
type cacheInfo struct {
	level  int
	name   string // the shared_cpu_list (or _map) read
	shared hw.CPUSet
	noDir  bool // no cache directory at all
}

// readCache returns the highest-level cache index of a cpuN/cache
// directory (the lowest index number among equals) and its sharing CPUs.
func (d *discoverer) readCache(dir string) (cacheInfo, error) {
	entries, err := fs.ReadDir(d.fsys, dir)
	if errors.Is(err, fs.ErrNotExist) {
		return cacheInfo{noDir: true}, nil
	}
	if err != nil {
		return cacheInfo{}, fmt.Errorf("topology: %w", err)
	}
	best, bestN := 0, -1
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
			return cacheInfo{}, err
		}
		if level > best || (level == best && n < bestN) {
			best, bestN = level, n
		}
	}
	if best <= 0 {
		return cacheInfo{}, nil
	}
	idx := path.Join(dir, "index"+strconv.Itoa(bestN))
	shared, name, err := d.readListOrMask(path.Join(idx, "shared_cpu_list"), path.Join(idx, "shared_cpu_map"))
	if err != nil {
		return cacheInfo{}, err
	}
	return cacheInfo{level: best, name: name, shared: shared}, nil
}

// assignLLC sets every online CPU's LLC group. The last level is the
// highest cache level any online CPU describes. A CPU that describes that
// level gets the CPUs sharing it, unless every CPU's cache at that level is
// private and the level is below 3 (an L2 per core says nothing about which
// cores share a cache). The others take a group that lists them, else the
// CPUs of their package within their node, else their node.
func (d *discoverer) assignLLC(cpus []CPU, online hw.CPUSet) {
	last := 0
	for _, c := range cpus {
		if c.Online {
			last = max(last, d.caches[c.ID].level)
		}
	}
	useCaches := last >= 3
	for _, c := range cpus {
		if ci := d.caches[c.ID]; c.Online && ci.level == last && last > 0 && !ci.shared.IsSubsetOf(c.Siblings) {
			useCaches = true
		}
	}
	type fallback struct {
		pkg  int
		node hw.Node
	}
	var real []hw.CPUSet
	reasons := map[string][]hw.CPU{} // why a CPU has no LLC information
	groupOf := map[fallback][]hw.CPU{}
	var keys []fallback
	for i := range cpus {
		c := &cpus[i]
		if !c.Online {
			continue
		}
		ci := d.caches[c.ID]
		switch {
		case useCaches && ci.level == last:
			c.LLC = ci.shared
			d.llcFile[c.ID] = ci.name
			if !slices.ContainsFunc(real, c.LLC.Equal) {
				real = append(real, c.LLC)
			}
			continue
		case ci.noDir:
			reasons["no cache directory"] = append(reasons["no cache directory"], c.ID)
		case ci.level == 0:
			reasons["no cache index"] = append(reasons["no cache index"], c.ID)
		case !useCaches:
			why := fmt.Sprintf("only core-private caches, up to L%d", last)
			reasons[why] = append(reasons[why], c.ID)
		default:
			why := fmt.Sprintf("no L%d cache, highest L%d", last, ci.level)
			reasons[why] = append(reasons[why], c.ID)
		}
	}
	var adopted []hw.CPU
	for i := range cpus {
		c := &cpus[i]
		if !c.Online || !c.LLC.IsEmpty() {
			continue
		}
		if j := slices.IndexFunc(real, func(g hw.CPUSet) bool { return g.Contains(c.ID) }); j >= 0 {
			c.LLC = real[j]
			adopted = append(adopted, c.ID)
			continue
		}
		k := fallback{c.Package, c.Node}
		if _, ok := groupOf[k]; !ok {
			keys = append(keys, k)
		}
		groupOf[k] = append(groupOf[k], c.ID)
	}
	var byPkg, byNode []hw.CPU
	for _, k := range keys {
		g := hw.NewSet(groupOf[k]...)
		for _, id := range groupOf[k] {
			cpus[slices.IndexFunc(cpus, func(c CPU) bool { return c.ID == id })].LLC = g
		}
		if k.pkg >= 0 {
			byPkg = append(byPkg, groupOf[k]...)
		} else {
			byNode = append(byNode, groupOf[k]...)
		}
	}
	if len(reasons) == 0 {
		return
	}
	var parts []string
	var all []hw.CPU
	for _, why := range slices.Sorted(maps.Keys(reasons)) {
		parts = append(parts, fmt.Sprintf("cpus %s: %s", hw.NewSet(reasons[why]...), why))
		all = append(all, reasons[why]...)
	}
	var how []string
	if len(adopted) > 0 {
		how = append(how, fmt.Sprintf("cpus %s join the L%d group that lists them", hw.NewSet(adopted...), last))
	}
	if len(byPkg) > 0 {
		how = append(how, fmt.Sprintf("cpus %s use their package (within their node) as LLC group", hw.NewSet(byPkg...)))
	}
	if len(byNode) > 0 {
		how = append(how, fmt.Sprintf("cpus %s use their node as LLC group (package unknown)", hw.NewSet(byNode...)))
	}
	d.note("no last-level cache information for cpus %s (%s): %s", hw.NewSet(all...), strings.Join(parts, "; "), strings.Join(how, "; "))
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
	// No cache information: the group was inferred from the topology.
	return path.Join(cpuDir, "cpu"+strconv.Itoa(int(cpu)), "topology")
}
