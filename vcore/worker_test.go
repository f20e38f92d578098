package vcore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/statefile"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/vcore/client"
)

// Seeds of the patterned dataspaces the worker test verifies.
const (
	localSeed  = 7
	sharedSeed = 99
)

// TestHelperWorker is a worker of a subsystem (re-exec'd test binary): it
// attaches a local and a core-owned patterned dataspace, reads and verifies
// every page, checks that the quota refuses an attach too many, and writes
// "ok" (or what went wrong) to $VCORED_TEST_RESULT.
func TestHelperWorker(t *testing.T) {
	if os.Getenv(helperEnv) != "worker" {
		t.Skip("helper process")
	}
	err := runTestWorker()
	msg := "ok"
	if err != nil {
		msg = err.Error()
	}
	if werr := os.WriteFile(os.Getenv("VCORED_TEST_RESULT"), []byte(msg), 0o644); werr != nil {
		t.Fatal(werr)
	}
}

func runTestWorker() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	local, err := client.Attach(ctx, "data", int(hw.MiB))
	if err != nil {
		return err
	}
	if err := content.VerifyPattern(local.Bytes(), localSeed, 0); err != nil {
		return fmt.Errorf("local dataspace: %w", err)
	}
	seq, err := client.Attach(ctx, "seq", int(hw.MiB))
	if err != nil {
		return err
	}
	if err := content.VerifyPattern(seq.Bytes(), localSeed+1, 0); err != nil {
		return fmt.Errorf("prefetched local dataspace: %w", err)
	}
	shared, err := client.Attach(ctx, "shared", int(hw.MiB), client.WithContent("pattern", sharedSeed))
	if err != nil {
		return err
	}
	if err := content.VerifyPattern(shared.Bytes(), sharedSeed, 0); err != nil {
		return fmt.Errorf("core-owned dataspace: %w", err)
	}
	big, err := client.Attach(ctx, "big", int(600*hw.MiB))
	if err != nil {
		return fmt.Errorf("first attach of big: %w", err)
	}
	_, err = client.Attach(ctx, "big", int(600*hw.MiB))
	var ae *wire.AttachErr
	if !errors.As(err, &ae) || !strings.Contains(ae.Msg, "over quota") || !strings.Contains(ae.Msg, `subsystem "work"`) {
		return fmt.Errorf("second attach of big: %v, want a quota refusal naming the subsystem", err)
	}
	if _, err := client.Attach(ctx, "nosuch", int(hw.MiB)); !errors.As(err, &ae) || ae.Code != wire.CodeNotFound {
		return fmt.Errorf("attach of an unknown dataspace: %v, want not-found", err)
	}
	for _, m := range []*client.Mapping{big, shared, seq, local} {
		if err := m.Close(); err != nil {
			return err
		}
	}
	return nil
}

func TestWorkerServedLocallyAndForwarded(t *testing.T) {
	testWorker(t, wire.PagerLocal)
}

// In central mode the vcore registers the ranges but core serves every
// fault with its dup; the vcore's pager serves none.
func TestWorkerServedCentrally(t *testing.T) {
	testWorker(t, wire.PagerCentral)
}

