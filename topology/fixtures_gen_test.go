package topology

import (
	"flag"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/hw"
)

// The synthetic sysfs trees under testdata/ are written by this generator
// and committed as plain text:
//
//	go test ./topology -run TestGenerateFixtures -update-fixtures
//
// testdata/single-node-2cpu is not generated: it was copied from the
// development machine's /sys (see testdata/README.md). The expected results
// in discover_test.go are not derived from the specs below (the first ones
// were written out by hand, those of realShapeSpecs printed once and
// checked line by line), so a generator bug shows up as a test failure.
var updateFixtures = flag.Bool("update-fixtures", false, "rewrite the generated sysfs trees under testdata/")

// genMachine describes a machine the way sysfs shows it.
type genMachine struct {
	name      string
	possible  string // devices/system/cpu/possible
	nodes     []genNode
	distances [][]int  // SLIT rows, in node order; nil: no distance files
	cpus      []genCPU // online CPUs only: the kernel removes offline CPUs' topology and cache

	// arch, when set, makes a full tree: the files a real kernel of that
	// architecture ("x86", "arm64", "ppc64", "s390") shows besides the ones
	// Discover reads (node/possible and has_*, cpu/present, offline and
	// kernel_max, cpuN/online, die/cluster/book ids, the *_cpus lists and
	// masks, cache type, size and shared_cpu_map, cpuN/nodeM links). The
	// first fixtures leave it empty and hold only what Discover reads.
	arch          string
	present       string // cpu/present (full trees); default possible
	possibleNodes string // node/possible (full trees); default the node ids
	// edit changes the generated tree to the shape the fixture is about.
	edit func(f *fixtureFiles)
}

// fixtureFiles is a tree being generated: file contents and symlinks, by
// path relative to the root.
type fixtureFiles struct {
	files map[string]string
	links map[string]string // path → link target
}

// drop removes every file and link under (or at) prefix.
func (f *fixtureFiles) drop(prefix string) {
	for _, m := range []map[string]string{f.files, f.links} {
		for k := range m {
			if k == prefix || strings.HasPrefix(k, strings.TrimSuffix(prefix, "/")+"/") {
				delete(m, k)
			}
		}
	}
}

// rename moves a file.
func (f *fixtureFiles) rename(from, to string) {
	f.files[to] = f.files[from]
	delete(f.files, from)
}

// mask renders a CPU list the way the kernel prints cpumap files: 32-bit
// hex words, most significant first, as many as nrCPUs needs.
func mask(list string, nrCPUs int) string {
	words := make([]uint32, (nrCPUs+31)/32)
	for _, c := range hw.MustParse[hw.CPU](list).Slice() {
		words[int(c)/32] |= 1 << (uint(c) % 32)
	}
	parts := make([]string, len(words))
	for i, w := range words {
		parts[len(words)-1-i] = fmt.Sprintf("%08x", w)
	}
	return strings.Join(parts, ",")
}

type genNode struct {
	id                    int
	cpus                  string // online CPUs, as the kernel prints nodeN/cpulist
	memTotalKB, memFreeKB uint64
	huge2M, huge2MFree    int
	huge1G, huge1GFree    int
	noHuge                bool // no hugepages directory (old kernels, memory-only nodes)
}

type genCPU struct {
	id, pkg, core int
	siblings      string // thread_siblings_list; also L1 and L2 (per core)
	llc           string // L3 shared_cpu_list; "" for no L3 (index3)
}

func list(ids ...int) string { return hw.NewSet(ids...).String() }

// smtMachine builds the CPUs of a machine with two hardware threads per core
// numbered the Linux way: cpu i and cpu i+cores are siblings. pkg, core and
// llc map a core index (0..cores-1) to its package, core_id and L3 group.
func smtMachine(cores int, pkg, core func(int) int, llc func(int) []int) []genCPU {
	var cpus []genCPU
	for i := range 2 * cores {
		c := i % cores
		var l3 []int
		for _, x := range llc(c) {
			l3 = append(l3, x, x+cores)
		}
		cpus = append(cpus, genCPU{id: i, pkg: pkg(c), core: core(c), siblings: list(c, c+cores), llc: list(l3...)})
	}
	return cpus
}

