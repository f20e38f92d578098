package e2e

import (
	"bytes"
	"errors"
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

// State that is wrong or cannot be written: a ledger that does not fit the
// machine or cgroup_parent, a read-only or full state directory. Real
// mounts (a read-only bind mount, a tiny tmpfs), removed at cleanup.

// mount mounts and returns an idempotent unmount; cleanup stops the
// cluster's daemons first (they may write there) and then unmounts.
func mount(t *testing.T, c *cluster, target string, do func() error) (unmount func()) {
	t.Helper()
	if err := do(); err != nil {
		t.Skipf("cannot mount on %s: %v", target, err)
	}
	mounted := true
	unmount = func() {
		if !mounted {
			return
		}
		if err := syscall.Unmount(target, 0); err != nil {
			if err := syscall.Unmount(target, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", target, err)
				return
			}
		}
		mounted = false
	}
	t.Cleanup(func() {
		c.stopAll()
		unmount()
	})
	return unmount
}

// bindReadOnly makes dir a read-only bind mount of itself.
func bindReadOnly(t *testing.T, c *cluster, dir string) (unmount func()) {
	return mount(t, c, dir, func() error {
		if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
			return err
		}
		if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
			syscall.Unmount(dir, 0)
			return err
		}
		return nil
	})
}

// coreInfo fetches core's /v1/info.
func coreInfo(t *testing.T, c *cluster) api.Info { return get[api.Info](t, c.coreSocket(), "/v1/info") }

func status(t *testing.T, c *cluster) string {
	t.Helper()
	out, err := exec.Command(vcoredBin, "status", "--socket", c.coreSocket()).CombinedOutput()
	if err != nil {
		t.Fatalf("vcored status: %v\n%s", err, out)
	}
	return string(out)
}

// TestStateReadOnlyStateDir: core restarts onto a read-only state dir; the
// vcore's re-claim cannot be written, so it is refused and the lease stays
// unconfirmed (not live with no session); core and `vcored status` say the
// ledger is degraded. Once the dir is writable the vcore's retry succeeds.
func TestStateReadOnlyStateDir(t *testing.T) {
	c := newCluster(t)
	core := c.startCore(c.coreConfig(""))
	c.startVCore(0, c.vcoreConfig(0, sleeper))
	pid := sleeperPid(t, c.vcoreSocket(0))
	c.signal(core, syscall.SIGKILL)

	unmount := bindReadOnly(t, c, c.path("core-state"))
	if err := os.WriteFile(c.path("core-state/probe"), nil, 0o600); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("state dir not read-only: write gives %v", err)
	}
	c.startCore(c.coreConfig(""))
	eventually(t, 30*time.Second, "the re-claim refused and the ledger degraded", func() (bool, string) {
		info := coreInfo(t, c)
		return info.Degraded != nil && strings.Contains(info.Degraded.Reason, "read-only file system"), fmt.Sprintf("%+v", info.Degraded)
	})
	if p := partition(t, c); p.State != "unconfirmed" {
		t.Errorf("partition after a re-claim that could not be written: %+v, want unconfirmed", p)
	}
	out := status(t, c)
	if !strings.Contains(out, "DEGRADED") || !strings.Contains(out, "read-only file system") {
		t.Errorf("vcored status does not show the degraded ledger:\n%s", out)
	}
	if !bytes.Contains(c.core.log.Bytes(), []byte("ledger cannot be written")) {
		t.Errorf("core did not log the failed write:\n%s", c.core.log)
	}

	unmount()
	eventually(t, 60*time.Second, "the vcore's retry granted once the dir is writable", func() (bool, string) {
		p := partition(t, c)
		return p.State == "live" && coreInfo(t, c).Degraded == nil, p.State
	})
	if s, _ := subsystem(t, c.vcoreSocket(0), "sleeper"); len(s.Pids) != 1 || s.Pids[0] != pid {
		t.Errorf("subsystem disturbed: %+v, want pid %d", s, pid)
	}
	if strings.Contains(status(t, c), "DEGRADED") {
		t.Error("vcored status still says DEGRADED after recovery")
	}
}

