package cgroups

import (
	"errors"
	"fmt"
	"github.com/vcored/vcored/internal/testutil"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// Real tests: root, the host's cgroups, real processes. Every group lives
// under vcored-test-<pid>; TestMain fails the run if any is left over.

const helperEnv = "VCORED_CGROUPS_TEST_HELPER" // set: this process is the exec shim

func TestMain(m *testing.M) {
	if files := os.Getenv(helperEnv); files != "" {
		// The shim: join the cgroups, then become os.Args[1:].
		err := JoinAndExec(strings.Split(files, ":"), os.Args[1:])
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(127)
	}
	code := m.Run()
	if left := leftoverGroups(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: test cgroups left behind: %s\n", strings.Join(left, ", "))
		code = 1
	}
	os.Exit(code)
}

// leftoverGroups lists this test process's vcored-test-<pid> directories in
// every hierarchy of the host (v1 controllers, a v2 root, the hybrid unified
// mount). Other packages' test binaries run at the same time with their own
// pids.
func leftoverGroups() []string {
	var left []string
	name := fmt.Sprintf("vcored-test-%d", os.Getpid())
	for _, pattern := range []string{DefaultRoot + "/" + name, DefaultRoot + "/*/" + name} {
		m, _ := filepath.Glob(pattern)
		left = append(left, m...)
	}
	return left
}

// realManager returns the host's manager and a fresh group path prefix, or
// skips saying why the host cannot run the test.
func realManager(t *testing.T) (*Manager, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	m, err := New(Options{})
	if errors.Is(err, linux.ErrNotSupported) || errors.Is(err, ErrUnavailable) {
		t.Skipf("host cgroups unusable: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	top := fmt.Sprintf("vcored-test-%d", os.Getpid())
	t.Cleanup(func() {
		if !m.Exists(top) {
			return
		}
		g, err := m.Load(top)
		if err == nil {
			// Normally empty already; after a failed test, kill what is
			// left and wait for the kernel to let the processes go.
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if pids, perr := g.Procs(); perr != nil || len(pids) == 0 {
					break
				}
				_ = g.Kill(syscall.SIGKILL)
			}
			err = g.Delete()
		}
		if err != nil {
			t.Errorf("cleanup %s: %v", top, err)
		}
	})
	return m, top
}

// targetCPUAndNode picks the last CPU and first node the root cpuset allows
// (CPU 1 and node 0 on the dev machine).
func targetCPUAndNode(t *testing.T, m *Manager) (hw.CPUSet, hw.NodeSet) {
	t.Helper()
	var cpusFile, memsFile string
	if m.unified() {
		cpusFile, memsFile = filepath.Join(m.root, "cpuset.cpus.effective"), filepath.Join(m.root, "cpuset.mems.effective")
	} else {
		cpusFile, memsFile = filepath.Join(m.root, "cpuset/cpuset.effective_cpus"), filepath.Join(m.root, "cpuset/cpuset.effective_mems")
	}
	cpus, err := readSet[hw.CPU](cpusFile)
	if err != nil {
		t.Fatal(err)
	}
	mems, err := readSet[hw.Node](memsFile)
	if err != nil {
		t.Fatal(err)
	}
	c := cpus.Slice()
	n, _ := mems.Min()
	return hw.NewSet(c[len(c)-1]), hw.NewSet(n)
}

// startJoined starts argv through this test binary acting as the exec shim,
// so the command is in the group before it runs; it waits until the exec
// has happened (comm changed).
func startJoined(t *testing.T, g *Group, argv ...string) *exec.Cmd {
	t.Helper()
	return startJoinedWith(t, g, nil, argv...)
}

// startJoinedWith is startJoined handing extra files to the shim (fd 3 on).
func startJoinedWith(t *testing.T, g *Group, extra []*os.File, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], argv...)
	cmd.ExtraFiles = extra
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(g.ProcsFiles(), ":"))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	commFile := fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid)
	want := filepath.Base(argv[0])
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(commFile)
		if err != nil {
			t.Fatalf("helper died before exec: %v", err)
		}
		if strings.TrimSpace(string(b)) == want {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("helper did not exec %s within 10s (comm %q)", want, b)
		}
	}
}

