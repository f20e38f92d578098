package topology

import (
	"errors"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/vcored/vcored/internal/hw"
)

// loadFixture copies a fixture tree into memory so tests can break it.
func loadFixture(t testing.TB, name string) fstest.MapFS {
	t.Helper()
	src := os.DirFS(path.Join("testdata", name))
	out := fstest.MapFS{}
	err := fs.WalkDir(src, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 { // cpuN/nodeM links
			target, err := os.Readlink(path.Join("testdata", name, p))
			out[p] = &fstest.MapFile{Data: []byte(target), Mode: fs.ModeSymlink}
			return err
		}
		b, err := fs.ReadFile(src, p)
		out[p] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

const (
	n0 = "devices/system/node/node0/"
	c0 = "devices/system/cpu/cpu0/"
)

// TestDiscoverMalformed breaks one file of the two-socket fixture at a time.
// Every case must give an error that names the broken file and wraps
// ErrMalformed (bad content) or fs.ErrNotExist (a required file missing).
func TestDiscoverMalformed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		file    string // the file the error must name
		content string // new content; "" with remove deletes the file
		remove  bool
		want    error
	}{
		{"truncated cpulist", n0 + "cpulist", "0-3,8-", false, ErrMalformed},
		{"cpulist range backwards", n0 + "cpulist", "3-0", false, ErrMalformed},
		{"non-numeric distance", n0 + "distance", "10 x\n", false, ErrMalformed},
		{"negative distance", n0 + "distance", "10 -21\n", false, ErrMalformed},
		{"too few distances", n0 + "distance", "10\n", false, ErrMalformed},
		{"too many distances", n0 + "distance", "10 21 30\n", false, ErrMalformed},
		{"empty distance", n0 + "distance", "", false, ErrMalformed},
		{"meminfo without MemFree", n0 + "meminfo", "Node 0 MemTotal:  100 kB\n", false, ErrMalformed},
		{"meminfo of another node", n0 + "meminfo", "Node 1 MemTotal:  100 kB\nNode 1 MemFree:  10 kB\n", false, ErrMalformed},
		{"meminfo bad number", n0 + "meminfo", "Node 0 MemTotal:  1x0 kB\nNode 0 MemFree:  10 kB\n", false, ErrMalformed},
		{"meminfo wrong unit", n0 + "meminfo", "Node 0 MemTotal:  100 MB\nNode 0 MemFree:  10 kB\n", false, ErrMalformed},
		{"meminfo overflow", n0 + "meminfo", "Node 0 MemTotal:  99999999999999999999 kB\nNode 0 MemFree:  10 kB\n", false, ErrMalformed},
		{"node online garbage", "devices/system/node/online", "0-1x\n", false, ErrMalformed},
		{"cpu possible garbage", "devices/system/cpu/possible", "zero\n", false, ErrMalformed},
		{"online not possible", "devices/system/cpu/online", "0-16\n", false, ErrMalformed},
		{"online cpu in no node", "devices/system/cpu/online", "0-15\n", false, nil}, // control: unchanged content is fine
		{"package id empty", c0 + "topology/physical_package_id", "\n", false, ErrMalformed},
		{"core id text", c0 + "topology/core_id", "zero\n", false, ErrMalformed},
		{"siblings without self", c0 + "topology/thread_siblings_list", "8\n", false, ErrMalformed},
		{"siblings truncated", c0 + "topology/thread_siblings_list", "0,\n", false, ErrMalformed},
		{"cache level text", c0 + "cache/index3/level", "L3\n", false, ErrMalformed},
		{"llc without self", c0 + "cache/index3/shared_cpu_list", "2-3\n", false, ErrMalformed},
		{"llc overlaps another group", c0 + "cache/index3/shared_cpu_list", "0-2,8-9\n", false, ErrMalformed},
		{"hugepages count text", n0 + "hugepages/hugepages-2048kB/nr_hugepages", "many\n", false, ErrMalformed},
		{"hugepages count negative", n0 + "hugepages/hugepages-2048kB/free_hugepages", "-1\n", false, ErrMalformed},
		{"missing cpulist and cpumap", n0 + "cpulist", "", true, fs.ErrNotExist},
		{"missing package id", c0 + "topology/physical_package_id", "", true, fs.ErrNotExist},
		{"missing siblings list and mask", c0 + "topology/thread_siblings_list", "", true, fs.ErrNotExist},
		{"NUL inside a list", n0 + "cpulist", "0-3\x00,8-11\n", false, ErrMalformed},
		{"NUL before the newline of a number", c0 + "topology/core_id", "0\x00x\n", false, ErrMalformed},
		{"no node online", "devices/system/node/online", "\n\x00", false, ErrMalformed},
		{"online nodes without directories", "devices/system/node/online", "2-3\n", false, ErrMalformed},
		{"distance row fits no node list", n0 + "distance", "10 21 21 21\n", false, ErrMalformed},
		{"missing meminfo", n0 + "meminfo", "", true, fs.ErrNotExist},
		{"missing core id", c0 + "topology/core_id", "", true, fs.ErrNotExist},
		{"missing llc list", c0 + "cache/index3/shared_cpu_list", "", true, fs.ErrNotExist},
		{"missing hugepages count", n0 + "hugepages/hugepages-2048kB/nr_hugepages", "", true, fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsys := loadFixture(t, "two-socket-smt2")
			if tc.remove {
				delete(fsys, tc.file)
			} else {
				fsys[tc.file] = &fstest.MapFile{Data: []byte(tc.content)}
			}
			_, err := Discover(fsys)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Discover: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Discover error = %v, want one wrapping %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.file) {
				t.Errorf("error %q does not name the file %s", err, tc.file)
			}
		})
	}
}

