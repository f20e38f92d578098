package cgroups

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// Fake cgroupfs trees: regular files standing in for the kernel's. They test
// what this package writes and reads; what the kernel does with it is tested
// for real in real_test.go.

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// fakeV1 builds a v1 tree with the cpuset, memory and pids hierarchies; the
// manager's created hook adds the empty cgroup.procs the kernel would.
func fakeV1(t *testing.T) *Manager {
	root := t.TempDir()
	writeFiles(t, filepath.Join(root, "cpuset"), map[string]string{"cgroup.procs": "", "cpuset.cpus": "0-3\n", "cpuset.mems": "0-1\n"})
	writeFiles(t, filepath.Join(root, "memory"), map[string]string{"cgroup.procs": "", "memory.limit_in_bytes": "9223372036854771712\n"})
	writeFiles(t, filepath.Join(root, "pids"), map[string]string{"cgroup.procs": ""})
	m, err := New(Options{Root: root, Mode: ModeHybrid})
	if err != nil {
		t.Fatal(err)
	}
	m.created = func(dir string) {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
			writeFiles(t, dir, map[string]string{"cgroup.procs": ""})
		}
	}
	return m
}

// fakeV2 builds a unified tree offering cpuset, cpu, io, memory and pids.
func fakeV2(t *testing.T) *Manager {
	root := t.TempDir()
	kernelFiles := func(dir string) {
		writeFiles(t, dir, map[string]string{
			"cgroup.procs": "", "cgroup.controllers": "cpuset cpu io memory pids\n",
			"cgroup.subtree_control": "", "cgroup.type": "domain\n",
		})
	}
	kernelFiles(root)
	m, err := New(Options{Root: root, Mode: ModeV2})
	if err != nil {
		t.Fatal(err)
	}
	m.created = kernelFiles
	return m
}

func TestFakeV1Create(t *testing.T) {
	m := fakeV1(t)
	r := Resources{CPUs: hw.MustParse[hw.CPU]("1"), Mems: hw.MustParse[hw.Node]("0"), MemoryLimit: 64 * hw.MiB}
	g, err := m.Create("vc/p/s", r)
	if err != nil {
		t.Fatal(err)
	}
	root := m.Root()
	// Parents inherit the root's cpuset (v1 needs cpus and mems on every level).
	for _, p := range []string{"vc", "vc/p"} {
		if got := readFile(t, filepath.Join(root, "cpuset", p, "cpuset.cpus")); got != "0-3" {
			t.Errorf("%s cpuset.cpus = %q, want inherited 0-3", p, got)
		}
		if got := readFile(t, filepath.Join(root, "cpuset", p, "cpuset.mems")); got != "0-1" {
			t.Errorf("%s cpuset.mems = %q, want inherited 0-1", p, got)
		}
	}
	for file, want := range map[string]string{
		"cpuset/vc/p/s/cpuset.cpus":           "1",
		"cpuset/vc/p/s/cpuset.mems":           "0",
		"memory/vc/p/s/memory.limit_in_bytes": "67108864",
	} {
		if got := readFile(t, filepath.Join(root, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "pids/vc/p/s")); err != nil || !fi.IsDir() {
		t.Errorf("pids hierarchy dir missing: %v", err)
	}
	// No cpu, no name=systemd: only our controllers.
	if _, err := os.Stat(filepath.Join(root, "cpu")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a cpu hierarchy was created: %v", err)
	}
	wantFiles := []string{
		filepath.Join(root, "cpuset/vc/p/s/cgroup.procs"),
		filepath.Join(root, "memory/vc/p/s/cgroup.procs"),
		filepath.Join(root, "pids/vc/p/s/cgroup.procs"),
	}
	if got := g.ProcsFiles(); !slices.Equal(got, wantFiles) {
		t.Errorf("ProcsFiles = %v, want %v", got, wantFiles)
	}
	if _, ok := g.UnifiedDir(); ok {
		t.Error("UnifiedDir on v1 reported ok")
	}

	// Update: new cpus; a zero limit removes it (-1 on v1).
	if err := g.Update(Resources{CPUs: hw.MustParse[hw.CPU]("2-3")}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "cpuset/vc/p/s/cpuset.cpus")); got != "2-3" {
		t.Errorf("after Update cpuset.cpus = %q", got)
	}
	if got := readFile(t, filepath.Join(root, "memory/vc/p/s/memory.limit_in_bytes")); got != "-1" {
		t.Errorf("after Update memory.limit_in_bytes = %q, want -1", got)
	}
}