func procStatus(t *testing.T, pid int, key string) string {
	t.Helper()
	v, err := testutil.ProcStatus(pid, key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// procCgroups returns /proc/<pid>/cgroup as controller list → path.
func procCgroups(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 {
			out[f[1]] = f[2]
		}
	}
	return out
}

func TestRealCreateJoinDelete(t *testing.T) {
	m, top := realManager(t)
	cpus, mems := targetCPUAndNode(t, m)
	path := top + "/p/s"
	g, err := m.Create(path, Resources{CPUs: cpus, Mems: mems, MemoryLimit: 64 * hw.MiB})
	if err != nil {
		t.Fatal(err)
	}
	cmd := startJoined(t, g, "sleep", "100")
	pid := cmd.Process.Pid

	// The kernel's view of the process.
	if got := procStatus(t, pid, "Cpus_allowed_list"); got != cpus.String() {
		t.Errorf("Cpus_allowed_list = %q, want %q", got, cpus)
	}
	if got := procStatus(t, pid, "Mems_allowed_list"); got != mems.String() {
		t.Errorf("Mems_allowed_list = %q, want %q", got, mems)
	}
	cg := procCgroups(t, pid)
	if m.unified() {
		if cg[""] != "/"+path {
			t.Errorf("/proc/%d/cgroup unified = %q, want /%s", pid, cg[""], path)
		}
	} else {
		for _, c := range v1Controllers {
			if cg[c] != "/"+path {
				t.Errorf("/proc/%d/cgroup %s = %q, want /%s", pid, c, cg[c], path)
			}
		}
	}
	// The cgroup's own files.
	limitFile := filepath.Join(m.root, "memory", path, "memory.limit_in_bytes")
	if m.unified() {
		limitFile = filepath.Join(m.root, path, "memory.max")
	}
	if b, err := os.ReadFile(limitFile); err != nil || strings.TrimSpace(string(b)) != "67108864" {
		t.Errorf("%s = %q, %v; want 67108864", limitFile, b, err)
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryLimit != 64*hw.MiB || !st.CPUs.Equal(cpus) || !st.Mems.Equal(mems) || st.Pids != 1 || st.MemoryUsage == 0 {
		t.Errorf("Stats = %+v; want limit 64MiB, cpus %s, mems %s, 1 pid, some usage", st, cpus, mems)
	}
	topGroup, err := m.Load(top)
	if err != nil {
		t.Fatal(err)
	}
	if pids, err := topGroup.Procs(); err != nil || !slices.Equal(pids, []int{pid}) {
		t.Errorf("Procs(%s) = %v, %v; want [%d]", top, pids, err, pid)
	}

	// A populated group cannot be deleted, and the error says where.
	if err := topGroup.Delete(); !errors.Is(err, ErrLeftover) || !strings.Contains(err.Error(), path) {
		t.Errorf("Delete of a populated group = %v, want ErrLeftover naming %s", err, path)
	}
	if !m.Exists(path) {
		t.Fatal("the populated group vanished")
	}

	if err := topGroup.Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Error("sleep exited cleanly after SIGKILL")
	}
	if err := topGroup.Delete(); err != nil {
		t.Fatal(err)
	}
	for _, d := range m.dirs(top) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Delete: %v", d, err)
		}
	}
	if err := topGroup.Delete(); err != nil {
		t.Errorf("second Delete = %v, want nil (already gone)", err)
	}
}