// TestStateFullStateDir: with the state dir full (a tiny tmpfs), a vcore's
// death cannot be written: the orphaning is pending, shown as degraded;
// a new vcore's claim is refused and changes nothing; once space is freed the
// orphaning is written and a vcore re-claims the partition and re-adopts
// its subsystem.
func TestStateFullStateDir(t *testing.T) {
	c := newCluster(t)
	dir := c.path("core-state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	mount(t, c, dir, func() error { return syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700") })
	c.startCore(c.coreConfig(""))
	v := c.startVCore(0, c.vcoreConfig(0, sleeper))
	pid := sleeperPid(t, c.vcoreSocket(0))
	holder := partition(t, c).Holder.ID

	// Fill the tmpfs.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 4096)); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()

	c.signal(v, syscall.SIGKILL)
	eventually(t, 20*time.Second, "the orphaning pending, the ledger degraded", func() (bool, string) {
		info := coreInfo(t, c)
		d := info.Degraded
		return d != nil && strings.Contains(d.Reason, "no space left on device") && len(d.Pending) == 1 && d.Pending[0] == "orphan "+holder,
			fmt.Sprintf("%+v", d)
	})
	p := partition(t, c)
	if p.Pending != "orphan" {
		t.Errorf("partition %+v, want the orphaning pending", p)
	}
	out := status(t, c)
	for _, want := range []string{"DEGRADED", "no space left on device", "orphan " + holder} {
		if !strings.Contains(out, want) {
			t.Errorf("vcored status lacks %q:\n%s", want, out)
		}
	}

	// A vcore starting now cannot be granted the partition: refused, exits.
	cfg := c.write("vcore0.toml", c.vcoreConfig(0, sleeper))
	refused, err := exec.Command(vcoredBin, "vcore", "--config", cfg).CombinedOutput()
	if err == nil || !bytes.Contains(refused, []byte("ledger cannot be written")) {
		t.Fatalf("vcore claiming onto a full state dir: err %v\n%s", err, refused)
	}
	if !alive(pid) {
		t.Fatal("the refused vcore's claim killed the subsystem")
	}

	// Space freed: the pending orphaning is written, a vcore gets the
	// partition back and re-adopts the subsystem.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the orphaning written", func() (bool, string) {
		p := partition(t, c)
		return p.State == "orphaned" && p.Pending == "" && coreInfo(t, c).Degraded == nil, fmt.Sprintf("%+v", p)
	})
	c.startVCore(0, c.vcoreConfig(0, sleeper))
	eventually(t, 20*time.Second, "partition live again", func() (bool, string) {
		p := partition(t, c)
		return p.State == "live", p.State
	})
	if s, _ := subsystem(t, c.vcoreSocket(0), "sleeper"); len(s.Pids) != 1 || s.Pids[0] != pid || !s.Adopted {
		t.Errorf("after recovery: %+v, want pid %d adopted", s, pid)
	}
}

// TestStateOrphanShowsRunning: after kill -9 of a vcore, core shows the
// orphaned partition and that its subsystem still runs, with its pid.
func TestStateOrphanShowsRunning(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	v := c.startVCore(0, c.vcoreConfig(0, sleeper))
	pid := sleeperPid(t, c.vcoreSocket(0))
	c.signal(v, syscall.SIGKILL)
	eventually(t, 10*time.Second, "partition orphaned", func() (bool, string) {
		p := partition(t, c)
		return p.State == "orphaned", p.State
	})
	p := partition(t, c)
	if len(p.Running) != 1 || p.Running[0].Subsystem != "sleeper" || len(p.Running[0].Pids) != 1 || p.Running[0].Pids[0] != pid {
		t.Errorf("running in the orphaned partition: %+v, want sleeper pid %d", p.Running, pid)
	}
	out := status(t, c)
	if want := fmt.Sprintf("1 subsystem still running (sleeper: pid %d)", pid); !strings.Contains(out, want) {
		t.Errorf("vcored status lacks %q:\n%s", want, out)
	}
	// A live partition lists nothing there (its vcore reports subsystems).
	c.startVCore(0, c.vcoreConfig(0, sleeper))
	eventually(t, 10*time.Second, "partition live again", func() (bool, string) {
		p := partition(t, c)
		return p.State == "live" && len(p.Running) == 0, fmt.Sprintf("%+v", p)
	})
}

