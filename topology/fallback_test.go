package topology

import (
	"errors"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
)

// TestDiscoverFallbacks changes one aspect of a fixture to a shape some
// real kernel produces. Discover must accept it, find the machine it
// describes, and say in Notes what it inferred (or nothing, when nothing
// was inferred).
func TestDiscoverFallbacks(t *testing.T) {
	set := func(fsys fstest.MapFS, name, content string) {
		fsys[name] = &fstest.MapFile{Data: []byte(content)}
	}
	drop := func(fsys fstest.MapFS, prefix string) {
		for k := range fsys {
			if k == prefix || strings.HasPrefix(k, prefix+"/") {
				delete(fsys, k)
			}
		}
	}
	const (
		nodes = "devices/system/node/"
		cpus  = "devices/system/cpu/"
		n1    = nodes + "node1/"
	)
	for _, tc := range []struct {
		name    string
		fixture string
		edit    func(fstest.MapFS)
		// want is the describe() output; "" means: the same as the
		// unchanged fixture's, notes aside.
		want  string
		check func(t *testing.T, m *Machine)
		note  string // a substring of the one note expected; "" for none
	}{
		{
			name: "every file ends in NULs", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) {
				for _, f := range fsys {
					f.Data = append(f.Data, 0, 0)
				}
			},
		},
		{
			name: "NULs and blanks around the newline", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) {
				set(fsys, n0+"cpulist", " 0-3,8-11 \x00\n\x00")
				set(fsys, n0+"distance", "10 21\x00\n")
			},
		},
		{
			name: "no node/online", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { delete(fsys, nodes+"online") },
			note: "no devices/system/node/online (older kernel): the online nodes are the nodeN directories (0-1)",
		},
		{
			name: "node/online lists a node without directory", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { set(fsys, nodes+"online", "0-2\n") },
			note: "nodes 2 are listed in devices/system/node/online but have no directory: ignored",
		},
		{
			name: "no node directory at all", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { drop(fsys, "devices/system/node") },
			check: func(t *testing.T, m *Machine) {
				if len(m.Nodes) != 1 || m.Nodes[0].ID != 0 || m.Nodes[0].CPUs.String() != "0-15" || m.Nodes[0].Distances[0] != 10 {
					t.Errorf("nodes = %+v, want one node 0 with cpus 0-15 at distance 10", m.Nodes)
				}
				if c, _ := m.CPUByID(13); c.Node != 0 || c.LLC.String() != "4-5,12-13" {
					t.Errorf("cpu 13 = %+v, want node 0 and its L3 group 4-5,12-13", c)
				}
				if len(m.Notes) != 2 || !strings.Contains(m.Notes[1], "no devices/system/memory/block_size_bytes") {
					t.Errorf("notes = %q, want a second one on the unknown memory size", m.Notes)
				}
			},
			note: "no devices/system/node (kernel without NUMA support)",
		},
		{
			name: "no cpu/online", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { delete(fsys, cpus+"online") },
			note: "no devices/system/cpu/online: the online CPUs (0-15) are the cpuN directories",
		},
		{
			name: "no cpu/online, present and cpuN/online say which", fixture: "offline-cpus-holes",
			edit: func(fsys fstest.MapFS) {
				delete(fsys, cpus+"online")
				set(fsys, cpus+"present", "0-7\n")
				set(fsys, cpus+"cpu1/online", "1\n")
				set(fsys, cpus+"cpu3/online", "0\n")
				set(fsys, cpus+"cpu7/online", "0\n\x00")
			},
			note: "the online CPUs (0-2,4-6) are devices/system/cpu/present less those whose cpuN/online says 0",
		},
		{
			name: "no cpu/possible", fixture: "offline-cpus-holes",
			edit: func(fsys fstest.MapFS) {
				delete(fsys, cpus+"possible")
				set(fsys, cpus+"present", "0-9\n")
			},
			note: "no devices/system/cpu/possible: the possible CPUs are the present and online ones (0-9)",
		},
		{
			name: "distance rows per possible node", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) {
				set(fsys, nodes+"possible", "0-3\n")
				set(fsys, n0+"distance", "10 21 31 31\n")
				set(fsys, n1+"distance", "21 10 31 31\n")
			},
			note: "distance rows not indexed by online node: node 0: one per possible node (0-3); node 1: one per possible node (0-3)",
		},
		{
			name: "distance rows per node id with a hole", fixture: "offline-cpus-holes",
			edit: func(fsys fstest.MapFS) {
				set(fsys, nodes+"node0/distance", "10 255 20\n")
				set(fsys, nodes+"node2/distance", "20 255 10\n")
			},
			note: "node 0: one per node id from 0 (0-2); node 2: one per node id from 0 (0-2)",
		},
		{
			name: "one node without distance file", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { delete(fsys, n0+"distance") },
			note: "nodes 0 have no distance file: their distances are taken from the other nodes' rows",
		},
		{
			name: "no distance files", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { delete(fsys, n0+"distance"); delete(fsys, n1+"distance") },
			check: func(t *testing.T, m *Machine) {
				if d := m.Distance(0, 1); d != 20 || m.Distance(1, 1) != 10 {
					t.Errorf("distance 0→1 = %d, 1→1 = %d; want the kernel's defaults 20 and 10", d, m.Distance(1, 1))
				}
			},
			note: "nodes 0-1 have no distance file",
		},
		{
			name: "hex masks instead of lists", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) {
				delete(fsys, n0+"cpulist")
				set(fsys, n0+"cpumap", "00000f0f\n")
				delete(fsys, n1+"cpulist")
				set(fsys, n1+"cpumap", "00000000,0000f0f0\n")
				delete(fsys, c0+"topology/thread_siblings_list")
				set(fsys, c0+"topology/thread_siblings", "101\n")
				delete(fsys, c0+"cache/index3/shared_cpu_list")
				set(fsys, c0+"cache/index3/shared_cpu_map", "0303\n")
			},
		},
		{
			name: "a CPU without topology directory", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { drop(fsys, cpus+"cpu12/topology") },
			check: func(t *testing.T, m *Machine) {
				if c, _ := m.CPUByID(12); c.Package != -1 || c.Core != -1 || c.Siblings.String() != "12" || c.LLC.String() != "4-5,12-13" {
					t.Errorf("cpu 12 = %+v, want package and core -1, itself as sibling, its L3 4-5,12-13", c)
				}
			},
			note: "online cpus 12 have no topology directory",
		},
		{
			name: "a CPU without cache directory joins the group listing it", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { drop(fsys, c0+"cache") },
			note: "for cpus 0 (cpus 0: no cache directory): cpus 0 join the L3 group that lists them",
		},
		{
			name: "a package without index3 takes its package", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) {
				for _, c := range []int{4, 5, 6, 7, 12, 13, 14, 15} {
					drop(fsys, cpus+"cpu"+itoa(c)+"/cache/index3")
				}
			},
			check: func(t *testing.T, m *Machine) {
				if got := groupsString(m); got != "0-1,8-9 2-3,10-11 4-7,12-15" {
					t.Errorf("LLC groups %s, want the two L3s of package 0 and package 1 whole", got)
				}
			},
			note: "for cpus 4-7,12-15 (cpus 4-7,12-15: no L3 cache, highest L2): cpus 4-7,12-15 use their package (within their node) as LLC group",
		},
		{
			name: "unknown packages without caches take the node", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) {
				for c := range 16 {
					drop(fsys, cpus+"cpu"+itoa(c)+"/cache")
					set(fsys, cpus+"cpu"+itoa(c)+"/topology/physical_package_id", "-1\n")
				}
			},
			check: func(t *testing.T, m *Machine) {
				if got := groupsString(m); got != "0-3,8-11 4-7,12-15" {
					t.Errorf("LLC groups %s, want the nodes", got)
				}
			},
		},
		{
			name: "an online CPU in no cpulist on a single node", fixture: "single-node-2cpu",
			edit: func(fsys fstest.MapFS) { set(fsys, n0+"cpulist", "0\n") },
			note: "online cpus 1 are in no node's cpulist: given to the only node, 0",
		},
		{
			name: "the only node lists no CPU (has_cpu empty)", fixture: "single-node-2cpu",
			edit: func(fsys fstest.MapFS) {
				set(fsys, n0+"cpulist", "\n")
				set(fsys, nodes+"has_cpu", "\n")
			},
			note: "online cpus 0-1 are in no node's cpulist: given to the only node, 0",
		},
		{
			name: "an online CPU in no cpulist with two nodes", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) { set(fsys, n1+"cpulist", "4-7,12-14\n") },
			check: func(t *testing.T, m *Machine) {
				if c, _ := m.CPUByID(15); !c.Online || c.Node != -1 || m.AllowedCPUs.String() != "0-14" {
					t.Errorf("cpu 15 = %+v, allowed %s; want it online in node -1 and not allowed", c, m.AllowedCPUs)
				}
			},
			note: "online cpus 15 are in no node's cpulist and name no node: node -1, left out of the allowed CPUs",
		},
		{
			name: "an online CPU in no cpulist with a node link", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) {
				set(fsys, n1+"cpulist", "4-7,12-14\n")
				fsys[cpus+"cpu15/node1"] = &fstest.MapFile{Data: []byte("../../node/node1"), Mode: os.ModeSymlink}
			},
			note: "online cpus 15 are in no node's cpulist: placed by their cpuN/nodeM links",
		},
		{
			name: "extra files of newer kernels", fixture: "two-socket-smt2",
			edit: func(fsys fstest.MapFS) {
				set(fsys, nodes+"has_cpu", "0-1\n")
				set(fsys, nodes+"has_memory", "0-1\n")
				set(fsys, n0+"cpu0", "")
				set(fsys, c0+"topology/die_id", "0\n")
				set(fsys, c0+"topology/cluster_cpus_list", "0,8\n")
				set(fsys, c0+"cache/index3/id", "0\n")
				set(fsys, cpus+"cpufreq/policy0/scaling_cur_freq", "2400000\n")
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := mustDiscover(t, tc.fixture)
			fsys := loadFixture(t, tc.fixture)
			tc.edit(fsys)
			m, err := Discover(fsys)
			if err != nil {
				t.Fatalf("Discover: %v", err)
			}
			checkConsistent(t, m)
			if tc.check != nil {
				tc.check(t, m)
			} else {
				got, want := withoutNotes(describe(m)), withoutNotes(describe(base))
				if got != want {
					t.Errorf("Discover differs from the unchanged fixture:\n%s", lineDiff(got, want))
				}
			}
			switch {
			case tc.note == "" && tc.check == nil && len(m.Notes) > 0:
				t.Errorf("Notes = %q, want none", m.Notes)
			case tc.note != "" && (len(m.Notes) == 0 || !strings.Contains(m.Notes[0], tc.note)):
				t.Errorf("Notes = %q, want the first to contain %q", m.Notes, tc.note)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func groupsString(m *Machine) string {
	var s []string
	for _, g := range m.LLCGroups {
		s = append(s, g.String())
	}
	return strings.Join(s, " ")
}

func withoutNotes(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, "note ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// TestFillFromMeminfo: on a kernel without NUMA sysfs, Host takes the one
// node's memory from /proc/meminfo.
func TestFillFromMeminfo(t *testing.T) {
	proc := func(s string) fstest.MapFS { return fstest.MapFS{"meminfo": {Data: []byte(s)}} }
	var n Node
	err := fillFromMeminfo(proc("MemTotal:        4008012 kB\nMemFree:          812340 kB\nMemAvailable:    2913120 kB\nHugePages_Total:       0\n\x00"), &n)
	if err != nil || n.MemTotal != 4008012*1024 || n.MemFree != 812340*1024 {
		t.Errorf("fillFromMeminfo = %v, total %d free %d; want 4008012 kB and 812340 kB", err, n.MemTotal, n.MemFree)
	}
	for name, content := range map[string]string{
		"no MemFree":  "MemTotal: 1 kB\n",
		"bad number":  "MemTotal: 1x kB\nMemFree: 1 kB\n",
		"wrong unit":  "MemTotal: 1 MB\nMemFree: 1 kB\n",
		"extra field": "MemTotal: 1 2 kB\nMemFree: 1 kB\n",
	} {
		if err := fillFromMeminfo(proc(content), &Node{}); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "meminfo") {
			t.Errorf("%s: err = %v, want ErrMalformed naming meminfo", name, err)
		}
	}
	if err := fillFromMeminfo(fstest.MapFS{}, &Node{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing meminfo: err = %v, want fs.ErrNotExist", err)
	}
}