// TestDiscoverMalformedMessage pins the shape of an error: package, file,
// quoted content, reason.
func TestDiscoverMalformedMessage(t *testing.T) {
	fsys := loadFixture(t, "two-socket-smt2")
	fsys[n0+"distance"] = &fstest.MapFile{Data: []byte("10 x\n")}
	_, err := Discover(fsys)
	const prefix = `topology: devices/system/node/node0/distance: "10 x": `
	if err == nil || !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("error = %v, want it to start with %s", err, prefix)
	}
}

// TestDiscoverOptionalFiles removes what sysfs may legitimately lack.
func TestDiscoverOptionalFiles(t *testing.T) {
	fsys := loadFixture(t, "two-socket-smt2")
	for name := range fsys {
		if strings.Contains(name, "/cache/") || strings.Contains(name, "/hugepages/") {
			delete(fsys, name)
		}
	}
	m, err := Discover(fsys)
	if err != nil {
		t.Fatalf("Discover without cache and hugepages files: %v", err)
	}
	for _, n := range m.Nodes {
		if n.HugePages != nil {
			t.Errorf("node %d HugePages = %v, want nil without the directory", n.ID, n.HugePages)
		}
	}
	// Without cache information a CPU's LLC group is its package (within
	// its node), and Discover says so.
	c, _ := m.CPUByID(9)
	if c.LLC.String() != "0-3,8-11" {
		t.Errorf("cpu 9 LLC = %s, want its package 0-3,8-11", c.LLC)
	}
	if len(m.LLCGroups) != 2 || m.LLCGroups[0].String() != "0-3,8-11" || m.LLCGroups[1].String() != "4-7,12-15" {
		t.Errorf("LLCGroups = %v, want the 2 packages 0-3,8-11 and 4-7,12-15", m.LLCGroups)
	}
	if len(m.Notes) != 1 || !strings.Contains(m.Notes[0], "cpus 0-15: no cache directory") {
		t.Errorf("Notes = %q, want one saying cpus 0-15 have no cache directory", m.Notes)
	}
}

// fuzzTargets are the files FuzzDiscover overwrites (or creates), one per
// input, each in a fixture.
var fuzzTargets = []struct{ fixture, file string }{
	{"two-socket-smt2", "devices/system/node/online"},
	{"two-socket-smt2", "devices/system/cpu/possible"},
	{"two-socket-smt2", "devices/system/cpu/online"},
	{"two-socket-smt2", n0 + "cpulist"},
	{"two-socket-smt2", n0 + "meminfo"},
	{"two-socket-smt2", n0 + "distance"},
	{"two-socket-smt2", n0 + "hugepages/hugepages-2048kB/nr_hugepages"},
	{"two-socket-smt2", c0 + "topology/physical_package_id"},
	{"two-socket-smt2", c0 + "topology/thread_siblings_list"},
	{"two-socket-smt2", c0 + "cache/index3/level"},
	{"two-socket-smt2", c0 + "cache/index3/shared_cpu_list"},
	{"two-socket-smt2", "devices/system/node/possible"},
	{"rhel5-masks-no-node-online", n0 + "cpumap"},
	{"rhel5-masks-no-node-online", c0 + "topology/thread_siblings"},
	{"rhel5-masks-no-node-online", c0 + "cache/index3/shared_cpu_map"},
	{"rhel5-masks-no-node-online", "devices/system/cpu/present"},
	{"cxl-memory-only-node", "devices/system/cpu/cpu7/online"},
	{"cxl-memory-only-node", "devices/system/node/node2/distance"},
	{"kvm-partial-caches", "devices/system/cpu/cpu4/cache/index2/level"},
	{"power9-lpar-no-distance", "devices/system/node/node1/distance"},
	{"s390x-no-numa", "devices/system/memory/block_size_bytes"},
	{"s390x-no-numa", "devices/system/memory/memory3/state"},
	{"hotplug-cpus-unlisted", "devices/system/node/node1/cpulist"},
}