func testWorker(t *testing.T, mode wire.PagerMode) {
	e := newTestEnv(t)
	e.core.set(func(fc *fakeCore) {
		fc.grant.Pager = mode
		fc.coreContent["shared"] = content.Pattern(sharedSeed)
	})
	central := mode == wire.PagerCentral
	result := filepath.Join(e.dir, "worker.result")
	cfg := e.config(t, fmt.Sprintf(`
[[subsystem]]
name = "work"
command = [%q, "-test.run=^TestHelperWorker$", "-test.count=1"]
memory = "1GiB"
restart = "never"
dataspaces = ["shared"]
env = { %s = "worker", VCORED_TEST_RESULT = %q }

[[subsystem.dataspace]]
name = "data"
size = "1MiB"
content = "pattern"
seed = %d

[[subsystem.dataspace]]
name = "seq"
size = "1MiB"
content = "pattern"
seed = %d
prefetch = "sequential"

[[subsystem.dataspace]]
name = "big"
size = "600MiB"
`, os.Args[0], helperEnv, result, localSeed, localSeed+1))
	e.startVCore(t, cfg)
	waitFor(t, "the worker's result", func() bool { _, err := os.Stat(result); return err == nil })
	b, err := os.ReadFile(result)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "ok" {
		t.Fatalf("worker: %s", b)
	}
	var s api.Subsystem
	waitFor(t, "the worker to exit", func() bool {
		s = subsystemStatus(t, cfg.Socket, "work")
		return s.State == "exited"
	})

	// Core got a dup of the worker's uffd and every region registered.
	_, adds, regions, _, forwards, _ := e.core.snapshot()
	if len(adds) != 1 {
		t.Fatalf("core got %d UffdAdd, want 1: %+v", len(adds), adds)
	}
	id, pid := adds[0].UffdID, adds[0].WorkerPid
	if id>>32 != uint64(pid) || adds[0].Serve != central {
		t.Errorf("UffdAdd = %+v: id must carry the worker pid, serve must be %v in %s mode", adds[0], central, mode)
	}
	var names []string
	for _, r := range regions {
		if r.UffdID != id {
			t.Errorf("RegionAdd for uffd %d, want %d", r.UffdID, id)
		}
		names = append(names, r.Region.Dataspace)
		switch r.Region.Dataspace {
		case "data":
			if r.Region.Forward || r.Region.Subsystem != "work" || r.Region.Length != uint64(hw.MiB) {
				t.Errorf("local region = %+v", r.Region)
			}
		case "shared":
			if !r.Region.Forward {
				t.Errorf("core-owned region not forwarded: %+v", r.Region)
			}
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"big", "data", "seq", "shared"}) {
		t.Errorf("regions told to core: %v, want big, data, seq, shared", names)
	}
	pages := uint64(hw.MiB) / uint64(os.Getpagesize())
	if !central && forwards < int(pages) {
		t.Errorf("core resolved %d forwarded faults, want at least %d", forwards, pages)
	}
	if central && forwards != 0 {
		t.Errorf("core got %d forwarded faults in central mode, want 0 (it serves them itself)", forwards)
	}

	// The local faults were served here, the core-owned ones forwarded.
	var p api.Pager
	if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/pager", &p); err != nil {
		t.Fatal(err)
	}
	stats := map[string]api.DataspaceStats{}
	for _, d := range p.Dataspaces {
		stats[d.Dataspace] = d
	}
	// pager_placement defaults to auto: on a one-CPU partition it says
	// same-cpu without measuring; else it measured both (local mode).
	switch {
	case e.part.Len() == 1 && (p.Placement != "same-cpu" || !strings.Contains(p.PlacementReason, "one CPU")):
		t.Errorf("placement on the one-CPU partition %s: %q (%q), want same-cpu saying why", e.part, p.Placement, p.PlacementReason)
	case e.part.Len() > 1 && !central && !strings.Contains(p.PlacementReason, "measured"):
		t.Errorf("placement on partition %s: %q (%q), want auto's measurement", e.part, p.Placement, p.PlacementReason)
	}
	if central {
		for _, d := range p.Dataspaces {
			if d.Faults != 0 || d.Forwarded != 0 {
				t.Errorf("the vcore's pager served faults in central mode: %+v", d)
			}
		}
	} else {
		// Prefetch is off by default: a fault per page.
		if d := stats["data"]; d.Pages != pages || d.Faults < pages || d.Prefetched != 0 || d.Forwarded != 0 || d.Errors != 0 {
			t.Errorf("pager stats of data = %+v, want %d pages served here, one fault each", d, pages)
		}
		// prefetch = "sequential": the worker's sequential scan (its
		// content check) takes far fewer faults than pages.
		if d := stats["seq"]; d.Pages != pages || d.Faults > pages/4 || d.Errors != 0 {
			t.Errorf("pager stats of seq = %+v, want %d pages served here, most mapped ahead of the scan", d, pages)
		}
		if d := stats["shared"]; d.Forwarded < pages || d.ForwardMedianNs <= 0 {
			t.Errorf("pager stats of shared = %+v, want %d forwarded with a latency", d, pages)
		}
	}

	// The worker is gone: its uffd was dropped, core told, the quota freed.
	waitFor(t, "UffdRemove", func() bool {
		_, _, _, removes, _, _ := e.core.snapshot()
		return slices.Contains(removes, id)
	})
	if s := subsystemStatus(t, cfg.Socket, "work"); s.QuotaUsedBytes != 0 {
		t.Errorf("quota used after the worker left: %d", s.QuotaUsedBytes)
	}
}