// span returns lo, lo+1, ..., lo+n-1.
func span(lo, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = lo + i
	}
	return out
}

func fixtureSpecs() []genMachine {
	// Two sockets of 4 cores, SMT2 (16 CPUs), one node per socket; each
	// socket has two L3 groups of two cores.
	twoSocket := genMachine{
		name:     "two-socket-smt2",
		possible: "0-15",
		nodes: []genNode{
			{id: 0, cpus: "0-3,8-11", memTotalKB: 32826428, memFreeKB: 30112044, huge2M: 512, huge2MFree: 500},
			{id: 1, cpus: "4-7,12-15", memTotalKB: 33030744, memFreeKB: 31567980, huge2M: 512, huge2MFree: 512, huge1G: 2, huge1GFree: 1},
		},
		distances: [][]int{{10, 21}, {21, 10}},
		cpus: smtMachine(8,
			func(c int) int { return c / 4 },
			func(c int) int { return c % 4 },
			func(c int) []int { return span(c/2*2, 2) }),
	}

	// EPYC 7302-like ×2 in NPS4: 16 cores per socket, 4 nodes per socket of
	// 4 cores each, an L3 per CCX of 2 cores, SMT2: 64 CPUs.
	var epycNodes []genNode
	var epycDist [][]int
	for n := range 8 {
		epycNodes = append(epycNodes, genNode{
			id: n, cpus: list(append(span(4*n, 4), span(32+4*n, 4)...)...),
			memTotalKB: 16252928 + uint64(n)*1024, memFreeKB: 15728640 - uint64(n)*4096,
			huge2M: 0, huge2MFree: 0,
		})
		row := make([]int, 8)
		for m := range 8 {
			switch {
			case m == n:
				row[m] = 10
			case m/4 == n/4:
				row[m] = 12
			default:
				row[m] = 32
			}
		}
		epycDist = append(epycDist, row)
	}
	epyc := genMachine{
		name:      "epyc-8node-nps4",
		possible:  "0-63",
		nodes:     epycNodes,
		distances: epycDist,
		cpus: smtMachine(32,
			func(c int) int { return c / 16 },
			func(c int) int { return c % 16 },
			func(c int) []int { return span(c/2*2, 2) }),
	}

	// Two CPU nodes (one socket each, 4 cores, no SMT) and a CXL memory
	// expander as node 2.
	var cpulessCPUs []genCPU
	for i := range 8 {
		cpulessCPUs = append(cpulessCPUs, genCPU{id: i, pkg: i / 4, core: i % 4, siblings: list(i), llc: list(span(i/4*4, 4)...)})
	}
	cpuless := genMachine{
		name:     "cpuless-memory-node",
		possible: "0-7",
		nodes: []genNode{
			{id: 0, cpus: "0-3", memTotalKB: 16384000, memFreeKB: 15000000},
			{id: 1, cpus: "4-7", memTotalKB: 16515072, memFreeKB: 16000000},
			{id: 2, cpus: "", memTotalKB: 67108864, memFreeKB: 67100000},
		},
		distances: [][]int{{10, 21, 24}, {21, 10, 24}, {24, 24, 10}},
		cpus:      cpulessCPUs,
	}

	// Node ids {0,2}; 10 possible CPUs of which 8 are present and 6 online
	// (3 and 7 offlined, 8-9 never plugged in).
	var holesCPUs []genCPU
	for _, i := range []int{0, 1, 2, 4, 5, 6} {
		llc := "0-2"
		if i >= 4 {
			llc = "4-6"
		}
		holesCPUs = append(holesCPUs, genCPU{id: i, pkg: i / 4, core: i % 4, siblings: list(i), llc: llc})
	}
	holes := genMachine{
		name:     "offline-cpus-holes",
		possible: "0-9",
		nodes: []genNode{
			{id: 0, cpus: "0-2", memTotalKB: 8388608, memFreeKB: 7340032, huge2M: 16, huge2MFree: 16},
			{id: 2, cpus: "4-6", memTotalKB: 8257536, memFreeKB: 8000000},
		},
		distances: [][]int{{10, 20}, {20, 10}},
		cpus:      holesCPUs,
	}
	return append([]genMachine{twoSocket, epyc, cpuless, holes}, realShapeSpecs()...)
}

