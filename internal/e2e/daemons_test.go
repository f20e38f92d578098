package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/cgroups"
)

const sleeper = `
[[subsystem]]
name = "sleeper"
command = ["sleep", "1000"]
memory = "64MiB"
restart = "on-failure"
`

// sleeperPid waits until the sleeper subsystem runs and returns its pid.
func sleeperPid(t *testing.T, socket string) int {
	t.Helper()
	var pid int
	eventually(t, 15*time.Second, "sleeper running", func() (bool, string) {
		s, ok := subsystem(t, socket, "sleeper")
		if !ok || s.State != "running" || len(s.Pids) != 1 {
			return false, fmt.Sprintf("%+v", s)
		}
		pid = s.Pids[0]
		return true, ""
	})
	return pid
}

func partition(t *testing.T, c *cluster) api.Partition {
	t.Helper()
	for _, p := range get[[]api.Partition](t, c.coreSocket(), "/v1/partitions") {
		if p.Node == 0 && p.Holder != nil {
			return p
		}
	}
	t.Fatal("no lease on node 0")
	return api.Partition{}
}

// TestSubsystemPinned: a subsystem runs inside its cgroup on the vcore's
// CPU and node with its memory limit — asserted from the kernel.
func TestSubsystemPinned(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	c.startVCore(0, c.vcoreConfig(0, sleeper))
	pid := sleeperPid(t, c.vcoreSocket(0))

	want := strconv.Itoa(c.partitionCPU)
	if got, _ := procStatus(pid, "Cpus_allowed_list"); got != want {
		t.Errorf("Cpus_allowed_list = %q, want %q", got, want)
	}
	if got, _ := procStatus(pid, "Mems_allowed_list"); got != "0" {
		t.Errorf("Mems_allowed_list = %q, want 0", got)
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	rel := c.cgroup + "/node0/sleeper"
	if !strings.Contains(string(cg), "/"+rel+"\n") {
		t.Errorf("/proc/%d/cgroup does not place it in %s:\n%s", pid, rel, cg)
	}
	switch cgroups.HostMode() {
	case cgroups.ModeV2:
		checkFile(t, filepath.Join(cgroups.DefaultRoot, rel, "memory.max"), "67108864")
		checkFile(t, filepath.Join(cgroups.DefaultRoot, rel, "cpuset.cpus"), want)
	default:
		checkFile(t, filepath.Join(cgroups.DefaultRoot, "memory", rel, "memory.limit_in_bytes"), "67108864")
		checkFile(t, filepath.Join(cgroups.DefaultRoot, "cpuset", rel, "cpuset.cpus"), want)
		checkFile(t, filepath.Join(cgroups.DefaultRoot, "cpuset", rel, "cpuset.mems"), "0")
	}

	// The status API and `vcored status` agree with the kernel.
	s, _ := subsystem(t, c.vcoreSocket(0), "sleeper")
	if s.CPUs != want || s.Mems != "0" || s.MemoryLimitBytes != 64<<20 {
		t.Errorf("status: cpus %q mems %q limit %d", s.CPUs, s.Mems, s.MemoryLimitBytes)
	}
	p := partition(t, c)
	if p.State != "live" || p.CPUs != want {
		t.Errorf("partition: %+v", p)
	}
	out, err := exec.Command(vcoredBin, "status", "--socket", c.coreSocket()).CombinedOutput()
	if err != nil {
		t.Fatalf("vcored status: %v\n%s", err, out)
	}
	for _, w := range []string{"node0", "live", "sleeper", "running", strconv.Itoa(pid), "64MiB"} {
		if !bytes.Contains(out, []byte(w)) {
			t.Errorf("vcored status lacks %q:\n%s", w, out)
		}
	}
}

func checkFile(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
		return
	}
	if got := strings.TrimSpace(string(b)); got != want {
		t.Errorf("%s = %q, want %q", path, got, want)
	}
}

// TestRestartBackoffThenFailed: a command that exits 1 is restarted with
// backoff up to max_restarts, then reported failed and left alone.
func TestRestartBackoffThenFailed(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	c.startVCore(0, c.vcoreConfig(0, `
[[subsystem]]
name = "crasher"
command = ["sh", "-c", "exit 1"]
memory = "16MiB"
restart = "on-failure"
max_restarts = 3
backoff_initial = "50ms"
backoff_max = "200ms"
`))
	start := time.Now()
	eventually(t, 20*time.Second, "crasher failed", func() (bool, string) {
		s, _ := subsystem(t, c.vcoreSocket(0), "crasher")
		return s.State == "failed", fmt.Sprintf("%+v", s)
	})
	s, _ := subsystem(t, c.vcoreSocket(0), "crasher")
	if s.Restarts != 3 {
		t.Errorf("restarts = %d, want 3", s.Restarts)
	}
	// 50 + 100 + 200 ms of backoff at least.
	if el := time.Since(start); el < 350*time.Millisecond {
		t.Errorf("failed after %v: backoff not applied", el)
	}
	time.Sleep(500 * time.Millisecond)
	if s2, _ := subsystem(t, c.vcoreSocket(0), "crasher"); s2.Restarts != 3 || s2.State != "failed" {
		t.Errorf("a failed subsystem was restarted again: %+v", s2)
	}
}

