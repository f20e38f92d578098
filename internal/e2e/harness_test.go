package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/vcored/vcored/internal/testutil"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/topology"
)

// vcoredBin is the binary under test.
var vcoredBin string

// cgPrefix prefixes every cgroup parent this test binary creates.
var cgPrefix = fmt.Sprintf("vcored-e2e-%d", os.Getpid())

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode)) // a helper process (security_test.go), not the tests
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Getenv(limitHelperEnv) != "" || os.Getenv(ckptHelperEnv) != "" {
		return m.Run() // a helper process of limits_test.go
	}
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipping: needs root (real cgroups, userfaultfd, pinned daemons)")
		return 0
	}
	if bin := os.Getenv("VCORED_BIN"); bin != "" {
		vcoredBin = bin
	} else if bin := os.Getenv("VCORED"); bin != "" { // set by make vmtest in the guest
		vcoredBin = bin
	} else {
		dir, err := os.MkdirTemp("", "vcored-e2e-bin-")
		if err != nil {
			fmt.Println(err)
			return 1
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o755) // a test runs the binary as nobody
		vcoredBin = filepath.Join(dir, "vcored")
		out, err := exec.Command("go", "build", "-o", vcoredBin, "github.com/vcored/vcored/cmd/vcored").CombinedOutput()
		if err != nil {
			fmt.Printf("e2e: building vcored: %v\n%s", err, out)
			return 1
		}
	}
	code := m.Run()
	if left := leftoverCgroups(); len(left) > 0 {
		fmt.Printf("e2e: cgroups left behind: %v\n", left)
		removeCgroups()
		if code == 0 {
			code = 1
		}
	}
	return code
}

// leftoverCgroups lists this binary's cgroup directories in any hierarchy.
func leftoverCgroups() []string {
	var left []string
	matches, _ := filepath.Glob(filepath.Join(cgroups.DefaultRoot, "*", cgPrefix+"*"))
	left = append(left, matches...)
	matches, _ = filepath.Glob(filepath.Join(cgroups.DefaultRoot, cgPrefix+"*"))
	return append(left, matches...)
}