func TestGenerateFixtures(t *testing.T) {
	if !*updateFixtures {
		t.Skip("fixtures are committed; pass -update-fixtures to rewrite them")
	}
	for _, m := range fixtureSpecs() {
		root := filepath.Join("testdata", m.name)
		if err := os.RemoveAll(root); err != nil {
			t.Fatal(err)
		}
		if err := writeFixture(root, m); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
	}
}

func writeFixture(root string, m genMachine) error {
	files := map[string]string{}
	var nodeIDs, online []int
	for _, c := range m.cpus {
		online = append(online, c.id)
	}
	for i, n := range m.nodes {
		nodeIDs = append(nodeIDs, n.id)
		dir := fmt.Sprintf("devices/system/node/node%d/", n.id)
		files[dir+"cpulist"] = n.cpus + "\n"
		files[dir+"meminfo"] = meminfo(n)
		if m.distances != nil {
			files[dir+"distance"] = strings.Trim(fmt.Sprint(m.distances[i]), "[]") + "\n"
		}
		for _, h := range []struct {
			kb          int
			total, free int
		}{{2048, n.huge2M, n.huge2MFree}, {1048576, n.huge1G, n.huge1GFree}} {
			if n.noHuge {
				break
			}
			hd := fmt.Sprintf("%shugepages/hugepages-%dkB/", dir, h.kb)
			files[hd+"nr_hugepages"] = fmt.Sprintf("%d\n", h.total)
			files[hd+"free_hugepages"] = fmt.Sprintf("%d\n", h.free)
		}
	}
	files["devices/system/node/online"] = list(nodeIDs...) + "\n"
	files["devices/system/cpu/possible"] = m.possible + "\n"
	files["devices/system/cpu/online"] = list(online...) + "\n"
	for _, c := range m.cpus {
		dir := fmt.Sprintf("devices/system/cpu/cpu%d/", c.id)
		files[dir+"topology/physical_package_id"] = fmt.Sprintf("%d\n", c.pkg)
		files[dir+"topology/core_id"] = fmt.Sprintf("%d\n", c.core)
		files[dir+"topology/thread_siblings_list"] = c.siblings + "\n"
		for i, cache := range []struct {
			level  int
			shared string
		}{{1, c.siblings}, {1, c.siblings}, {2, c.siblings}, {3, c.llc}} {
			if cache.shared == "" {
				continue
			}
			cd := fmt.Sprintf("%scache/index%d/", dir, i)
			files[cd+"level"] = fmt.Sprintf("%d\n", cache.level)
			files[cd+"shared_cpu_list"] = cache.shared + "\n"
		}
	}
	f := &fixtureFiles{files: files, links: map[string]string{}}
	if m.arch != "" {
		addRealFiles(f, m)
	}
	if m.edit != nil {
		m.edit(f)
	}
	for name, target := range f.links {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// meminfo renders a node meminfo file in the kernel's layout.
func meminfo(n genNode) string {
	used := n.memTotalKB - n.memFreeKB
	var b strings.Builder
	for _, kv := range []struct {
		key string
		kb  uint64
	}{
		{"MemTotal", n.memTotalKB}, {"MemFree", n.memFreeKB}, {"MemUsed", used},
		{"SwapCached", 0}, {"Active", used / 4}, {"Inactive", used / 3},
		{"Dirty", 12}, {"Writeback", 0}, {"FilePages", used / 2}, {"Mapped", used / 8},
		{"AnonPages", used / 3}, {"Shmem", used / 50}, {"KernelStack", 1632},
		{"PageTables", 3188}, {"Slab", used / 20}, {"AnonHugePages", 0},
	} {
		fmt.Fprintf(&b, "Node %d %-15s %8d kB\n", n.id, kv.key+":", kv.kb)
	}
	// The HugePages_ lines count the default (2 MiB) size only.
	fmt.Fprintf(&b, "Node %d HugePages_Total: %5d\nNode %d HugePages_Free:  %5d\nNode %d HugePages_Surp:  %5d\n",
		n.id, n.huge2M, n.id, n.huge2MFree, n.id, 0)
	return b.String()
}

// addRealFiles adds what a real kernel of m.arch shows besides the files
// Discover reads, so that full fixtures look like captured trees.
func addRealFiles(f *fixtureFiles, m genMachine) {
	possible := hw.MustParse[hw.CPU](m.possible)
	maxCPU := possible.Slice()[possible.Len()-1]
	nrCPUs := int(maxCPU) + 1
	var online []hw.CPU
	for _, c := range m.cpus {
		online = append(online, hw.CPU(c.id))
	}
	onlineSet := hw.NewSet(online...)
	present := possible
	if m.present != "" {
		present = hw.MustParse[hw.CPU](m.present)
	}

	const nd, cd = "devices/system/node/", "devices/system/cpu/"
	var ids, withCPU, withMem, normal []int
	nodeOf := map[int]int{}
	for _, n := range m.nodes {
		ids = append(ids, n.id)
		cpus := hw.MustParse[hw.CPU](n.cpus)
		if !cpus.IsEmpty() {
			withCPU = append(withCPU, n.id)
		}
		if n.memTotalKB > 0 {
			withMem = append(withMem, n.id)
			if !cpus.IsEmpty() { // memory-only (CXL) memory is ZONE_MOVABLE
				normal = append(normal, n.id)
			}
		}
		for _, c := range cpus.Slice() {
			nodeOf[int(c)] = n.id
		}
		f.files[fmt.Sprintf("%snode%d/cpumap", nd, n.id)] = mask(n.cpus, nrCPUs) + "\n"
	}
	if len(m.nodes) > 0 {
		possibleNodes := m.possibleNodes
		if possibleNodes == "" {
			possibleNodes = list(ids...)
		}
		f.files[nd+"possible"] = possibleNodes + "\n"
		f.files[nd+"has_cpu"] = list(withCPU...) + "\n"
		f.files[nd+"has_memory"] = list(withMem...) + "\n"
		f.files[nd+"has_normal_memory"] = list(normal...) + "\n"
		f.files[nd+"has_generic_initiator"] = "\n"
	}

	kernelMax := map[string]int{"x86": 8191, "arm64": 4095, "ppc64": 2047, "s390": 399}[m.arch]
	f.files[cd+"present"] = present.String() + "\n"
	f.files[cd+"offline"] = possible.Difference(onlineSet).String() + "\n"
	f.files[cd+"kernel_max"] = fmt.Sprintf("%d\n", kernelMax)
	for _, c := range present.Difference(onlineSet).Slice() {
		f.files[fmt.Sprintf("%scpu%d/online", cd, c)] = "0\n"
	}

	samePkg := func(pkg int, also func(genCPU) bool) string {
		var out []int
		for _, o := range m.cpus {
			if o.pkg == pkg && also(o) {
				out = append(out, o.id)
			}
		}
		return list(out...)
	}
	all := func(genCPU) bool { return true }
	for _, c := range m.cpus {
		dir := fmt.Sprintf("%scpu%d/", cd, c.id)
		td := dir + "topology/"
		if c.id != 0 || m.arch != "x86" { // the x86 boot CPU cannot be offlined
			f.files[dir+"online"] = "1\n"
		}
		if n, ok := nodeOf[c.id]; ok {
			f.links[fmt.Sprintf("%snode%d", dir, n)] = fmt.Sprintf("../../node/node%d", n)
		}
		pkgCPUs := samePkg(c.pkg, all)
		for name, l := range map[string]string{
			"thread_siblings": c.siblings, "core_cpus": c.siblings,
			"core_siblings": pkgCPUs, "package_cpus": pkgCPUs,
		} {
			f.files[td+name+"_list"] = l + "\n"
			f.files[td+name] = mask(l, nrCPUs) + "\n"
		}
		switch m.arch {
		case "x86", "arm64":
			// x86: a cluster is the cores sharing an L2 (one core here);
			// arm64: the cores of a 4-core cluster.
			clusterOf := func(o genCPU) int { return o.core }
			if m.arch == "arm64" {
				clusterOf = func(o genCPU) int { return o.core / 4 }
			}
			cl := samePkg(c.pkg, func(o genCPU) bool { return clusterOf(o) == clusterOf(c) })
			f.files[td+"cluster_id"] = fmt.Sprintf("%d\n", clusterOf(c))
			f.files[td+"cluster_cpus_list"] = cl + "\n"
			f.files[td+"cluster_cpus"] = mask(cl, nrCPUs) + "\n"
			if m.arch == "x86" {
				f.files[td+"die_id"] = fmt.Sprintf("%d\n", c.pkg)
				f.files[td+"die_cpus_list"] = pkgCPUs + "\n"
				f.files[td+"die_cpus"] = mask(pkgCPUs, nrCPUs) + "\n"
			}
		case "s390":
			for _, name := range []string{"book", "drawer"} {
				f.files[td+name+"_id"] = "0\n"
				f.files[td+name+"_siblings_list"] = pkgCPUs + "\n"
				f.files[td+name+"_siblings"] = mask(pkgCPUs, nrCPUs) + "\n"
			}
		}
		for i, cache := range []struct{ typ, size, shared string }{
			{"Data", "32K", c.siblings}, {"Instruction", "32K", c.siblings},
			{"Unified", "1024K", c.siblings}, {"Unified", "32768K", c.llc},
		} {
			ci := fmt.Sprintf("%scache/index%d/", dir, i)
			if _, ok := f.files[ci+"level"]; !ok {
				continue
			}
			f.files[ci+"type"] = cache.typ + "\n"
			f.files[ci+"size"] = cache.size + "\n"
			f.files[ci+"coherency_line_size"] = "64\n"
			f.files[ci+"shared_cpu_map"] = mask(cache.shared, nrCPUs) + "\n"
			if m.arch == "x86" {
				first, _ := hw.MustParse[hw.CPU](cache.shared).Min()
				f.files[ci+"id"] = fmt.Sprintf("%d\n", first)
			}
		}
	}
}

// plainCPUs builds n CPUs without SMT: cpu i is core i%perPkg of package
// i/perPkg, and its L3 is llc(i) ("" for none).
func plainCPUs(n, perPkg int, llc func(i int) string) []genCPU {
	var cpus []genCPU
	for i := range n {
		cpus = append(cpus, genCPU{id: i, pkg: i / perPkg, core: i % perPkg, siblings: list(i), llc: llc(i)})
	}
	return cpus
}

// realShapeSpecs are the shapes of sysfs trees captured on real machines
// of other vendors, kernels and architectures, on which Discover once
// failed (see the notes each fixture's expectation in discover_test.go
// lists). They are full trees (arch set).
func realShapeSpecs() []genMachine {
	// A 6-core SMT2 Xeon whose capture tool padded every file with a NUL
	// after the newline ("0-11\n\x00").
	xeon := genMachine{
		name: "xeon-nul-padded", arch: "x86", possible: "0-11",
		nodes:     []genNode{{id: 0, cpus: "0-11", memTotalKB: 65821396, memFreeKB: 60112284, huge2M: 64, huge2MFree: 64}},
		distances: [][]int{{10}},
		cpus: smtMachine(6,
			func(int) int { return 0 },
			func(c int) int { return []int{0, 1, 2, 8, 9, 10}[c] }, // Intel numbers cores with holes
			func(int) []int { return span(0, 6) }),
		edit: func(f *fixtureFiles) {
			for k, v := range f.files {
				f.files[k] = v + "\x00"
			}
		},
	}

	// A 2.6.18-era two-socket box: no node/online, no node/possible, no
	// cpu/possible; only the hex masks (nodeN/cpumap, thread_siblings,
	// shared_cpu_map), no per-node hugepages.
	oldNodes := []genNode{
		{id: 0, cpus: "0-3", memTotalKB: 8388608, memFreeKB: 6291456, noHuge: true},
		{id: 1, cpus: "4-7", memTotalKB: 8388608, memFreeKB: 7340032, noHuge: true},
	}
	old := genMachine{
		name: "rhel5-masks-no-node-online", possible: "0-7", nodes: oldNodes,
		distances: [][]int{{10, 20}, {20, 10}},
		cpus:      plainCPUs(8, 4, func(i int) string { return list(span(i/4*4, 4)...) }),
		edit: func(f *fixtureFiles) {
			f.drop("devices/system/node/online")
			f.rename("devices/system/cpu/possible", "devices/system/cpu/present")
			for k, v := range f.files {
				dir, base := path.Split(k)
				to, ok := map[string]string{"cpulist": "cpumap", "thread_siblings_list": "thread_siblings", "shared_cpu_list": "shared_cpu_map"}[base]
				if ok {
					delete(f.files, k)
					f.files[dir+to] = mask(strings.TrimSpace(v), 8) + "\n"
				}
			}
		},
	}

	// A guest whose node 0 is possible but offline (no CPUs, no memory):
	// node 1's distance row has one entry per possible node, "21 10".
	offlineNode0 := genMachine{
		name: "node0-offline-possible-distance", arch: "x86", possible: "0-3", possibleNodes: "0-1",
		nodes:     []genNode{{id: 1, cpus: "0-3", memTotalKB: 4027272, memFreeKB: 3512020}},
		distances: [][]int{{21, 10}},
		cpus:      plainCPUs(4, 4, func(int) string { return "0-3" }),
	}

	// A KVM guest with two sockets (one node each) whose caches are
	// described unevenly: cpus 0-2 have an L3 (0-3), cpu 3 has no cache
	// directory, cpus 4-5 stop at a private L2, cpus 6-7 have no cache
	// directory.
	kvm := genMachine{
		name: "kvm-partial-caches", arch: "x86", possible: "0-7",
		nodes: []genNode{
			{id: 0, cpus: "0-3", memTotalKB: 4030464, memFreeKB: 3650112},
			{id: 1, cpus: "4-7", memTotalKB: 4128768, memFreeKB: 3997696},
		},
		distances: [][]int{{10, 20}, {20, 10}},
		cpus: plainCPUs(8, 4, func(i int) string {
			if i < 4 {
				return "0-3"
			}
			return ""
		}),
		edit: func(f *fixtureFiles) {
			for _, c := range []int{3, 6, 7} {
				f.drop(fmt.Sprintf("devices/system/cpu/cpu%d/cache", c))
			}
		},
	}

	// An arm64 server booted with ACPI tables that give no package
	// (physical_package_id -1): two nodes of one 4-core cluster each,
	// caches L1 and a private L2 only (the system cache is not described).
	var armCPUs []genCPU
	for i := range 8 {
		armCPUs = append(armCPUs, genCPU{id: i, pkg: -1, core: i, siblings: list(i)})
	}
	arm := genMachine{
		name: "arm64-no-package-private-l2", arch: "arm64", possible: "0-7",
		nodes: []genNode{
			{id: 0, cpus: "0-3", memTotalKB: 66779136, memFreeKB: 64012288},
			{id: 1, cpus: "4-7", memTotalKB: 67043328, memFreeKB: 65536000},
		},
		distances: [][]int{{10, 16}, {16, 10}},
		cpus:      armCPUs,
	}

	// A server with a CXL memory expander as node 2 (ids 0 and 2 of 0-3
	// possible): node 2 has no CPUs (has_cpu is just "0"), no normal memory
	// and no hugepages directory. No cpu/online: cpu/present says 0-7 and
	// cpu7/online says 0.
	var sprCPUs []genCPU
	for i := range 7 {
		sib := list(i%4, i%4+4)
		if i%4 == 3 {
			sib = "3" // its sibling 7 is offline
		}
		sprCPUs = append(sprCPUs, genCPU{id: i, pkg: 0, core: i % 4, siblings: sib, llc: "0-6"})
	}
	cxl := genMachine{
		name: "cxl-memory-only-node", arch: "x86", possible: "0-15", present: "0-7", possibleNodes: "0-3",
		nodes: []genNode{
			{id: 0, cpus: "0-6", memTotalKB: 32600064, memFreeKB: 30048256, huge2M: 8, huge2MFree: 8},
			{id: 2, cpus: "", memTotalKB: 134217728, memFreeKB: 134000000, noHuge: true},
		},
		distances: [][]int{{10, 50}, {50, 10}},
		cpus:      sprCPUs,
		edit:      func(f *fixtureFiles) { f.drop("devices/system/cpu/online") },
	}

	// A POWER9 LPAR in SMT4 mode of SMT8 cores: threads 4-7 of every core
	// are offline, packages are unknown (-1), each core has its own L3,
	// and the nodes have no distance files; 256 nodes are possible.
	var p9CPUs []genCPU
	for core := range 4 {
		for t := range 4 {
			id := core*8 + t
			thr := list(span(core*8, 4)...)
			p9CPUs = append(p9CPUs, genCPU{id: id, pkg: -1, core: core * 8, siblings: thr, llc: thr})
		}
	}
	power := genMachine{
		name: "power9-lpar-no-distance", arch: "ppc64", possible: "0-31", possibleNodes: "0-255",
		nodes: []genNode{
			{id: 0, cpus: "0-3,8-11", memTotalKB: 33554432, memFreeKB: 30408704},
			{id: 1, cpus: "16-19,24-27", memTotalKB: 33554432, memFreeKB: 31457280},
		},
		cpus: p9CPUs,
		edit: func(f *fixtureFiles) {
			// ppc64's huge page sizes are 16 MiB and 16 GiB.
			for k, v := range f.files {
				if strings.Contains(k, "/hugepages/") {
					delete(f.files, k)
					k = strings.NewReplacer("hugepages-2048kB", "hugepages-16384kB", "hugepages-1048576kB", "hugepages-16777216kB").Replace(k)
					f.files[k] = v
				}
			}
		},
	}

	// An s390x guest: the kernel has no NUMA (no devices/system/node), four
	// of 16 possible CPUs are online as two SMT2 cores, the caches (L1 and
	// L2, data and instruction) are private, memory is 16 online blocks of
	// 256 MiB and 4 offline ones.
	var zCPUs []genCPU
	for i := range 4 {
		zCPUs = append(zCPUs, genCPU{id: i, pkg: 0, core: i / 2, siblings: list(i/2*2, i/2*2+1), llc: list(i)})
	}
	s390 := genMachine{
		name: "s390x-no-numa", arch: "s390", possible: "0-15", present: "0-3",
		nodes:     []genNode{{id: 0, cpus: "0-3"}},
		distances: [][]int{{10}},
		cpus:      zCPUs,
		edit: func(f *fixtureFiles) {
			f.drop("devices/system/node")
			for c := range 4 {
				ci := fmt.Sprintf("devices/system/cpu/cpu%d/cache/", c)
				for i, typ := range []string{"Data", "Instruction", "Data", "Instruction"} {
					f.files[fmt.Sprintf("%sindex%d/level", ci, i)] = fmt.Sprintf("%d\n", 1+i/2)
					f.files[fmt.Sprintf("%sindex%d/type", ci, i)] = typ + "\n"
					f.files[fmt.Sprintf("%sindex%d/shared_cpu_list", ci, i)] = fmt.Sprintf("%d\n", c)
					f.files[fmt.Sprintf("%sindex%d/shared_cpu_map", ci, i)] = mask(list(c), 16) + "\n"
				}
			}
			f.files["devices/system/memory/block_size_bytes"] = "10000000\n"
			for b := range 20 {
				state, on := "online", "1"
				if b >= 16 {
					state, on = "offline", "0"
				}
				f.files[fmt.Sprintf("devices/system/memory/memory%d/state", b)] = state + "\n"
				f.files[fmt.Sprintf("devices/system/memory/memory%d/online", b)] = on + "\n"
			}
		},
	}

	// Two sockets where CPUs hot-added after boot are in no node's cpulist:
	// cpu 3 has a cpu3/node0 link, cpu 7 has none.
	unlisted := genMachine{
		name: "hotplug-cpus-unlisted", arch: "x86", possible: "0-7",
		nodes: []genNode{
			{id: 0, cpus: "0-2", memTotalKB: 16318540, memFreeKB: 15200000},
			{id: 1, cpus: "4-6", memTotalKB: 16511248, memFreeKB: 16000000},
		},
		distances: [][]int{{10, 21}, {21, 10}},
		cpus:      plainCPUs(8, 4, func(i int) string { return list(span(i/4*4, 4)...) }),
		edit: func(f *fixtureFiles) {
			f.links["devices/system/cpu/cpu3/node0"] = "../../node/node0"
		},
	}
	return []genMachine{xeon, old, offlineNode0, kvm, arm, cxl, power, s390, unlisted}
}