// TestVCoreKill9Readopt: kill -9 of the vcore leaves its subsystem running;
// core reports the partition orphaned; a restarted vcore re-adopts the
// same process instead of starting another.
func TestVCoreKill9Readopt(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	v := c.startVCore(0, c.vcoreConfig(0, sleeper))
	pid := sleeperPid(t, c.vcoreSocket(0))

	c.signal(v, syscall.SIGKILL)
	if !alive(pid) {
		t.Fatal("subsystem died with its vcore")
	}
	eventually(t, 10*time.Second, "partition orphaned", func() (bool, string) {
		p := partition(t, c)
		return p.State == "orphaned", p.State
	})

	c.startVCore(0, c.vcoreConfig(0, sleeper))
	eventually(t, 10*time.Second, "partition live again", func() (bool, string) {
		p := partition(t, c)
		return p.State == "live", p.State
	})
	s, ok := subsystem(t, c.vcoreSocket(0), "sleeper")
	if !ok || len(s.Pids) != 1 || s.Pids[0] != pid || !s.Adopted || s.Restarts != 0 {
		t.Fatalf("after restart: %+v, want pid %d adopted with no restart", s, pid)
	}
	// Adopted and still supervised: the vcore sees it die and restarts it.
	syscall.Kill(pid, syscall.SIGKILL)
	eventually(t, 15*time.Second, "adopted subsystem restarted", func() (bool, string) {
		s, _ := subsystem(t, c.vcoreSocket(0), "sleeper")
		return s.State == "running" && len(s.Pids) == 1 && s.Pids[0] != pid, fmt.Sprintf("%+v", s)
	})
}

// TestOrphanGraceExpires: with no vcore back within orphan_grace, core
// stops what is left, removes the cgroups and frees the lease.
func TestOrphanGraceExpires(t *testing.T) {
	c := newCluster(t)
	c.startCore(strings.Replace(c.coreConfig(""), `orphan_grace = "30s"`, `orphan_grace = "1s"`, 1))
	v := c.startVCore(0, c.vcoreConfig(0, sleeper))
	pid := sleeperPid(t, c.vcoreSocket(0))
	c.signal(v, syscall.SIGKILL)
	eventually(t, 20*time.Second, "orphan reclaimed", func() (bool, string) {
		for _, p := range get[[]api.Partition](t, c.coreSocket(), "/v1/partitions") {
			if p.Node == 0 {
				return p.State == "free" && !alive(pid), fmt.Sprintf("%+v alive=%v", p, alive(pid))
			}
		}
		return false, "no partition for node 0"
	})
	if left, _ := filepath.Glob(filepath.Join(cgroups.DefaultRoot, "*", c.cgroup, "node0")); len(left) > 0 {
		t.Errorf("partition cgroups left after reclaim: %v", left)
	}
	if left, _ := filepath.Glob(filepath.Join(cgroups.DefaultRoot, c.cgroup, "node0")); len(left) > 0 {
		t.Errorf("partition cgroups left after reclaim: %v", left)
	}
}

