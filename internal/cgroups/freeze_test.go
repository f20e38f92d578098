package cgroups

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// A fake v2 group whose kernel never reports "frozen 1": Freeze gives up at
// the deadline with ErrFreezeTimeout and leaves the group thawed.
func TestFakeV2FreezeTimeoutThaws(t *testing.T) {
	m := fakeV2(t)
	g, err := m.Create("vcored/s", Resources{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(m.Root(), "vcored/s")
	writeFiles(t, dir, map[string]string{"cgroup.freeze": "0\n", "cgroup.events": "populated 1\nfrozen 0\n"})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err = g.Freeze(ctx)
	if !errors.Is(err, ErrFreezeTimeout) {
		t.Fatalf("Freeze = %v, want ErrFreezeTimeout", err)
	}
	if got := readFile(t, filepath.Join(dir, "cgroup.freeze")); got != "0" {
		t.Errorf("cgroup.freeze = %q after a failed freeze, want 0", got)
	}
	// The kernel says frozen: Freeze returns, Frozen agrees, Thaw writes 0.
	writeFiles(t, dir, map[string]string{"cgroup.events": "populated 1\nfrozen 1\n"})
	if err := g.Freeze(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dir, "cgroup.freeze")); got != "1" {
		t.Errorf("cgroup.freeze = %q, want 1", got)
	}
	if f, err := g.Frozen(); err != nil || !f {
		t.Errorf("Frozen = %v, %v", f, err)
	}
	// A kernel without the key is a clear error, not a hang.
	writeFiles(t, dir, map[string]string{"cgroup.events": "populated 1\n"})
	if _, err := g.Frozen(); err == nil {
		t.Error("Frozen without a frozen key: no error")
	}
}

// TestFakeV1FreezeNoHierarchy: no freezer mount is a clear error and makes
// no directory.
func TestFakeV1FreezeNoHierarchy(t *testing.T) {
	m := fakeV1(t)
	g, err := m.Create("vcored/s", Resources{})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Freeze(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Freeze without a freezer hierarchy = %v, want ErrUnavailable", err)
	}
	if _, err := os.Stat(filepath.Join(m.Root(), "freezer")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("freezer directory made: %v", err)
	}
}

// growing reports whether file grows within d.
func growing(t *testing.T, file string, d time.Duration) bool {
	t.Helper()
	size := func() int64 {
		st, err := os.Stat(file)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	before := size()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if size() > before {
			return true
		}
	}
	return false
}

// freezeRoundTrip runs a shell loop that forks a sleep and appends to a
// file every 20ms; frozen, the file stops growing; thawed, it grows again.
func freezeRoundTrip(t *testing.T, m *Manager, path string) {
	g, err := m.Create(path, Resources{})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "ticks")
	startJoined(t, g, "sh", "-c", "while :; do echo x >> "+out+"; sleep 0.02; done")
	t.Cleanup(func() { _ = g.Thaw(context.Background()) }) // before the kill
	if !growing(t, out, 30*time.Second) {
		t.Fatal("the loop never ran")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	began, err := g.FreezeStart(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if t1 := time.Now(); began.Before(t0) || began.After(t1) {
		t.Errorf("FreezeStart: the freeze began at %v, outside the call [%v, %v]", began, t0, t1)
	}
	if f, err := g.Frozen(); err != nil || !f {
		t.Fatalf("Frozen = %v, %v after Freeze", f, err)
	}
	if !m.unified() {
		pids, _ := g.Procs()
		in, err := freezerProcs(g.freezerDir())
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(in)
		if !slices.Equal(pids, in) {
			t.Errorf("group processes %v, freezer holds %v", pids, in)
		}
	}
	// A frozen loop writes nothing (it writes every 20ms when running).
	if growing(t, out, 500*time.Millisecond) {
		t.Fatal("the file grew while the group was frozen")
	}
	if err := g.Freeze(ctx); err != nil { // twice: fine
		t.Fatal(err)
	}
	if err := g.Thaw(ctx); err != nil {
		t.Fatal(err)
	}
	if f, err := g.Frozen(); err != nil || f {
		t.Fatalf("Frozen = %v, %v after Thaw", f, err)
	}
	if !growing(t, out, 30*time.Second) {
		t.Fatal("the loop did not run again after Thaw")
	}
	if !m.unified() {
		if _, err := os.Stat(g.freezerDir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("freezer directory left after Thaw: %v", err)
		}
	}
	if err := g.Thaw(ctx); err != nil { // twice: fine
		t.Fatal(err)
	}
}

func TestRealFreezeThaw(t *testing.T) {
	m, top := realManager(t)
	if m.unified() {
		freezeRoundTrip(t, m, top+"/f/s")
		return
	}
	if _, err := os.Stat(filepath.Join(m.Root(), "freezer", "cgroup.procs")); err != nil {
		t.Skipf("no v1 freezer hierarchy: %v", err)
	}
	freezeRoundTrip(t, m, top+"/f/s")
}

func TestRealV2FreezeThaw(t *testing.T) {
	m, top := unifiedManager(t)
	freezeRoundTrip(t, m, top+"/f/s")
}