// TestHelperVCore runs `vcored vcore` in a re-exec'd test binary, so a test
// can kill -9 it: the config comes from $VCORED_TEST_CONFIG, SIGTERM stops
// it.
func TestHelperVCore(t *testing.T) {
	if os.Getenv(helperEnv) != "vcore" {
		t.Skip("helper process")
	}
	cfg, err := config.LoadVCore(os.Getenv("VCORED_TEST_CONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := New(Options{Config: cfg, Shim: os.Args[0], Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := v.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// startHelperVCore starts TestHelperVCore with the vcore file at path.
func startHelperVCore(t *testing.T, path, logName string) *exec.Cmd {
	t.Helper()
	out, err := os.Create(filepath.Join(filepath.Dir(path), logName))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperVCore$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=vcore", "VCORED_TEST_CONFIG="+path)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("%s:\n%s", logName, b)
		}
	})
	return cmd
}

func TestKilledVCoreIsReadopted(t *testing.T) {
	e := newTestEnv(t)
	cfg := e.config(t, sleeperSubsystem)
	path := filepath.Join(e.dir, "node0.toml")
	a := startHelperVCore(t, path, "vcore-a.log")
	waitFor(t, "the vcore socket", func() bool { _, err := os.Stat(cfg.Socket); return err == nil })
	s := waitRunning(t, cfg.Socket, "sleeper")
	pid := s.Pids[0]
	// The daemon itself runs on its partition.
	if got := procStatus(t, a.Process.Pid, "Cpus_allowed_list"); got != e.part.String() {
		t.Errorf("vcore Cpus_allowed_list = %q, want %q", got, e.part)
	}

	waitFor(t, "the state file to list the pid", func() bool {
		var st stateFile
		_, err := statefile.Read(filepath.Join(cfg.StateDir, "vcore.json"), &st)
		return err == nil && len(st.Subsystems) == 1 && slices.Equal(st.Subsystems[0].Pids, []int{pid})
	})
	a.Process.Kill()
	a.Wait()
	time.Sleep(100 * time.Millisecond)
	if !alive(pid) {
		t.Fatalf("subsystem pid %d died with its vcore", pid)
	}

	b := startHelperVCore(t, path, "vcore-b.log")
	waitFor(t, "the new vcore to adopt the subsystem", func() bool {
		st, err := os.Stat(cfg.Socket)
		if err != nil || st.Mode()&os.ModeSocket == 0 {
			return false
		}
		var subs []api.Subsystem
		if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/subsystems", &subs); err != nil {
			return false
		}
		s = subs[0]
		return s.Adopted
	})
	if s.State != "running" || !slices.Equal(s.Pids, []int{pid}) {
		t.Errorf("adopted subsystem = %+v, want running with pid %d", s, pid)
	}
	e.assertPinned(t, pid, e.partition+"/sleeper", 32*hw.MiB)

	b.Process.Signal(syscall.SIGTERM)
	if err := b.Wait(); err != nil {
		t.Errorf("vcore B after SIGTERM: %v", err)
	}
	waitFor(t, "the adopted subsystem to be stopped", func() bool { return !alive(pid) })
	if e.cg.Exists(e.partition + "/sleeper") {
		t.Error("subsystem cgroup left behind")
	}
	claims, _, _, _, _, releases := e.core.snapshot()
	if len(claims) != 2 || releases != 1 {
		t.Fatalf("core saw %d claims and %d releases, want 2 and 1", len(claims), releases)
	}
	// The second vcore re-registered what it found running.
	if subs := claims[1].Subsystems; len(subs) != 1 || subs[0].Name != "sleeper" || !slices.Equal(subs[0].Pids, []int{pid}) || subs[0].CPUs.String() != e.part.String() {
		t.Errorf("re-claim's subsystems = %+v, want sleeper with pid %d", subs, pid)
	}
	if len(claims[0].Subsystems) != 0 {
		t.Errorf("first claim carried subsystems: %+v", claims[0].Subsystems)
	}
}