func TestRealAddProcAndUpdate(t *testing.T) {
	m, top := realManager(t)
	cpus, mems := targetCPUAndNode(t, m)
	g, err := m.Create(top+"/a", Resources{CPUs: cpus, Mems: mems})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	if err := g.AddProc(pid); err != nil {
		t.Fatal(err)
	}
	if got, err := linux.ProcessAffinity(pid); err != nil || !got.Equal(cpus) {
		t.Errorf("affinity after AddProc = %s, %v; want %s", got, err, cpus)
	}
	// Widen the group to every CPU of the root: the running process follows.
	all, _ := readSet[hw.CPU](m.dirs("")[0] + map[bool]string{true: "/cpuset.cpus.effective", false: "/cpuset.effective_cpus"}[m.unified()])
	if err := g.Update(Resources{CPUs: all, MemoryLimit: 32 * hw.MiB}); err != nil {
		t.Fatal(err)
	}
	if got, err := linux.ProcessAffinity(pid); err != nil || !got.Equal(all) {
		t.Errorf("affinity after Update = %s, %v; want %s", got, err, all)
	}
	if st, err := g.Stats(); err != nil || st.MemoryLimit != 32*hw.MiB {
		t.Errorf("Stats after Update = %+v, %v; want limit 32MiB", st, err)
	}
	if err := g.Update(Resources{}); err != nil {
		t.Fatal(err)
	}
	if st, err := g.Stats(); err != nil || st.MemoryLimit != 0 {
		t.Errorf("Stats after clearing the limit = %+v, %v; want limit 0 (none)", st, err)
	}
	if err := g.AddProc(0); !errors.Is(err, linux.EINVAL) {
		t.Errorf("AddProc(0) = %v, want EINVAL", err)
	}
}

func TestRealCreateRollsBack(t *testing.T) {
	m, top := realManager(t)
	// CPU 4000 is not in any parent's cpuset: the kernel refuses the write.
	_, err := m.Create(top+"/x/y", Resources{CPUs: hw.NewSet[hw.CPU](4000)})
	if err == nil {
		t.Fatal("Create with cpus 4000 succeeded")
	}
	if !strings.Contains(err.Error(), top+"/x/y") {
		t.Errorf("error %q does not name the group", err)
	}
	for _, d := range m.dirs(top) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind by a failed Create: %v", d, err)
		}
	}
}

func TestRealJoinMissingFile(t *testing.T) {
	m, top := realManager(t)
	files, err := m.ProcsFiles(top + "/missing")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "true")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(files, ":"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 127 || !strings.Contains(string(out), files[0]) {
		t.Fatalf("shim into a missing group: %v, output %q; want exit 127 naming %s", err, out, files[0])
	}
	if m.Exists(top + "/missing") {
		t.Error("joining created the group")
	}
}

func TestRealHostMode(t *testing.T) {
	m, _ := realManager(t)
	if m.Mode() != HostMode() || HostMode() == "" {
		t.Fatalf("Mode = %q, HostMode = %q", m.Mode(), HostMode())
	}
}

