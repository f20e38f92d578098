package vcore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

// lateReattachDelay is how long after touching its memory the late worker
// re-attaches: longer than the grace of a fault outside every region
// (pager.DefaultUnknownGrace), well within pager.ReconnectGrace.
const lateReattachDelay = pager.DefaultUnknownGrace + time.Second

// TestHelperLateReattach is a worker of a subsystem (re-exec'd test
// binary) speaking the protocol itself, to choose when it reconnects: it
// attaches "data" (4 pages, pattern seed 5), writes $DIR/attached, waits
// for $DIR/go, then touches and verifies every page while another thread
// waits lateReattachDelay and re-attaches the same range, with the same
// uffd, to whatever vcore answers now. It writes "ok" (or what went wrong,
// "SIGBUS ..." included) to $DIR/result.
func TestHelperLateReattach(t *testing.T) {
	if os.Getenv(helperEnv) != "late-reattach" {
		t.Skip("helper process")
	}
	dir := os.Getenv("VCORED_TEST_DIR")
	msg := "ok"
	if err := runLateReattach(dir); err != nil {
		msg = err.Error()
	}
	if err := os.WriteFile(filepath.Join(dir, "result"), []byte(msg), 0o644); err != nil {
		t.Fatal(err)
	}
}

func runLateReattach(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	u, err := linux.OpenUffd()
	if err != nil {
		return err
	}
	ps := os.Getpagesize()
	mem, err := linux.Mmap(4*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_ANONYMOUS|linux.MAP_NORESERVE)
	if err != nil {
		return err
	}
	att := &wire.Attach{Name: "data", Addr: uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem)))), Length: uint64(len(mem))}
	attach := func() error {
		c, err := hello(os.Getenv("VCORE_SOCKET"))
		if err != nil {
			return err
		}
		_, err = attachAnswer(c, att, u.FD())
		// The connection may stay open or not: the vcore serves the
		// uffd either way.
		return err
	}
	if err := attach(); err != nil {
		return fmt.Errorf("first attach: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "attached"), nil, 0o644); err != nil {
		return err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go")); err == nil {
			break
		}
		if ctx.Err() != nil {
			return errors.New("no go")
		}
		time.Sleep(10 * time.Millisecond)
	}
	reattached := make(chan error, 1)
	go func() {
		time.Sleep(lateReattachDelay)
		reattached <- attach()
	}()
	verified := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if r := recover(); r != nil {
				verified <- fmt.Errorf("SIGBUS (the vcore gave up on the fault): %v", r)
			}
		}()
		verified <- content.VerifyPattern(mem, 5, 0)
	}()
	if err := <-verified; err != nil {
		return err
	}
	if err := <-reattached; err != nil {
		return fmt.Errorf("late re-attach: %w", err)
	}
	return nil
}

// TestTakenBackUffdWaitsForReconnect: a vcore killed with SIGKILL before
// core learnt of a worker's region (the RegionAdd died in its queue) leaves
// core a uffd without that region; the restarted vcore takes it back
// without it. The worker's fault there must wait for its client to
// reconnect and re-send the mapping — the client redials with a backoff of
// up to 2 s, later than the usual 2 s grace of a fault outside every
// region — and then be served with the right page. Before, the vcore gave
// the live worker SIGBUS 2 s after the fault (the soak's failure).
func TestTakenBackUffdWaitsForReconnect(t *testing.T) {
	e := newTestEnv(t)
	if _, err := linux.OpenUffd(); err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	cfg := e.config(t, fmt.Sprintf(`
[[subsystem]]
name = "w"
command = [%q, "-test.run=^TestHelperLateReattach$", "-test.count=1"]
memory = "64MiB"
restart = "never"
env = { %s = "late-reattach", VCORED_TEST_DIR = %q }

[[subsystem.dataspace]]
name = "data"
size = "1MiB"
content = "pattern"
seed = 5
`, os.Args[0], helperEnv, e.dir))
	path := filepath.Join(e.dir, "node0.toml")
	a := startHelperVCore(t, path, "vcore-a.log")
	waitFor(t, "the worker to attach", func() bool { _, err := os.Stat(filepath.Join(e.dir, "attached")); return err == nil })
	var add wire.UffdAdd
	waitFor(t, "core to hold the worker's uffd", func() bool {
		_, adds, _, _, _, _ := e.core.snapshot()
		if len(adds) == 1 {
			add = adds[0]
		}
		return len(adds) == 1
	})
	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.Wait()

	// Core hands the uffd back without the region (as when the vcore died
	// before its RegionAdd left).
	dup, err := e.core.pgr.Uffd(add.UffdID)
	if err != nil {
		t.Fatal(err)
	}
	defer dup.Close()
	e.core.set(func(fc *fakeCore) {
		fc.takeBacks = []takeBackItem{{fd: dup.FD(), msg: wire.TakeBack{UffdID: add.UffdID, WorkerPid: add.WorkerPid}}}
	})
	startHelperVCore(t, path, "vcore-b.log")
	waitFor(t, "the new vcore to take the uffd back", func() bool {
		var p api.Pager
		if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/pager", &p); err != nil {
			return false
		}
		return p.Uffds == 1
	})
	tookBack := time.Now()
	if err := os.WriteFile(filepath.Join(e.dir, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	result := filepath.Join(e.dir, "result")
	waitFor(t, "the worker's result", func() bool { _, err := os.Stat(result); return err == nil })
	b, err := os.ReadFile(result)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "ok" {
		if late := time.Since(tookBack); late > pager.ReconnectGrace {
			// The worker re-attached after the bounded hold (a machine
			// far slower than lateReattachDelay assumes): SIGBUS is right.
			t.Skipf("the worker re-attached %v after the take-back, beyond ReconnectGrace %v: %s", late, pager.ReconnectGrace, b)
		}
		t.Fatalf("worker: %s", b)
	}
}