func TestCoreRestartReRegisters(t *testing.T) {
	e := newTestEnv(t)
	cfg := e.config(t, sleeperSubsystem)
	e.startVCore(t, cfg)
	pid := waitRunning(t, cfg.Socket, "sleeper").Pids[0]
	connected := func() bool {
		var info api.Info
		if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/info", &info); err != nil {
			t.Fatal(err)
		}
		return *info.CoreConnected
	}

	// core dies: the subsystem is untouched, the vcore notices.
	var grant wire.ClaimOK
	e.core.set(func(fc *fakeCore) { grant = fc.grant })
	e.core.stop()
	waitFor(t, "the vcore to notice core is gone", func() bool { return !connected() })
	if s := subsystemStatus(t, cfg.Socket, "sleeper"); s.State != "running" || !slices.Equal(s.Pids, []int{pid}) {
		t.Fatalf("subsystem after core died: %+v, want running pid %d", s, pid)
	}

	// A new core on the same socket: the vcore re-registers with its
	// subsystems' state.
	core2 := newFakeCoreAt(t, cfg.CoreSocket, grant)
	waitFor(t, "the vcore to re-register", connected)
	claims, _, _, _, _, _ := core2.snapshot()
	if len(claims) != 1 {
		t.Fatalf("new core got %d claims, want 1", len(claims))
	}
	subs := claims[0].Subsystems
	if len(subs) != 1 || subs[0].Name != "sleeper" || subs[0].Cgroup != e.partition+"/sleeper" || !slices.Equal(subs[0].Pids, []int{pid}) || subs[0].Memory != uint64(32*hw.MiB) {
		t.Errorf("re-registering claim's subsystems = %+v", subs)
	}
	if !alive(pid) {
		t.Error("subsystem died across the core restart")
	}
}

// A uffd core served for a dead predecessor is taken back: the vcore adopts
// it and serves its region (here the test process plays the worker).
func TestTakeBack(t *testing.T) {
	e := newTestEnv(t)
	const seed = 5
	ps := os.Getpagesize()
	length := 16 * ps
	mem, err := linux.Mmap(length, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	u, err := linux.OpenUffd()
	if err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	defer u.Close()
	addr := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
	id := uint64(os.Getpid())<<32 | 7
	e.core.set(func(fc *fakeCore) {
		fc.takeBacks = []takeBackItem{{fd: u.FD(), msg: wire.TakeBack{UffdID: id, WorkerPid: os.Getpid(), Regions: []wire.Region{
			{Start: addr, Length: uint64(length), Dataspace: "data", Subsystem: "keeper"},
		}}}}
	})
	// The region names subsystem keeper's local dataspace: no content
	// travels with it, the vcore's own configuration says what it holds.
	cfg := e.config(t, `
[[subsystem]]
name = "keeper"
command = ["sleep", "infinity"]
memory = "32MiB"
[[subsystem.dataspace]]
name = "data"
size = "1MiB"
content = "pattern"
seed = 5
`)
	e.startVCore(t, cfg)
	waitFor(t, "the uffd to be taken back", func() bool {
		var p api.Pager
		if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/pager", &p); err != nil {
			t.Fatal(err)
		}
		return p.Uffds == 1 && p.TrackedPages == 16
	})
	if err := content.VerifyPattern(mem, seed, 0); err != nil {
		t.Fatalf("taken-back region: %v", err)
	}
	var p api.Pager
	if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/pager", &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Dataspaces) != 1 || p.Dataspaces[0].Dataspace != "data" || p.Dataspaces[0].Pages != 16 {
		t.Errorf("pager stats = %+v, want 16 pages of data served by the vcore", p.Dataspaces)
	}
}
