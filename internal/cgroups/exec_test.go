package cgroups

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestRealJoinAndExecClosesFDs: whatever the shim's caller leaves open
// without close-on-exec (here fd 3, handed to the shim on purpose) does not
// reach the command the shim execs: it has only 0, 1 and 2.
func TestRealJoinAndExecClosesFDs(t *testing.T) {
	m, top := realManager(t)
	g, err := m.Create(top+"/fds", Resources{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if tg, err := m.Load(top); err == nil {
			_ = tg.Delete()
		}
	})
	lock, err := os.Create(filepath.Join(t.TempDir(), "lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	cmd := startJoinedWith(t, g, []*os.File{lock}, "sleep", "100")
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 3 || names[0] != "0" || names[1] != "1" || names[2] != "2" {
		t.Errorf("the exec'ed command has fds %v, want only 0, 1, 2", names)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}