func TestFakeV1ProcsAndStats(t *testing.T) {
	m := fakeV1(t)
	if _, err := m.Create("vc/p/s", Resources{}); err != nil {
		t.Fatal(err)
	}
	root := m.Root()
	writeFiles(t, filepath.Join(root, "cpuset/vc/p/s"), map[string]string{
		"cgroup.procs": "34\n12\n", "cpuset.effective_cpus": "1\n", "cpuset.effective_mems": "0\n",
	})
	// 56 joined only the memory hierarchy, one level up; 34 is in both.
	writeFiles(t, filepath.Join(root, "memory/vc/p"), map[string]string{"cgroup.procs": "34\n56\n"})
	writeFiles(t, filepath.Join(root, "memory/vc/p/s"), map[string]string{
		"memory.usage_in_bytes": "4096\n", "memory.limit_in_bytes": "9223372036854771712\n",
	})
	g, err := m.Load("vc/p")
	if err != nil {
		t.Fatal(err)
	}
	pids, err := g.Procs()
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{12, 34, 56}; !slices.Equal(pids, want) {
		t.Errorf("Procs = %v, want %v", pids, want)
	}
	s, err := m.mustLoad(t, "vc/p/s").Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{MemoryUsage: 4096, MemoryLimit: 0, CPUs: hw.MustParse[hw.CPU]("1"), Mems: hw.MustParse[hw.Node]("0"), Pids: 2}
	if s.MemoryUsage != want.MemoryUsage || s.MemoryLimit != want.MemoryLimit || !s.CPUs.Equal(want.CPUs) || !s.Mems.Equal(want.Mems) || s.Pids != want.Pids {
		t.Errorf("Stats = %+v, want %+v", s, want)
	}
}

func (m *Manager) mustLoad(t *testing.T, path string) *Group {
	t.Helper()
	g, err := m.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestFakeV2Create(t *testing.T) {
	m := fakeV2(t)
	r := Resources{CPUs: hw.MustParse[hw.CPU]("1"), Mems: hw.MustParse[hw.Node]("0"), MemoryLimit: 64 * hw.MiB}
	g, err := m.Create("vc/p/s", r)
	if err != nil {
		t.Fatal(err)
	}
	root := m.Root()
	// Every ancestor, the root included, delegates cpuset, memory and pids;
	// the group itself does not (it is to hold processes).
	for _, dir := range []string{root, filepath.Join(root, "vc"), filepath.Join(root, "vc/p")} {
		if got := readFile(t, filepath.Join(dir, "cgroup.subtree_control")); got != "+cpuset +memory +pids" {
			t.Errorf("%s subtree_control = %q, want +cpuset +memory +pids", dir, got)
		}
	}
	if got := readFile(t, filepath.Join(root, "vc/p/s/cgroup.subtree_control")); got != "" {
		t.Errorf("leaf subtree_control = %q, want empty", got)
	}
	for file, want := range map[string]string{
		"vc/p/s/cpuset.cpus": "1", "vc/p/s/cpuset.mems": "0", "vc/p/s/memory.max": "67108864",
	} {
		if got := readFile(t, filepath.Join(root, file)); got != want {
			t.Errorf("%s = %q, want %q", file, got, want)
		}
	}
	// Parents get no settings of their own: an empty v2 cpuset inherits.
	if _, err := os.Stat(filepath.Join(root, "vc/p/cpuset.cpus")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("parent got a cpuset.cpus written: %v", err)
	}
	if got, want := g.ProcsFiles(), []string{filepath.Join(root, "vc/p/s/cgroup.procs")}; !slices.Equal(got, want) {
		t.Errorf("ProcsFiles = %v, want %v", got, want)
	}
	if dir, ok := g.UnifiedDir(); !ok || dir != filepath.Join(root, "vc/p/s") {
		t.Errorf("UnifiedDir = %q, %v", dir, ok)
	}

	if err := g.Update(Resources{Mems: hw.MustParse[hw.Node]("1")}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(root, "vc/p/s/memory.max")); got != "max" {
		t.Errorf("after Update memory.max = %q, want max", got)
	}
	if got := readFile(t, filepath.Join(root, "vc/p/s/cpuset.mems")); got != "1" {
		t.Errorf("after Update cpuset.mems = %q, want 1", got)
	}

	writeFiles(t, filepath.Join(root, "vc/p/s"), map[string]string{
		"cgroup.procs": "7\n", "cpuset.cpus.effective": "1\n", "cpuset.mems.effective": "1\n",
		"memory.current": "8192\n", "memory.max": "max\n",
	})
	writeFiles(t, filepath.Join(root, "vc/p"), map[string]string{"cgroup.procs": "3\n"})
	s, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.MemoryUsage != 8192 || s.MemoryLimit != 0 || s.CPUs.String() != "1" || s.Mems.String() != "1" || s.Pids != 1 {
		t.Errorf("Stats = %+v", s)
	}
	pids, err := m.mustLoad(t, "vc").Procs()
	if err != nil || !slices.Equal(pids, []int{3, 7}) {
		t.Errorf("Procs(vc) = %v, %v; want [3 7]", pids, err)
	}
}

func TestFakeV2MissingController(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, root, map[string]string{"cgroup.controllers": "cpu io memory pids\n"})
	_, err := New(Options{Root: root, Mode: ModeV2})
	if !errors.Is(err, linux.ErrNotSupported) || !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "cpuset") {
		t.Fatalf("New without cpuset = %v, want an unsupported error naming cpuset", err)
	}
}