// TestStateLedgerOutsideParent: a ledger naming node 7, CPU 99 or a cgroup
// outside cgroup_parent (holding an unrelated process) loads without those
// leases: core logs them dropped, and when it reclaims what is left it
// never touches the unrelated process or its cgroup.
func TestStateLedgerOutsideParent(t *testing.T) {
	c := newCluster(t)
	// The unrelated process, in a cgroup outside cgroup_parent.
	cg, err := cgroups.New(cgroups.Options{})
	if err != nil {
		t.Skipf("cgroups: %v", err)
	}
	victimPath := fmt.Sprintf("%s-victim-%d", cgPrefix, seq.Add(1))
	victimGroup, err := cg.Create(victimPath, cgroups.Resources{})
	if err != nil {
		t.Fatal(err)
	}
	victim := exec.Command(vcoredBin, append([]string{"exec-in-cgroup"}, procsArgs(victimGroup)...)...)
	victim.Args = append(victim.Args, "--", "sleep", "1000")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		victim.Process.Kill()
		victim.Wait()
		if err := victimGroup.Delete(); err != nil {
			t.Errorf("victim cgroup: %v", err)
		}
	})
	eventually(t, 10*time.Second, "victim in its cgroup", func() (bool, string) {
		pids, _ := victimGroup.Procs()
		return len(pids) == 1 && pids[0] == victim.Process.Pid, fmt.Sprint(pids)
	})

	cpu := strconv.Itoa(c.partitionCPU)
	ledger := fmt.Sprintf(`{"version": 1, "leases": [
{"node": 0, "cpus": %q, "holder": "/run/escape.sock", "cgroup": %q, "state": "live"},
{"node": 7, "cpus": %q, "holder": "/run/node7.sock", "cgroup": "%s/node7"},
{"node": 0, "cpus": "99", "holder": "/run/cpu99.sock", "cgroup": "%s/node0-cpu99"},
{"node": 0, "cpus": %q, "holder": "/run/good.sock", "cgroup": "%s/node0", "state": "live"}
]}`, cpu, victimPath, cpu, c.cgroup, c.cgroup, cpu, c.cgroup)
	if err := os.MkdirAll(c.path("core-state"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.path("core-state/ledger.json"), []byte(ledger), 0o600); err != nil {
		t.Fatal(err)
	}
	core := c.startCore(strings.Replace(c.coreConfig(""), `rejoin_grace = "30s"`, `rejoin_grace = "1s"`, 1))
	// The good lease is kept, unconfirmed, then reclaimed after the grace:
	// by then core has acted on every lease it kept.
	eventually(t, 30*time.Second, "the good lease reclaimed", func() (bool, string) {
		return bytes.Contains(core.log.Bytes(), []byte("partition reclaimed and lease freed")), ""
	})
	for _, p := range get[[]api.Partition](t, c.coreSocket(), "/v1/partitions") {
		if p.State != "free" {
			t.Errorf("partition %+v, want every lease gone", p)
		}
	}
	log := core.log.String()
	for _, holder := range []string{"/run/escape.sock", "/run/node7.sock", "/run/cpu99.sock"} {
		if !strings.Contains(log, "dropped") || !strings.Contains(log, holder) {
			t.Errorf("core log does not report %s dropped:\n%s", holder, log)
		}
	}
	if st, err := procStatus(victim.Process.Pid, "State"); err != nil || strings.HasPrefix(st, "Z") {
		t.Errorf("core killed a process outside cgroup_parent: state %q, %v", st, err)
	}
	if pids, err := victimGroup.Procs(); err != nil || len(pids) != 1 {
		t.Errorf("victim cgroup %s: procs %v, %v", victimPath, pids, err)
	}
	if b, err := os.ReadFile(c.path("core-state/ledger.json.rejected")); err != nil || !bytes.Contains(b, []byte(victimPath)) {
		t.Errorf("rejected ledger not kept: %v", err)
	}
}

func procsArgs(g *cgroups.Group) []string {
	var out []string
	for _, f := range g.ProcsFiles() {
		out = append(out, "--procs", f)
	}
	return out
}
