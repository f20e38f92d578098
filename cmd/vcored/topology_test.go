package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/hw"
)

const fixtures = "../../topology/testdata/"

// runTopologyJSON runs `vcored topology --json args...` and decodes the result.
func runTopologyJSON(t *testing.T, args ...string) topologyJSON {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(append([]string{"topology", "--json"}, args...), &out, &errb); code != exitOK {
		t.Fatalf("vcored topology --json %v: exit %d, stderr:\n%s", args, code, errb.String())
	}
	var doc topologyJSON
	dec := json.NewDecoder(&out)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("decoding the JSON output: %v\n%s", err, out.String())
	}
	return doc
}

func TestTopologyJSONEpyc(t *testing.T) {
	doc := runTopologyJSON(t, "--sysfs", fixtures+"epyc-8node-nps4")
	if len(doc.Nodes) != 8 {
		t.Fatalf("%d nodes, want 8", len(doc.Nodes))
	}
	for i, n := range doc.Nodes {
		if int(n.ID) != i || n.CPULess || len(n.Distances) != 8 || n.Distances[i] != 10 {
			t.Errorf("node %d: %+v", i, n)
		}
	}
	n5 := doc.Nodes[5]
	if n5.CPUs.String() != "20-23,52-55" || !slices.Equal(n5.Distances, []int{32, 32, 32, 32, 12, 10, 12, 12}) ||
		n5.MemoryTotalBytes != 16258048*1024 || n5.MemoryFreeBytes != 15708160*1024 {
		t.Errorf("node 5 = %+v", n5)
	}
	if want := []hugePageJSON{{2 << 20, 0, 0}, {1 << 30, 0, 0}}; !slices.Equal(n5.HugePages, want) {
		t.Errorf("node 5 hugepages = %v, want %v", n5.HugePages, want)
	}
	if len(doc.LLCGroups) != 16 || doc.LLCGroups[0].String() != "0-1,32-33" || doc.LLCGroups[15].String() != "30-31,62-63" {
		t.Errorf("llc_groups = %v", doc.LLCGroups)
	}
	if doc.AllowedCPUs.String() != "0-63" || doc.AllowedNodes.String() != "0-7" || doc.Model != "" {
		t.Errorf("allowed_cpus %q allowed_nodes %q model %q; want 0-63, 0-7 and no model for a fixture",
			doc.AllowedCPUs, doc.AllowedNodes, doc.Model)
	}
	if len(doc.CPUs) != 64 {
		t.Fatalf("%d cpus, want 64", len(doc.CPUs))
	}
	c := doc.CPUs[37]
	if c.ID != 37 || !c.Online || *c.Node != 1 || *c.Package != 0 || *c.Core != 5 ||
		c.Siblings.String() != "5,37" || c.LLC.String() != "4-5,36-37" {
		t.Errorf("cpu 37 = %+v", c)
	}
}

func TestTopologyJSONOfflineAndCPULess(t *testing.T) {
	holes := runTopologyJSON(t, "--sysfs", fixtures+"offline-cpus-holes")
	if len(holes.CPUs) != 10 {
		t.Fatalf("%d cpus, want the 10 possible ones", len(holes.CPUs))
	}
	if c := holes.CPUs[3]; c.Online || c.Node != nil || c.Siblings != nil {
		t.Errorf("offline cpu 3 = %+v; want only id and online=false", c)
	}
	if ids := []hw.Node{holes.Nodes[0].ID, holes.Nodes[1].ID}; !slices.Equal(ids, []hw.Node{0, 2}) {
		t.Errorf("node ids %v, want [0 2]", ids)
	}

	cpuless := runTopologyJSON(t, "--sysfs", fixtures+"cpuless-memory-node")
	n2 := cpuless.Nodes[2]
	if !n2.CPULess || n2.CPUs.String() != "" || !slices.Equal(n2.Distances, []int{24, 24, 10}) {
		t.Errorf("node 2 = %+v; want a CPU-less node at distance 24", n2)
	}
}