func TestFakeV1MissingHierarchy(t *testing.T) {
	root := t.TempDir()
	writeFiles(t, filepath.Join(root, "cpuset"), map[string]string{"cgroup.procs": ""})
	writeFiles(t, filepath.Join(root, "memory"), map[string]string{"cgroup.procs": ""})
	_, err := New(Options{Root: root, Mode: ModeV1})
	if !errors.Is(err, linux.ErrNotSupported) || !strings.Contains(err.Error(), "pids") {
		t.Fatalf("New without pids = %v, want an unsupported error naming pids", err)
	}
	if _, err := New(Options{Root: root}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("New with a custom root and no mode = %v, want ErrUnavailable", err)
	}
}

func TestFakeBadPaths(t *testing.T) {
	m := fakeV1(t)
	for _, p := range []string{"", "/abs", ".", "..", "../x", "a/../../x"} {
		if _, err := m.Create(p, Resources{}); !errors.Is(err, ErrBadPath) {
			t.Errorf("Create(%q) = %v, want ErrBadPath", p, err)
		}
		if _, err := m.ProcsFiles(p); !errors.Is(err, ErrBadPath) {
			t.Errorf("ProcsFiles(%q) = %v, want ErrBadPath", p, err)
		}
	}
}

func TestFakeLoadMissing(t *testing.T) {
	for name, m := range map[string]*Manager{"v1": fakeV1(t), "v2": fakeV2(t)} {
		_, err := m.Load("nope/x")
		if !errors.Is(err, ErrNotExist) || !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: Load(missing) = %v, want ErrNotExist", name, err)
		}
		if m.Exists("nope/x") {
			t.Errorf("%s: Exists(missing) = true", name)
		}
	}
}

// On a fake tree the control files are regular files, so rmdir fails the way
// it would on a cgroupfs directory that cannot be removed: Delete must report
// every leftover directory by path.
func TestFakeDeleteReportsLeftovers(t *testing.T) {
	m := fakeV2(t)
	g, err := m.Create("vc/p", Resources{})
	if err != nil {
		t.Fatal(err)
	}
	err = g.Delete()
	if !errors.Is(err, ErrLeftover) || !strings.Contains(err.Error(), filepath.Join(m.Root(), "vc/p")) {
		t.Fatalf("Delete = %v, want ErrLeftover naming %s", err, filepath.Join(m.Root(), "vc/p"))
	}
}

func TestFakePidsMax(t *testing.T) {
	for _, c := range []struct {
		name string
		m    func(*testing.T) *Manager
		file string // pids.max of group vc/s, relative to the root
	}{
		{"v1", fakeV1, "pids/vc/s/pids.max"},
		{"v2", fakeV2, "vc/s/pids.max"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := c.m(t)
			g, err := m.Create("vc/s", Resources{PidsMax: 100})
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(m.Root(), c.file)
			if got := readFile(t, file); got != "100" {
				t.Errorf("after Create pids.max = %q, want 100", got)
			}
			// Zero leaves it alone, also on Update.
			if err := g.Update(Resources{MemoryLimit: hw.MiB}); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, file); got != "100" {
				t.Errorf("after Update(0) pids.max = %q, want 100 kept", got)
			}
			if err := g.Update(Resources{MemoryLimit: hw.MiB, PidsMax: PidsUnlimited}); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, file); got != "max" {
				t.Errorf("after Update(unlimited) pids.max = %q, want max", got)
			}
			if err := g.Update(Resources{MemoryLimit: hw.MiB, PidsMax: 7}); err != nil {
				t.Fatal(err)
			}
			if got := readFile(t, file); got != "7" {
				t.Errorf("after Update(7) pids.max = %q, want 7", got)
			}
		})
	}
}
