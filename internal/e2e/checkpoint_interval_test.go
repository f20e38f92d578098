package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCheckpointInterval: with checkpoint_interval = "1s" the vcore
// checkpoints a subsystem by itself. Nobody calls `vcored checkpoint`:
// after the worker's two rounds of writes, periodic checkpoints store
// them, and the worker killed and restarted finds every page as it left it.
func TestCheckpointInterval(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	dir := c.path("ckpt-helper")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sub := fmt.Sprintf(`
[[subsystem]]
name = "p"
command = [%q, "-test.run=^TestCkptHelperProcess$", "-test.count=1"]
memory = "160MiB"
restart = "on-failure"
backoff_initial = "100ms"
checkpoint_interval = "1s"
env = { %s = %q, VCORED_BIN = %q }
[[subsystem.dataspace]]
name = "mem"
size = "8MiB"
persistent = true
`, os.Args[0], ckptHelperEnv, dir, vcoredBin)
	vc := c.startVCore(0, c.vcoreConfig(0, sub))
	sock := c.vcoreSocket(0)
	wait := func(name string) {
		eventually(t, 60*time.Second, "helper file "+name, func() (bool, string) {
			_, err := os.Stat(filepath.Join(dir, name))
			return err == nil, fmt.Sprint(err)
		})
	}
	checkpoints := func() int {
		n := 0
		for l := range strings.Lines(vc.log.String()) {
			if strings.Contains(l, "msg=checkpoint ") && strings.Contains(l, " subsystem=p ") {
				n++
			}
		}
		return n
	}
	wait("written1")
	touchFile(t, filepath.Join(dir, "go2"))
	wait("written2")
	// Two more periodic checkpoints: the second began after written2, so
	// it (or the one before) holds the rewritten pages.
	n := checkpoints()
	eventually(t, 120*time.Second, "two periodic checkpoints after the writes", func() (bool, string) {
		return checkpoints() >= n+2, fmt.Sprintf("%d checkpoints logged, %d at the writes", checkpoints(), n)
	})
	if strings.Contains(vc.log.String(), "periodic checkpoint failed") {
		t.Errorf("a periodic checkpoint failed:\n%s", vc.log)
	}

	touchFile(t, filepath.Join(dir, "verify"))
	s, ok := subsystem(t, sock, "p")
	if !ok || len(s.Pids) == 0 {
		t.Fatalf("subsystem p: %+v", s)
	}
	old := s.Pids[0]
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var v ckptVerdict
	eventually(t, 120*time.Second, "the restarted worker's verdict", func() (bool, string) {
		ents, _ := filepath.Glob(filepath.Join(dir, "verdict-*.json"))
		for _, e := range ents {
			if b, err := os.ReadFile(e); err == nil && json.Unmarshal(b, &v) == nil {
				return true, ""
			}
		}
		return false, fmt.Sprint(ents)
	})
	if v.Error != "" || v.Pages != ckptPages || v.Pid == old {
		t.Fatalf("restored worker (pid %d, was %d): verified %d of %d pages: %s", v.Pid, old, v.Pages, ckptPages, v.Error)
	}
}