// unifiedManager drives the v2 code paths for real on a hybrid host: its v2
// mount at <root>/unified has no cpuset/memory/pids controllers (they are on
// v1), but groups, joining, listing and removal work as on a v2-only host.
// The vm engineer's qemu guest runs the same code with the controllers.
func unifiedManager(t *testing.T) (*Manager, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	if HostMode() != ModeHybrid {
		t.Skipf("needs a hybrid host for a v2 mount without controllers; host mode %q", HostMode())
	}
	m, err := New(Options{Root: DefaultRoot + "/unified", Mode: ModeV2, V2Controllers: []string{}})
	if err != nil {
		t.Skipf("no usable v2 mount at %s/unified: %v", DefaultRoot, err)
	}
	top := fmt.Sprintf("vcored-test-%d", os.Getpid())
	t.Cleanup(func() {
		if g, err := m.Load(top); err == nil {
			_ = g.Kill(syscall.SIGKILL)
			for i := 0; i < 500; i++ {
				if pids, _ := g.Procs(); len(pids) == 0 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := g.Delete(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	return m, top
}

func TestRealV2Mechanics(t *testing.T) {
	m, top := unifiedManager(t)
	path := top + "/p/s"
	g, err := m.Create(path, Resources{})
	if err != nil {
		t.Fatal(err)
	}
	if dir, ok := g.UnifiedDir(); !ok || dir != filepath.Join(m.Root(), path) {
		t.Errorf("UnifiedDir = %q, %v", dir, ok)
	}
	if files := g.ProcsFiles(); len(files) != 1 || files[0] != filepath.Join(m.Root(), path, "cgroup.procs") {
		t.Errorf("ProcsFiles = %v, want the one v2 file", files)
	}
	cmd := startJoined(t, g, "sleep", "100")
	pid := cmd.Process.Pid
	if cg := procCgroups(t, pid); cg[""] != "/"+path {
		t.Errorf("/proc/%d/cgroup unified = %q, want /%s", pid, cg[""], path)
	}
	topGroup, err := m.Load(top)
	if err != nil {
		t.Fatal(err)
	}
	if pids, err := topGroup.Procs(); err != nil || !slices.Equal(pids, []int{pid}) {
		t.Errorf("Procs(%s) = %v, %v; want [%d]", top, pids, err, pid)
	}
	// A second process, moved in by AddProc, into a sibling.
	sib, err := m.Create(top+"/p/t", Resources{})
	if err != nil {
		t.Fatal(err)
	}
	other := exec.Command("sleep", "100")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Process.Kill(); _ = other.Wait() }()
	if err := sib.AddProc(other.Process.Pid); err != nil {
		t.Fatal(err)
	}
	want := []int{pid, other.Process.Pid}
	slices.Sort(want)
	if pids, err := topGroup.Procs(); err != nil || !slices.Equal(pids, want) {
		t.Errorf("Procs(%s) = %v, %v; want %v", top, pids, err, want)
	}
	if err := topGroup.Delete(); !errors.Is(err, ErrLeftover) {
		t.Errorf("Delete of a populated v2 group = %v, want ErrLeftover", err)
	}
	if err := topGroup.Kill(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	_ = other.Wait()
	if err := topGroup.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(m.Root(), top)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Delete: %v", top, err)
	}
}

// TestRealPidsMax: a group's pids.max stops a fork beyond the limit, and
// PidsUnlimited lifts it again.
func TestRealPidsMax(t *testing.T) {
	m, top := realManager(t)
	g, err := m.Create(top+"/pids", Resources{PidsMax: 3})
	if err != nil {
		t.Fatal(err)
	}
	var pidsDir string
	for _, d := range g.Dirs() {
		if _, err := os.Stat(filepath.Join(d, "pids.max")); err == nil {
			pidsDir = d
		}
	}
	if pidsDir == "" {
		t.Fatalf("no pids.max in any of %v", g.Dirs())
	}
	if got := readFile(t, filepath.Join(pidsDir, "pids.max")); got != "3" {
		t.Fatalf("pids.max = %q, want 3", got)
	}
	// dash, then four background sleeps (not holding the output pipe): the
	// shell and two sleeps fill the limit, the third fork fails ("Cannot
	// fork") and dash gives up.
	forkFour := func() (string, error) {
		cmd := exec.Command(os.Args[0], "/bin/sh", "-c", "s() { sleep 30 >/dev/null 2>&1 & }; s; s; s; s; echo forked-all")
		cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(g.ProcsFiles(), ":"))
		out, err := cmd.CombinedOutput()
		// The sleeps that did start stay in the group: end them.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if pids, perr := g.Procs(); perr != nil || len(pids) == 0 {
				break
			}
			_ = g.Kill(syscall.SIGKILL)
		}
		return string(out), err
	}
	out, err := forkFour()
	if err == nil || strings.Contains(out, "forked-all") {
		t.Fatalf("4 forks under pids.max 3 succeeded: %v\n%s", err, out)
	}
	if err := g.Update(Resources{PidsMax: PidsUnlimited}); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(pidsDir, "pids.max")); got != "max" {
		t.Fatalf("pids.max = %q, want max", got)
	}
	if out, err := forkFour(); err != nil || !strings.Contains(out, "forked-all") {
		t.Fatalf("4 forks without a limit: %v\n%s", err, out)
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
}
