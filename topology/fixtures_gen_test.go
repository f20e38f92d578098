package topology

import (
	"flag"
	"fmt"
	"os"
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
// in discover_test.go are written out by hand, not derived from the specs
// below, so a generator bug shows up as a test failure.
var updateFixtures = flag.Bool("update-fixtures", false, "rewrite the generated sysfs trees under testdata/")

// genMachine describes a machine the way sysfs shows it.
type genMachine struct {
	name      string
	possible  string // devices/system/cpu/possible
	nodes     []genNode
	distances [][]int  // SLIT rows, in node order
	cpus      []genCPU // online CPUs only: the kernel removes offline CPUs' topology and cache
}

type genNode struct {
	id                    int
	cpus                  string // online CPUs, as the kernel prints nodeN/cpulist
	memTotalKB, memFreeKB uint64
	huge2M, huge2MFree    int
	huge1G, huge1GFree    int
}

type genCPU struct {
	id, pkg, core int
	siblings      string // thread_siblings_list; also L1 and L2 (per core)
	llc           string // L3 shared_cpu_list
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
	return []genMachine{twoSocket, epyc, cpuless, holes}
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
		files[dir+"distance"] = strings.Trim(fmt.Sprint(m.distances[i]), "[]") + "\n"
		for _, h := range []struct {
			kb          int
			total, free int
		}{{2048, n.huge2M, n.huge2MFree}, {1048576, n.huge1G, n.huge1GFree}} {
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
			cd := fmt.Sprintf("%scache/index%d/", dir, i)
			files[cd+"level"] = fmt.Sprintf("%d\n", cache.level)
			files[cd+"shared_cpu_list"] = cache.shared + "\n"
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
