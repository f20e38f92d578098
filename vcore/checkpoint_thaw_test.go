package vcore

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/ckpt"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/vcore/client"
)

// ckptThawPages is the size of the persistent dataspace of the
// checkpoint-timing tests, in pages.
const ckptThawPages = 64

// TestHelperCkptWorker is a worker of a subsystem (re-exec'd test binary):
// it attaches the persistent dataspace "mem", then carries out the
// commands $VCORED_TEST_CKPT_DIR/do-1, do-2, …, in order: each line "PAGE
// SEED" fills that page with Pattern(SEED); after each file it writes
// done-K. It runs until stopped.
func TestHelperCkptWorker(t *testing.T) {
	if os.Getenv(helperEnv) != "ckptworker" {
		t.Skip("helper process")
	}
	dir := os.Getenv("VCORED_TEST_CKPT_DIR")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ps := os.Getpagesize()
	m, err := client.Attach(ctx, "mem", ckptThawPages*ps)
	if err != nil {
		os.WriteFile(filepath.Join(dir, "error"), []byte(err.Error()), 0o644)
		t.Fatal(err)
	}
	mem := m.Bytes()
	for k := 1; ; k++ {
		var b []byte
		for {
			if b, err = os.ReadFile(filepath.Join(dir, fmt.Sprintf("do-%d", k))); err == nil {
				break
			}
			time.Sleep(time.Millisecond)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			var p int
			var seed uint64
			if _, err := fmt.Sscanf(l, "%d %d", &p, &seed); err != nil || p < 0 || p >= ckptThawPages {
				os.WriteFile(filepath.Join(dir, "error"), fmt.Appendf(nil, "bad command %q: %v", l, err), 0o644)
				t.Fatalf("bad command %q", l)
			}
			content.Pattern(seed).Fill(mem[p*ps:(p+1)*ps], uint64(p*ps))
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("done-%d", k)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// ckptWorker drives TestHelperCkptWorker.
type ckptWorker struct {
	dir string
	k   int
}

// write has the worker fill pages (page → seed) and waits until it has.
// A worker that cannot run (frozen) makes it fail after a long wait.
func (w *ckptWorker) write(t *testing.T, pages map[int]uint64) bool {
	t.Helper()
	w.k++
	var b strings.Builder
	for p, seed := range pages {
		fmt.Fprintf(&b, "%d %d\n", p, seed)
	}
	name := filepath.Join(w.dir, fmt.Sprintf("do-%d", w.k))
	if err := os.WriteFile(name+".tmp", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(name+".tmp", name); err != nil {
		t.Fatal(err)
	}
	done := filepath.Join(w.dir, fmt.Sprintf("done-%d", w.k))
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if _, err := os.Stat(done); err == nil {
			return true
		}
		if msg, err := os.ReadFile(filepath.Join(w.dir, "error")); err == nil {
			t.Errorf("worker: %s", msg)
			return false
		}
	}
	t.Errorf("the worker did not carry out command %d in 60s (not running?)", w.k)
	return false
}

// checkImage checks every page of the image in dir against want (page →
// seed; pages not in want hold seed 1).
func checkImage(t *testing.T, dir string, want map[int]uint64, when string) {
	t.Helper()
	rd, err := ckpt.OpenReader(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	ps := os.Getpagesize()
	got := make([]byte, ps)
	exp := make([]byte, ps)
	for p := range ckptThawPages {
		seed, ok := want[p]
		if !ok {
			seed = 1
		}
		if err := rd.Fill(got, uint64(p*ps)); err != nil {
			t.Fatalf("%s: page %d: %v", when, p, err)
		}
		content.Pattern(seed).Fill(exp, uint64(p*ps))
		if !bytes.Equal(got, exp) {
			found := "neither"
			for s := range uint64(5) {
				content.Pattern(s).Fill(exp, uint64(p*ps))
				if bytes.Equal(got, exp) {
					found = fmt.Sprint(s)
				}
			}
			t.Errorf("%s: page %d of the image holds seed %s, want %d", when, p, found, seed)
		}
	}
}

// TestCheckpointCopiesBeforeThaw: a checkpoint is the worker's memory at
// the freeze, whatever the worker writes while it is taken. A page written
// after the pre-copy (while the worker still runs) is in the layer with
// the value it had at the freeze; a page written right after the thaw,
// while the layer is still being written and committed, is not in it (the
// layer has the old value) and is in the next checkpoint, not lost. For
// async (PAGEMAP_SCAN) and sync (WP faults) tracking, with the written
// pages copied into memory, with the pre-copy fitting the buffer but not
// the frozen copy, and with nothing fitting (written to the layer file
// while frozen).
func TestCheckpointCopiesBeforeThaw(t *testing.T) {
	const page = 4096
	for _, tc := range []struct {
		name   string
		sync   bool
		buffer int64
		// frozen: the pages copied while frozen, first and second
		// checkpoint; staged: written to the file while frozen.
		frozen1, frozen2 int
		staged           bool
	}{
		{"async", false, checkpointBuffer, 0, 2, false},
		{"async-precopy-only", false, 2 * page, ckptThawPages, 3, true},
		{"async-no-buffer", false, 0, ckptThawPages, 3, true},
		{"sync", true, checkpointBuffer, 0, 2, false},
		{"sync-no-buffer", true, 0, ckptThawPages, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if os.Getpagesize() != page {
				t.Skip("the buffer sizes assume 4 KiB pages")
			}
			if !tc.sync && !linux.HaveWPAsync() {
				t.Skip("kernel lacks async write protection (Linux 6.7)")
			}
			if tc.sync {
				t.Setenv("VCORED_SYNC_WRITE_TRACKING", "1")
			}
			old := checkpointBuffer
			checkpointBuffer = tc.buffer
			t.Cleanup(func() {
				checkpointBuffer = old
				checkpointPreCopiedHook, checkpointThawedHook = nil, nil
			})
			e := newTestEnv(t)
			w := &ckptWorker{dir: filepath.Join(e.dir, "worker")}
			if err := os.Mkdir(w.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			cfg := e.config(t, fmt.Sprintf(`
[[subsystem]]
name = "ck"
command = [%q, "-test.run=^TestHelperCkptWorker$", "-test.count=1"]
memory = "128MiB"
restart = "never"
env = { %s = "ckptworker", VCORED_TEST_CKPT_DIR = %q }

[[subsystem.dataspace]]
name = "mem"
size = "%dKiB"
persistent = true
`, os.Args[0], helperEnv, w.dir, ckptThawPages*page/1024))
			r := e.startVCore(t, cfg)
			ctx := context.Background()
			all := map[int]uint64{}
			for p := range ckptThawPages {
				all[p] = 1
			}
			if !w.write(t, all) {
				t.FailNow()
			}
			p := persistentOf(r.v.subByName("ck"), "mem")
			var tracker ckpt.Tracker
			waitFor(t, "the attachment", func() bool {
				p.attMu.Lock()
				defer p.attMu.Unlock()
				if p.att != nil {
					tracker = p.att.tr
				}
				return tracker != nil
			})
			if _, isSync := tracker.(*pagerTracker); isSync != tc.sync {
				t.Fatalf("tracker %T, want sync %v", tracker, tc.sync)
			}
			check := func(res api.CheckpointResult, err error, pages, frozen int, staged bool, when string) string {
				t.Helper()
				if err != nil {
					t.Fatalf("%s: %v", when, err)
				}
				if len(res.Dataspaces) != 1 {
					t.Fatalf("%s: %+v", when, res)
				}
				d := res.Dataspaces[0]
				if d.Pages != pages || d.CopiedFrozen != frozen || d.WrittenFrozen != staged {
					t.Errorf("%s: %d pages, %d copied frozen, written frozen %v; want %d, %d, %v",
						when, d.Pages, d.CopiedFrozen, d.WrittenFrozen, pages, frozen, staged)
				}
				if res.FrozenNS <= 0 || res.TotalNS < res.FrozenNS {
					t.Errorf("%s: frozen %d ns, total %d ns", when, res.FrozenNS, res.TotalNS)
				}
				return d.Image
			}

			res, err := r.v.Checkpoint(ctx, "ck")
			img := check(res, err, ckptThawPages, tc.frozen1, tc.staged, "checkpoint 1")
			checkImage(t, img, nil, "checkpoint 1")

			// Epoch 2: pages 3 and 10 written before the checkpoint; 10
			// again and 20 between its pre-copy and its freeze; 3 and 30
			// right after its thaw, before its layer is written.
			if !w.write(t, map[int]uint64{3: 2, 10: 2}) {
				t.FailNow()
			}
			checkpointPreCopiedHook = func() { w.write(t, map[int]uint64{10: 3, 20: 3}) }
			checkpointThawedHook = func() { w.write(t, map[int]uint64{3: 4, 30: 4}) }
			res, err = r.v.Checkpoint(ctx, "ck")
			checkpointPreCopiedHook, checkpointThawedHook = nil, nil
			check(res, err, 3, tc.frozen2, tc.staged, "checkpoint 2")
			checkImage(t, img, map[int]uint64{3: 2, 10: 3, 20: 3}, "checkpoint 2")

			// The writes after the thaw are the next checkpoint.
			res, err = r.v.Checkpoint(ctx, "ck")
			frozen3 := 0
			if tc.buffer == 0 {
				frozen3 = 2
			}
			check(res, err, 2, frozen3, tc.buffer == 0, "checkpoint 3")
			checkImage(t, img, map[int]uint64{3: 4, 10: 3, 20: 3, 30: 4}, "checkpoint 3")
			res, err = r.v.Checkpoint(ctx, "ck")
			check(res, err, 0, 0, false, "checkpoint 4")
		})
	}
}

// TestHelperCkptVCore runs a vcore in a re-exec'd test binary (as
// TestHelperVCore), so that a test can kill -9 it in the middle of a
// checkpoint: when $VCORED_TEST_CKPT_HOOK/arm exists, a checkpoint writes
// $VCORED_TEST_CKPT_HOOK/thawed after its thaw and then waits forever,
// before writing its layers.
func TestHelperCkptVCore(t *testing.T) {
	if os.Getenv(helperEnv) != "ckptvcore" {
		t.Skip("helper process")
	}
	cfg, err := config.LoadVCore(os.Getenv("VCORED_TEST_CONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("VCORED_TEST_CKPT_HOOK")
	checkpointThawedHook = func() {
		if _, err := os.Stat(filepath.Join(dir, "arm")); err != nil {
			return
		}
		os.WriteFile(filepath.Join(dir, "thawed"), nil, 0o644)
		select {} // until killed
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

// TestCheckpointVCoreKilledBeforeCommit: the vcore is killed (kill -9)
// after a checkpoint thawed the worker and before it wrote and committed
// the layer. The image holds the previous checkpoint, whole, and the
// worker runs on (it is not left frozen). Async tracking: with the vcore
// gone nobody serves a sync write-protect fault here (core would, after a
// failover).
func TestCheckpointVCoreKilledBeforeCommit(t *testing.T) {
	if !linux.HaveWPAsync() {
		t.Skip("kernel lacks async write protection (Linux 6.7)")
	}
	e := newTestEnv(t)
	w := &ckptWorker{dir: filepath.Join(e.dir, "worker")}
	hook := filepath.Join(e.dir, "hook")
	for _, d := range []string{w.dir, hook} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := e.config(t, fmt.Sprintf(`
[[subsystem]]
name = "ck"
command = [%q, "-test.run=^TestHelperCkptWorker$", "-test.count=1"]
memory = "128MiB"
restart = "never"
env = { %s = "ckptworker", VCORED_TEST_CKPT_DIR = %q }

[[subsystem.dataspace]]
name = "mem"
size = "%dKiB"
persistent = true
`, os.Args[0], helperEnv, w.dir, ckptThawPages*os.Getpagesize()/1024))
	logf, err := os.Create(filepath.Join(e.dir, "vcore.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	vc := exec.Command(os.Args[0], "-test.run=^TestHelperCkptVCore$", "-test.count=1", "-test.v")
	vc.Env = append(os.Environ(), helperEnv+"=ckptvcore", "VCORED_TEST_CONFIG="+filepath.Join(e.dir, "node0.toml"),
		"VCORED_TEST_CKPT_HOOK="+hook)
	vc.Stdout, vc.Stderr = logf, logf
	if err := vc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if vc.ProcessState == nil {
			vc.Process.Kill()
			vc.Wait()
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("vcore log:\n%s", b)
		}
	})
	waitFor(t, "the vcore socket", func() bool { _, err := os.Stat(cfg.Socket); return err == nil })
	all := map[int]uint64{}
	for p := range ckptThawPages {
		all[p] = 1
	}
	if !w.write(t, all) {
		t.FailNow()
	}
	var s api.Subsystem
	waitFor(t, "ck running", func() bool {
		s = subsystemStatus(t, cfg.Socket, "ck")
		return s.State == "running" && len(s.Pids) == 1
	})
	pid := s.Pids[0]
	t.Cleanup(func() {
		// A worker left frozen could not die: thaw it first.
		if g, err := e.cg.Load(e.partition + "/ck"); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := g.Thaw(ctx); err != nil {
				t.Error(err)
			}
		}
		syscall.Kill(pid, syscall.SIGKILL)
		waitFor(t, "the worker to die", func() bool { return !alive(pid) })
	})
	ckpt1 := func() (api.CheckpointResult, error) {
		var res api.CheckpointResult
		err := api.NewClient(cfg.Socket).Post(context.Background(), "/v1/subsystems/ck/checkpoint", &res)
		return res, err
	}
	res, err := ckpt1()
	if err != nil || len(res.Dataspaces) != 1 || res.Dataspaces[0].Pages != ckptThawPages {
		t.Fatalf("first checkpoint: %+v, %v", res, err)
	}
	img := res.Dataspaces[0].Image

	if !w.write(t, map[int]uint64{3: 2, 10: 2}) {
		t.FailNow()
	}
	if err := os.WriteFile(filepath.Join(hook, "arm"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	answered := make(chan error, 1)
	go func() {
		_, err := ckpt1()
		answered <- err
	}()
	waitFor(t, "the second checkpoint's thaw", func() bool {
		_, err := os.Stat(filepath.Join(hook, "thawed"))
		return err == nil
	})
	vc.Process.Kill()
	vc.Wait()
	if err := <-answered; err == nil {
		t.Fatal("the interrupted checkpoint reported success")
	}
	// The previous checkpoint, whole.
	im, err := ckpt.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	if n := im.Layers(); n != 1 {
		t.Errorf("%d layers after the interrupted checkpoint, want the first one alone", n)
	}
	checkImage(t, img, nil, "after the kill")
	// The worker was thawed before the kill: it carries out a command.
	if !w.write(t, map[int]uint64{5: 3}) {
		t.Fatal("the worker does not run after its vcore was killed in a checkpoint")
	}
}