// TestCoreKill9: kill -9 of core leaves the vcore and its subsystem
// running; the vcore re-registers with a new core, whose ledger matches.
func TestCoreKill9(t *testing.T) {
	c := newCluster(t)
	core := c.startCore(c.coreConfig(""))
	c.startVCore(0, c.vcoreConfig(0, sleeper))
	pid := sleeperPid(t, c.vcoreSocket(0))
	before := partition(t, c)

	c.signal(core, syscall.SIGKILL)
	if !alive(pid) {
		t.Fatal("subsystem died with core")
	}
	if s, _ := subsystem(t, c.vcoreSocket(0), "sleeper"); len(s.Pids) != 1 || s.Pids[0] != pid {
		t.Fatalf("vcore lost its subsystem when core died: %+v", s)
	}

	c.startCore(c.coreConfig(""))
	eventually(t, 20*time.Second, "vcore re-registered", func() (bool, string) {
		p := partition(t, c)
		return p.State == "live", p.State
	})
	after := partition(t, c)
	if after.CPUs != before.CPUs || after.Holder.ID != before.Holder.ID || after.Cgroup != before.Cgroup || after.MemoryBytes != before.MemoryBytes {
		t.Errorf("ledger after core restart %+v, before %+v", after, before)
	}
	var ledger struct {
		Leases []struct {
			Holder string `json:"holder"`
			CPUs   string `json:"cpus"`
		} `json:"leases"`
	}
	b, err := os.ReadFile(c.path("core-state/ledger.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &ledger); err != nil || len(ledger.Leases) != 1 || ledger.Leases[0].Holder != before.Holder.ID {
		t.Errorf("ledger file: %s (err %v)", b, err)
	}
	if s, _ := subsystem(t, c.vcoreSocket(0), "sleeper"); len(s.Pids) != 1 || s.Pids[0] != pid || s.Restarts != 0 {
		t.Errorf("subsystem touched by the core restart: %+v", s)
	}
}

// TestOverlappingClaimRefused: a second vcore claiming the same CPUs exits
// 2 with a message naming the holder, and creates nothing.
func TestOverlappingClaimRefused(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	c.startVCore(0, c.vcoreConfig(0, sleeper))
	sleeperPid(t, c.vcoreSocket(0))

	cfg := c.write("vcore1.toml", c.vcoreConfig(1, strings.Replace(sleeper, "sleeper", "other", 1)))
	out, err := exec.Command(vcoredBin, "vcore", "--config", cfg).CombinedOutput()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("second vcore: err %v, want exit 2\n%s", err, out)
	}
	if !bytes.Contains(out, []byte(c.vcoreSocket(0))) {
		t.Errorf("refusal does not name the holder %s:\n%s", c.vcoreSocket(0), out)
	}
	if _, err := os.Stat(c.vcoreSocket(1)); err == nil {
		t.Error("refused vcore created its socket")
	}
	if m, _ := filepath.Glob(filepath.Join(cgroups.DefaultRoot, "*", c.cgroup, "*", "other")); len(m) > 0 {
		t.Errorf("refused vcore created cgroups: %v", m)
	}
	if s, ok := subsystem(t, c.vcoreSocket(0), "sleeper"); !ok || s.State != "running" {
		t.Errorf("holder disturbed: %+v", s)
	}
}

// TestNonRootPeerRefused: even when the socket file is reachable, a peer
// that is neither root nor in socket_group is refused (SO_PEERCRED).
func TestNonRootPeerRefused(t *testing.T) {
	c := newCluster(t)
	core := c.startCore(c.coreConfig(""))
	// Make the socket reachable by anyone to test the credential check
	// itself, not the file mode.
	os.Chmod(c.dir, 0o755)
	os.Chmod(c.coreSocket(), 0o666)
	cmd := exec.Command(vcoredBin, "status", "--socket", c.coreSocket())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("nobody got a status answer:\n%s", out)
	}
	t.Logf("as nobody: %v: %s", err, bytes.TrimSpace(out))
	eventually(t, 5*time.Second, "refusal logged", func() (bool, string) {
		return bytes.Contains(core.log.Bytes(), []byte("refused")), core.log.String()
	})
	// root still gets in.
	get[api.Info](t, c.coreSocket(), "/v1/info")
}

// TestBadConfigCreatesNothing: config errors exit 2 naming file and line,
// and leave no socket, cgroup or process behind.
func TestBadConfigCreatesNothing(t *testing.T) {
	c := newCluster(t)
	bad := c.write("core.toml", c.coreConfig("sockett = \"/tmp/x\"\n"))
	out, err := exec.Command(vcoredBin, "core", "--config", bad).CombinedOutput()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !bytes.Contains(out, []byte("core.toml:8: sockett")) {
		t.Fatalf("bad core config: err %v\n%s", err, out)
	}
	if _, err := os.Stat(c.coreSocket()); err == nil {
		t.Error("core with a bad config created its socket")
	}

	c.startCore(c.coreConfig(""))
	badV := c.write("vcore0.toml", c.vcoreConfig(0, sleeper+"memory_typo = 1\n"))
	out, err = exec.Command(vcoredBin, "vcore", "--config", badV).CombinedOutput()
	if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !bytes.Contains(out, []byte("memory_typo")) {
		t.Fatalf("bad vcore config: err %v\n%s", err, out)
	}
	if _, err := os.Stat(c.vcoreSocket(0)); err == nil {
		t.Error("vcore with a bad config created its socket")
	}
	if p := get[[]api.Partition](t, c.coreSocket(), "/v1/partitions"); p[0].State != "free" {
		t.Errorf("bad vcore config took a lease: %+v", p)
	}
	if m, _ := filepath.Glob(filepath.Join(cgroups.DefaultRoot, "*", c.cgroup, "node0")); len(m) > 0 {
		t.Errorf("cgroups created: %v", m)
	}
}