// FuzzDiscover writes arbitrary bytes into one sysfs file: Discover must
// never panic, any error must name a file, and a machine it returns must
// hang together: every online CPU in one node (or left out of the allowed
// CPUs) and in exactly one LLC group containing its siblings, every node
// with a distance to every node.
func FuzzDiscover(f *testing.F) {
	for i, seed := range []string{"0-1", "0-", "10 x", "Node 0 MemTotal: 1 kB\nNode 0 MemFree: 1 kB", "-1", "0,8", "9", "0-2,8-9", "\x00", "4294967296", "0-65535",
		"0-3", "00000f0f", "ffffffff,ffffffff", "3\n\x00", "0", "10 20 30", "10 50", "3", "20 10", "80000000", "online", "0-7"} {
		f.Add(uint8(i), []byte(seed))
	}
	bases := map[string]fstest.MapFS{}
	for _, tg := range fuzzTargets {
		if bases[tg.fixture] == nil {
			bases[tg.fixture] = loadFixture(f, tg.fixture)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, content []byte) {
		tg := fuzzTargets[int(which)%len(fuzzTargets)]
		fsys := fstest.MapFS{}
		for k, v := range bases[tg.fixture] {
			fsys[k] = v
		}
		fsys[tg.file] = &fstest.MapFile{Data: content}
		m, err := Discover(fsys)
		if err != nil {
			if !strings.Contains(err.Error(), "devices/system/") {
				t.Fatalf("error names no file: %v", err)
			}
			return
		}
		checkConsistent(t, m)
	})
}

// checkConsistent checks the invariants every Machine Discover returns
// holds.
func checkConsistent(t *testing.T, m *Machine) {
	t.Helper()
	online := m.OnlineCPUs()
	if len(m.Nodes) == 0 && !online.IsEmpty() {
		t.Fatalf("online CPUs %s without a node", online)
	}
	var inNodes, inLLC hw.CPUSet
	for _, n := range m.Nodes {
		if !inNodes.Intersect(n.CPUs).IsEmpty() || !n.CPUs.IsSubsetOf(online) || n.CPULess != n.CPUs.IsEmpty() {
			t.Fatalf("node %d cpus %s (cpuless %v): overlap another node's or not online (%s)", n.ID, n.CPUs, n.CPULess, online)
		}
		inNodes = inNodes.Union(n.CPUs)
		if len(n.Distances) != len(m.Nodes) {
			t.Fatalf("node %d has %d distances for %d nodes", n.ID, len(n.Distances), len(m.Nodes))
		}
	}
	if !m.AllowedCPUs.IsSubsetOf(inNodes) {
		t.Fatalf("allowed cpus %s are not all in a node (%s)", m.AllowedCPUs, inNodes)
	}
	for _, g := range m.LLCGroups {
		if !inLLC.Intersect(g).IsEmpty() {
			t.Fatalf("LLC groups %v overlap", m.LLCGroups)
		}
		inLLC = inLLC.Union(g)
	}
	if !inLLC.Equal(online) {
		t.Fatalf("LLC groups %v do not cover the online CPUs %s", m.LLCGroups, online)
	}
	for _, c := range m.CPUs {
		if c.Online && (!c.LLC.Contains(c.ID) || !c.Siblings.Contains(c.ID) || !slices.ContainsFunc(m.LLCGroups, c.LLC.Equal)) {
			t.Fatalf("cpu %d: siblings %s, LLC %s not one of the groups %v", c.ID, c.Siblings, c.LLC, m.LLCGroups)
		}
		if c.Online && c.Node >= 0 && !inNodes.Contains(c.ID) {
			t.Fatalf("cpu %d says node %d but no node lists it", c.ID, c.Node)
		}
	}
}