func TestTopologyText(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"topology", "--sysfs", fixtures + "cpuless-memory-node"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
	}
	for _, want := range []string{
		"available: 3 nodes (0-2)\n",
		"node 1 cpus: 4-7\nnode 1 size: 16128 MB\nnode 1 free: 15625 MB\n",
		"node 2 cpus: (none: memory-only node)\n",
		"node distances:\nnode   0   1   2\n  0:  10  21  24\n  1:  21  10  24\n  2:  24  24  10\n",
		"llc groups: 0-3 4-7\n",
		"allowed cpus: 0-7\nallowed nodes: 0-2\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestTopologyErrors(t *testing.T) {
	// A fixture with a broken distance file, in a temporary copy.
	broken := t.TempDir()
	if err := os.CopyFS(broken, os.DirFS(fixtures+"two-socket-smt2")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(broken, "devices/system/node/node1/distance"), []byte("21 x\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"missing tree", []string{"--sysfs", filepath.Join(t.TempDir(), "nope")}, exitFailure, "devices/system/node/online"},
		{"malformed file", []string{"--sysfs", broken}, exitFailure, `devices/system/node/node1/distance: "21 x"`},
		{"bad flag", []string{"--frobnicate"}, exitUsage, "frobnicate"},
		{"extra argument", []string{"extra"}, exitUsage, `unexpected argument "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(append([]string{"topology"}, tc.args...), &out, &errb)
			if code != tc.wantCode || !strings.Contains(errb.String(), tc.wantErr) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errb.String(), tc.wantCode, tc.wantErr)
			}
		})
	}
}

// numactlHardware is what `numactl -H` reports.
type numactlHardware struct {
	nodes     []int
	cpus      map[int]hw.CPUSet
	sizeMB    map[int]uint64
	distances map[int][]int
}

// parseNumactl reads `numactl -H` output:
//
//	available: 1 nodes (0)
//	node 0 cpus: 0 1
//	node 0 size: 5978 MB
//	node 0 free: 3864 MB
//	node distances:
//	node   0
//	  0:  10
func parseNumactl(t *testing.T, text string) numactlHardware {
	t.Helper()
	h := numactlHardware{cpus: map[int]hw.CPUSet{}, sizeMB: map[int]uint64{}, distances: map[int][]int{}}
	atoi := func(s string) int {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("numactl -H: %q is not a number in:\n%s", s, text)
		}
		return n
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	inMatrix := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0:
		case f[0] == "node" && len(f) >= 2 && f[1] == "distances:":
			inMatrix = true
		case inMatrix && f[0] == "node": // column header
			for _, id := range f[1:] {
				h.nodes = append(h.nodes, atoi(id))
			}
		case inMatrix && strings.HasSuffix(f[0], ":"):
			row := atoi(strings.TrimSuffix(f[0], ":"))
			for _, d := range f[1:] {
				h.distances[row] = append(h.distances[row], atoi(d))
			}
		case f[0] == "node" && len(f) >= 3 && f[2] == "cpus:":
			var ids []hw.CPU
			for _, c := range f[3:] {
				ids = append(ids, hw.CPU(atoi(c)))
			}
			h.cpus[atoi(f[1])] = hw.NewSet(ids...)
		case f[0] == "node" && len(f) == 5 && f[2] == "size:" && f[4] == "MB":
			h.sizeMB[atoi(f[1])] = uint64(atoi(f[3]))
		}
	}
	if len(h.nodes) == 0 {
		t.Fatalf("no distance matrix in numactl -H output:\n%s", text)
	}
	return h
}

// TestTopologyMatchesNumactl compares the host's nodes, CPUs, memory sizes
// and distances with what numactl (libnuma) reports.
func TestTopologyMatchesNumactl(t *testing.T) {
	numactl, err := exec.LookPath("numactl")
	if err != nil {
		t.Skip("numactl is not installed (apt-get install numactl); CI installs it in .ci/run")
	}
	if _, err := fs.Stat(os.DirFS("/sys"), "devices/system/node/online"); err != nil {
		t.Skipf("no NUMA sysfs on this host: %v", err)
	}

	// Memory can be hot-plugged (this VM grows): numactl's size must lie
	// between what we read just before and just after it.
	before := runTopologyJSON(t)
	raw, err := exec.Command(numactl, "-H").Output()
	if err != nil {
		t.Fatalf("numactl -H: %v", err)
	}
	after := runTopologyJSON(t)
	h := parseNumactl(t, string(raw))
	t.Logf("numactl -H: nodes %v, cpus %v, sizes %v MB, distances %v", h.nodes, h.cpus, h.sizeMB, h.distances)

	var ids []int
	for _, n := range before.Nodes {
		ids = append(ids, int(n.ID))
	}
	if !slices.Equal(ids, h.nodes) {
		t.Fatalf("nodes %v, numactl says %v", ids, h.nodes)
	}
	for i, n := range before.Nodes {
		id := int(n.ID)
		if !n.CPUs.Equal(h.cpus[id]) {
			t.Errorf("node %d cpus %q, numactl says %q", id, n.CPUs, h.cpus[id])
		}
		if !slices.Equal(n.Distances, h.distances[id]) {
			t.Errorf("node %d distances %v, numactl says %v", id, n.Distances, h.distances[id])
		}
		lo, hi := n.MemoryTotalBytes>>20, after.Nodes[i].MemoryTotalBytes>>20
		if lo > hi {
			lo, hi = hi, lo
		}
		if got := h.sizeMB[id]; got < lo || got > hi {
			t.Errorf("node %d size: numactl says %d MB, we read %d MB before and %d MB after", id, got,
				n.MemoryTotalBytes>>20, after.Nodes[i].MemoryTotalBytes>>20)
		}
	}
	if before.Model == "" {
		t.Log("the host reports no CPU model name")
	}
}

// TestTopologyEveryFixture runs `vcored topology --sysfs` on every fixture
// tree (captured shapes of many kernels and architectures included): it
// must succeed, and the text and the JSON must list the same notes.
func TestTopologyEveryFixture(t *testing.T) {
	entries, err := os.ReadDir(fixtures)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		t.Run(e.Name(), func(t *testing.T) {
			dir := fixtures + e.Name()
			doc := runTopologyJSON(t, "--sysfs", dir)
			if doc.Notes == nil {
				t.Error(`"notes" is null, want an array`)
			}
			var out, errb bytes.Buffer
			if code := run([]string{"topology", "--sysfs", dir}, &out, &errb); code != exitOK {
				t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
			}
			text := out.String()
			if strings.Contains(text, "notes (inferred") != (len(doc.Notes) > 0) {
				t.Errorf("JSON notes %q, but the text's notes section presence disagrees:\n%s", doc.Notes, text)
			}
			for _, n := range doc.Notes {
				if !strings.Contains(text, "\n  - "+n+"\n") {
					t.Errorf("text lacks the note %q:\n%s", n, text)
				}
			}
		})
	}
}

// TestTopologyLLCFallback: a machine whose CPUs describe no L3 shows the
// groups taken from the packages and says so.
func TestTopologyLLCFallback(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"topology", "--sysfs", fixtures + "kvm-partial-caches"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
	}
	for _, want := range []string{
		"llc groups: 0-3 4-7\n",
		"notes (inferred; sysfs did not say):\n  - no last-level cache information for cpus 3-7 (",
		"cpus 4-7 use their package (within their node) as LLC group\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	doc := runTopologyJSON(t, "--sysfs", fixtures+"kvm-partial-caches")
	if len(doc.Notes) != 1 || !strings.Contains(doc.Notes[0], "use their package") {
		t.Errorf("notes = %q, want the one LLC note", doc.Notes)
	}
	if c := doc.CPUs[6]; c.LLC.String() != "4-7" {
		t.Errorf("cpu 6 llc = %s, want its package 4-7", c.LLC)
	}
	// A tree that says everything has no notes.
	if doc := runTopologyJSON(t, "--sysfs", fixtures+"two-socket-smt2"); len(doc.Notes) != 0 {
		t.Errorf("two-socket-smt2 notes = %q, want none", doc.Notes)
	}
}