func removeCgroups() {
	for _, dir := range leftoverCgroups() {
		// deepest first
		var dirs []string
		filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if procs, err := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(procs)) {
					if pid, err := strconv.Atoi(f); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			for j := 0; j < 50 && os.Remove(dirs[i]) != nil; j++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

var seq atomic.Int64

// cluster is one test's core + vcores, in a private temp dir.
type cluster struct {
	t       *testing.T
	dir     string
	cgroup  string // cgroup_parent
	core    *daemon
	vcores  []*daemon
	machine *topology.Machine
	// partitionCPU is the vcore's CPU on node 0 (the lowest CPU core does
	// not reserve).
	partitionCPU int
}

type daemon struct {
	name   string
	cmd    *exec.Cmd
	socket string
	config string
	log    *syncBuffer
	done   chan struct{}
	err    error
}

// newCluster prepares a temp dir and a unique cgroup parent. Nothing runs
// until startCore / startVCore.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	if m.AllowedCPUs.Len() < 2 {
		t.Skipf("needs 2 usable CPUs (core keeps one, the vcore gets the other); have %s", m.AllowedCPUs)
	}
	dir, err := os.MkdirTemp("", "vcored-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, cgroup: fmt.Sprintf("%s-%d", cgPrefix, seq.Add(1)), machine: m}
	node0 := m.Nodes[0]
	cpus := node0.CPUs.Intersect(m.AllowedCPUs).Slice()
	c.partitionCPU = int(cpus[len(cpus)-1])
	t.Cleanup(c.stopAll)
	return c
}

func (c *cluster) path(name string) string { return filepath.Join(c.dir, name) }

func (c *cluster) coreSocket() string { return c.path("core.sock") }

func (c *cluster) vcoreSocket(i int) string { return c.path(fmt.Sprintf("vcore%d.sock", i)) }

// coreConfig returns a core.toml body; extra is appended.
func (c *cluster) coreConfig(extra string) string {
	lowest, _ := c.machine.AllowedCPUs.Min()
	return fmt.Sprintf(`socket = %q
state_dir = %q
cgroup_parent = %q
reserved_cpus = "%d"
reserved_memory = "64MiB"
orphan_grace = "30s"
rejoin_grace = "30s"
%s
`, c.coreSocket(), c.path("core-state"), c.cgroup, lowest, extra)
}

// vcoreConfig returns a vcore TOML for node 0; subsystems is appended.
func (c *cluster) vcoreConfig(i int, subsystems string) string {
	return fmt.Sprintf(`node = 0
core_socket = %q
socket = %q
state_dir = %q
cpus = "%d"
memory = "384MiB"
stop_grace = "2s"
%s
`, c.coreSocket(), c.vcoreSocket(i), c.path(fmt.Sprintf("vcore%d-state", i)), c.partitionCPU, subsystems)
}

func (c *cluster) write(name, body string) string {
	p := c.path(name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// start runs vcored with args and returns at once.
func (c *cluster) start(name, socket string, args ...string) *daemon {
	c.t.Helper()
	d := &daemon{name: name, socket: socket, log: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.Command(vcoredBin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	return d
}

// startCore starts core with the given config body and waits until it
// answers on its socket.
func (c *cluster) startCore(body string, args ...string) *daemon {
	c.t.Helper()
	cfg := c.write("core.toml", body)
	d := c.start("core", c.coreSocket(), append([]string{"core", "--config", cfg}, args...)...)
	c.core = d
	c.waitReady(d)
	return d
}

// startVCore starts vcore i and waits until it answers on its socket.
func (c *cluster) startVCore(i int, body string) *daemon {
	c.t.Helper()
	cfg := c.write(fmt.Sprintf("vcore%d.toml", i), body)
	d := c.start(fmt.Sprintf("vcore%d", i), c.vcoreSocket(i), "vcore", "--config", cfg)
	d.config = cfg
	for len(c.vcores) <= i {
		c.vcores = append(c.vcores, nil)
	}
	c.vcores[i] = d
	c.waitReady(d)
	return d
}

func (c *cluster) waitReady(d *daemon) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var info api.Info
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := api.NewClient(d.socket).Get(ctx, "/v1/info", &info)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-d.done:
			c.t.Fatalf("%s exited before it was ready: %v\n%s", d.name, d.err, d.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	c.t.Fatalf("%s did not answer on %s within 20s\n%s", d.name, d.socket, d.log)
}

// signal sends sig to d and, for SIGTERM/SIGINT, waits for it to exit.
func (c *cluster) signal(d *daemon, sig syscall.Signal) {
	c.t.Helper()
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		c.t.Fatalf("%s did not exit within 30s of %v\n%s", d.name, sig, d.log)
	}
}

// stopAll stops vcores (SIGTERM: they stop their subsystems and release
// their leases), then core, then removes the temp dir. It checks that the
// daemons left no cgroup behind.
func (c *cluster) stopAll() {
	for _, v := range c.vcores {
		if v != nil && !v.exited() {
			_ = v.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-v.done:
			case <-time.After(30 * time.Second):
				c.t.Errorf("%s ignored SIGTERM\n%s", v.name, v.log)
				_ = v.cmd.Process.Kill()
			}
		}
	}
	if c.core != nil && !c.core.exited() {
		_ = c.core.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.core.done:
		case <-time.After(30 * time.Second):
			c.t.Errorf("core ignored SIGTERM\n%s", c.core.log)
			_ = c.core.cmd.Process.Kill()
		}
	}
	if c.t.Failed() {
		for _, d := range append([]*daemon{c.core}, c.vcores...) {
			if d != nil {
				c.t.Logf("--- %s log:\n%s", d.name, d.log)
			}
		}
	}
	matches, _ := filepath.Glob(filepath.Join(cgroups.DefaultRoot, "*", c.cgroup))
	if m2, _ := filepath.Glob(filepath.Join(cgroups.DefaultRoot, c.cgroup)); len(m2) > 0 {
		matches = append(matches, m2...)
	}
	if len(matches) > 0 && !c.t.Failed() && !c.t.Skipped() {
		c.t.Errorf("cgroups left after a clean stop: %v", matches)
	}
	os.RemoveAll(c.dir)
}

// syncBuffer is a bytes.Buffer the daemon's output goroutine writes while
// the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of what was written so far.
func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *syncBuffer) String() string { return string(b.Bytes()) }

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// get fetches a status document from a daemon.
func get[T any](t *testing.T, socket, path string) T {
	t.Helper()
	var v T
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := api.NewClient(socket).Get(ctx, path, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// eventually retries cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		ok, why := cond()
		if ok {
			return
		}
		last = why
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %v: %s", what, timeout, last)
}

// procStatus reads a field of /proc/<pid>/status.
func procStatus(pid int, field string) (string, error) { return testutil.ProcStatus(pid, field) }

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// subsystem returns the named subsystem from a vcore's status.
func subsystem(t *testing.T, socket, name string) (api.Subsystem, bool) {
	for _, s := range get[[]api.Subsystem](t, socket, "/v1/subsystems") {
		if s.Name == name {
			return s, true
		}
	}
	return api.Subsystem{}, false
}
