package vcore

import (
	"context"
	"errors"
	"fmt"
	"github.com/vcored/vcored/internal/testutil"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/policy"
	"github.com/vcored/vcored/topology"
)

// env is what every integration test needs: the machine, the partition this
// vcore gets (node 0 minus core's default CPU 0), a partition cgroup the
// test made (as core would), and a fake core granting it.
type testEnv struct {
	m         *topology.Machine
	cg        *cgroups.Manager
	part      hw.CPUSet
	partition string // cgroup path
	core      *fakeCore
	dir       string
}

var partitionSeq atomic.Int64

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (cgroups, userfaultfd)")
	}
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	def := config.DefaultCore()
	part := policy.NodePartition(m, 0, def.ReservedCPUs, def.ReservedMemory)
	if part.CPUs.IsEmpty() {
		t.Skipf("node 0 has no CPU besides core's %s", def.ReservedCPUs)
	}
	cg, err := cgroups.New(cgroups.Options{})
	if errors.Is(err, cgroups.ErrUnavailable) {
		t.Skipf("cgroups: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{m: m, cg: cg, part: part.CPUs, dir: t.TempDir()}
	e.partition = fmt.Sprintf("%s/node0-%d", testCgroupParent(), partitionSeq.Add(1))
	if _, err := cg.Create(e.partition, cgroups.Resources{CPUs: part.CPUs, Mems: hw.NewSet[hw.Node](0)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroupTree(t, cg, testCgroupParent()) })
	e.core = newFakeCore(t, wire.ClaimOK{
		Node: 0, CPUs: part.CPUs, Mems: hw.NewSet[hw.Node](0), Memory: uint64(256 * hw.MiB),
		Cgroup: e.partition, Pager: wire.PagerLocal, FaultAround: 1,
		Dataspaces: []wire.DataspaceInfo{{Name: "shared", Size: uint64(hw.MiB)}},
	})
	return e
}

// removeCgroupTree kills what is left in the tree and removes it.
func removeCgroupTree(t *testing.T, cg *cgroups.Manager, path string) {
	if !cg.Exists(path) {
		return
	}
	g, err := cg.Load(path)
	if err != nil {
		t.Error(err)
		return
	}
	for i := 0; i < 100; i++ {
		pids, _ := g.Procs()
		if len(pids) == 0 {
			break
		}
		g.Kill(syscall.SIGKILL)
		time.Sleep(20 * time.Millisecond)
	}
	if err := g.Delete(); err != nil {
		t.Error(err)
	}
}

// config writes and parses a vcore file with the given subsystem tables.
func (e *testEnv) config(t *testing.T, subsystems string) *config.VCore {
	t.Helper()
	text := fmt.Sprintf(`node = 0
core_socket = %q
socket = %q
state_dir = %q
memory = "2GiB"
stop_grace = "2s"
log_level = "debug"
%s`, e.core.socket, filepath.Join(e.dir, "vcore.sock"), filepath.Join(e.dir, "state"), subsystems)
	path := filepath.Join(e.dir, "node0.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadVCore(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// running is a vcore running in the test process.
type running struct {
	v      *VCore
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startVCore runs a vcore in this process (not pinned: the test process
// must stay free) until stop.
func (e *testEnv) startVCore(t *testing.T, cfg *config.VCore) *running {
	t.Helper()
	v, err := New(Options{Config: cfg, Machine: e.m, Cgroups: e.cg, Shim: os.Args[0], Log: testLogger(t), NoPin: true, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{v: v, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- v.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	waitFor(t, "the vcore socket", func() bool { _, err := os.Stat(cfg.Socket); return err == nil })
	return r
}

// stop cancels Run and waits for it.
func (r *running) stop(t *testing.T) {
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// subsystem fetches one subsystem's status over the vcore socket.
func subsystemStatus(t *testing.T, socket, name string) api.Subsystem {
	t.Helper()
	var subs []api.Subsystem
	if err := api.NewClient(socket).Get(context.Background(), "/v1/subsystems", &subs); err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no subsystem %q in %+v", name, subs)
	return api.Subsystem{}
}

// waitRunning waits until subsystem name runs with one process.
func waitRunning(t *testing.T, socket, name string) api.Subsystem {
	t.Helper()
	var s api.Subsystem
	waitFor(t, name+" running", func() bool {
		s = subsystemStatus(t, socket, name)
		return s.State == "running" && len(s.Pids) == 1 && processCommand(s.Pids[0]) != filepath.Base(os.Args[0])
	})
	return s
}

// processCommand is /proc/<pid>/comm ("" when gone).
func processCommand(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie (state Z) has exited.
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

// procStatus reads one field of /proc/<pid>/status.
func procStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	v, err := testutil.ProcStatus(pid, field)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// httpGet fetches a path from a daemon socket as text.
func httpGet(t *testing.T, socket, path string) string {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	resp, err := hc.Get("http://vcore" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
	}
	return string(b)
}

// assertPinned checks from the kernel that pid runs in the subsystem's
// cgroup with the partition's CPUs, node 0's memory and the memory limit.
func (e *testEnv) assertPinned(t *testing.T, pid int, cgroup string, limit hw.Bytes) {
	t.Helper()
	if got := procStatus(t, pid, "Cpus_allowed_list"); got != e.part.String() {
		t.Errorf("pid %d Cpus_allowed_list = %q, want %q", pid, got, e.part)
	}
	if got := procStatus(t, pid, "Mems_allowed_list"); got != "0" {
		t.Errorf("pid %d Mems_allowed_list = %q, want 0", pid, got)
	}
	path, err := cgroupOf(os.DirFS("/proc"), pid)
	if err != nil {
		t.Fatal(err)
	}
	if path != "/"+cgroup {
		t.Errorf("pid %d is in cgroup %q, want /%s", pid, path, cgroup)
	}
	var limitFile string
	if e.cg.Mode() == cgroups.ModeV2 {
		limitFile = filepath.Join(cgroups.DefaultRoot, cgroup, "memory.max")
	} else {
		limitFile = filepath.Join(cgroups.DefaultRoot, "memory", cgroup, "memory.limit_in_bytes")
	}
	b, err := os.ReadFile(limitFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != strconv.FormatUint(uint64(limit), 10) {
		t.Errorf("%s = %s, want %d", limitFile, got, limit)
	}
}

// sleeperSubsystem is the subsystem most tests run: one long sleep.
const sleeperSubsystem = `
[[subsystem]]
name = "sleeper"
command = ["sleep", "infinity"]
memory = "32MiB"
`

func TestSubsystemPinnedAndCleanStop(t *testing.T) {
	e := newTestEnv(t)
	cfg := e.config(t, sleeperSubsystem)
	r := e.startVCore(t, cfg)
	s := waitRunning(t, cfg.Socket, "sleeper")
	pid := s.Pids[0]
	cgroup := e.partition + "/sleeper"
	if processCommand(pid) != "sleep" {
		t.Fatalf("pid %d runs %q, want sleep", pid, processCommand(pid))
	}
	e.assertPinned(t, pid, cgroup, 32*hw.MiB)
	if s.Cgroup != cgroup || s.CPUs != e.part.String() || s.Mems != "0" || s.MemoryLimitBytes != uint64(32*hw.MiB) || s.QuotaLimitBytes != uint64(32*hw.MiB) || s.Adopted {
		t.Errorf("status = %+v", s)
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"VCORE_SOCKET=" + cfg.Socket, "VCORE_NODE=0", "VCORE_SUBSYSTEM=sleeper"} {
		if !slices.Contains(strings.Split(string(env), "\x00"), want) {
			t.Errorf("subsystem environment lacks %s", want)
		}
	}

	var info api.Info
	if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/info", &info); err != nil {
		t.Fatal(err)
	}
	if info.Role != "vcore" || info.PagerMode != "local" || info.CPUs != e.part.String() || info.CoreConnected == nil || !*info.CoreConnected {
		t.Errorf("info = %+v", info)
	}
	metrics := httpGet(t, cfg.Socket, "/metrics")
	for _, want := range []string{`vcored_subsystem_restarts_total{subsystem="sleeper"} 0`, `vcored_subsystem_state{state="running",subsystem="sleeper"} 1`, "vcored_subsystem_memory_limit_bytes"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	claims, _, _, _, _, _ := e.core.snapshot()
	if len(claims) != 1 || claims[0].VCoreID != cfg.Socket || claims[0].Node != 0 || claims[0].Memory != uint64(2*hw.GiB) {
		t.Errorf("claims = %+v", claims)
	}

	// A process outside the subsystems may not speak the worker protocol.
	c, err := wire.Dial(context.Background(), cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	c.SendMsg(&wire.Hello{Role: wire.RoleWorker, Pid: os.Getpid(), Node: 0, Version: wire.Version})
	if _, err := expect[*wire.HelloOK](context.Background(), c); err == nil || !strings.Contains(err.Error(), string(wire.CodeDenied)) {
		t.Errorf("Hello from a non-subsystem process: %v, want denied", err)
	}
	c.Close()

	// Clean stop: the subsystem is gone, its cgroup removed, the lease
	// released, the socket removed.
	r.stop(t)
	if alive(pid) {
		t.Errorf("subsystem pid %d still runs after the vcore stopped", pid)
	}
	if e.cg.Exists(cgroup) {
		t.Errorf("cgroup %s left behind", cgroup)
	}
	if _, err := os.Stat(cfg.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if _, _, _, _, _, releases := e.core.snapshot(); releases != 1 {
		t.Errorf("core saw %d Release, want 1", releases)
	}
}

func TestClaimRefusedCreatesNothing(t *testing.T) {
	e := newTestEnv(t)
	e.core.set(func(fc *fakeCore) {
		fc.refuse = &wire.Error{Code: wire.CodeConflict, Msg: "node 0 CPUs 1 are leased to vcore /run/vcored/other.sock (pid 4242)"}
	})
	cfg := e.config(t, sleeperSubsystem)
	v, err := New(Options{Config: cfg, Machine: e.m, Cgroups: e.cg, Shim: os.Args[0], Log: testLogger(t), NoPin: true, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = v.Run(context.Background())
	if !errors.Is(err, ErrClaimRefused) || !strings.Contains(err.Error(), "other.sock (pid 4242)") {
		t.Fatalf("Run = %v, want a refused claim naming the holder", err)
	}
	for _, p := range []string{cfg.Socket, cfg.StateDir} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a refused claim", p)
		}
	}
	if e.cg.Exists(e.partition + "/sleeper") {
		t.Error("subsystem cgroup created after a refused claim")
	}
}

func TestConfigErrorCreatesNothing(t *testing.T) {
	e := newTestEnv(t)
	cfg := e.config(t, `
[[subsystem]]
name = "sleeper"
command = ["sleep", "infinity"]
cpus = "1000"
memory = "32MiB"
`)
	_, err := New(Options{Config: cfg, Machine: e.m, Cgroups: e.cg})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "subsystem[0].cpus") {
		t.Fatalf("New = %v, want ErrConfig naming subsystem[0].cpus (CPU 1000 is not in the partition)", err)
	}
	if claims, _, _, _, _, _ := e.core.snapshot(); len(claims) != 0 {
		t.Errorf("core saw a claim: %+v", claims)
	}
}

func TestRestartPolicy(t *testing.T) {
	e := newTestEnv(t)
	cfg := e.config(t, `
[[subsystem]]
name = "crasher"
command = ["sh", "-c", "exit 1"]
memory = "16MiB"
restart = "on-failure"
max_restarts = 2
backoff_initial = "10ms"
backoff_max = "40ms"
`)
	e.startVCore(t, cfg)
	var s api.Subsystem
	waitFor(t, "crasher failed", func() bool {
		s = subsystemStatus(t, cfg.Socket, "crasher")
		return s.State == "failed"
	})
	if s.Restarts != 2 || s.LastExit != "exit status 1" {
		t.Errorf("after giving up: %+v, want 2 restarts and exit status 1", s)
	}
	log, err := os.ReadFile(filepath.Join(cfg.StateDir, "logs", "crasher.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "--- vcored: starting crasher"); n != 3 {
		t.Errorf("log shows %d starts, want 3:\n%s", n, log)
	}
}
