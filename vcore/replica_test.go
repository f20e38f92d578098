package vcore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/vcore/client"
)

// TestHelperReplicaWorker is not a test: a worker that waits for
// $VCORED_TEST_WAIT (if set), attaches the core-owned dataspaces "shared"
// and "rw", checks every page and writes "ok" or the error to
// $VCORED_TEST_RESULT.
func TestHelperReplicaWorker(t *testing.T) {
	if os.Getenv(helperEnv) != "replica-worker" {
		t.Skip("helper process")
	}
	err := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if w := os.Getenv("VCORED_TEST_WAIT"); w != "" {
			if err := awaitFile(ctx, w); err != nil {
				return err
			}
		}
		for _, name := range []string{"shared", "rw"} {
			m, err := client.Attach(ctx, name, int(hw.MiB))
			if err != nil {
				return err
			}
			if err := content.VerifyPattern(m.Bytes(), sharedSeed, 0); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			// Write to the private copy: the next worker must still see
			// the dataspace's content.
			m.Bytes()[0] ^= 0xff
			if err := m.Close(); err != nil {
				return err
			}
		}
		return nil
	}()
	writeHelperResult(t, err)
}

// awaitFile polls until path exists or ctx ends (a helper worker's gate).
func awaitFile(ctx context.Context, path string) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeHelperResult writes "ok" or err to $VCORED_TEST_RESULT (a helper
// worker's answer to its test).
func writeHelperResult(t *testing.T, err error) {
	msg := "ok"
	if err != nil {
		msg = err.Error()
	}
	if werr := os.WriteFile(os.Getenv("VCORED_TEST_RESULT"), []byte(msg), 0o644); werr != nil {
		t.Fatal(werr)
	}
}

// checkHelperResult waits for a helper worker's result file and fails the
// test unless it says "ok".
func checkHelperResult(t *testing.T, path string) {
	t.Helper()
	waitFor(t, "the worker's result "+filepath.Base(path), func() bool { _, err := os.Stat(path); return err == nil })
	if b, err := os.ReadFile(path); err != nil || string(b) != "ok" {
		t.Fatalf("%s: %q %v", filepath.Base(path), b, err)
	}
}

// TestReplicaServesSecondWorker: the first worker's faults on a core-owned
// read-only dataspace are forwarded; a second worker of the same vcore
// gets the same pages from the vcore's replica, without a forward, with
// the dataspace's content. A writable dataspace is forwarded both times.
func TestReplicaServesSecondWorker(t *testing.T) {
	e := newTestEnv(t)
	e.core.set(func(fc *fakeCore) {
		fc.coreContent["shared"] = content.Pattern(sharedSeed)
		fc.coreContent["rw"] = content.Pattern(sharedSeed)
		fc.grant.Dataspaces = []wire.DataspaceInfo{
			{Name: "shared", Size: uint64(hw.MiB), Content: wire.ContentPattern, Seed: sharedSeed},
			{Name: "rw", Size: uint64(hw.MiB), Content: wire.ContentPattern, Seed: sharedSeed, Writable: true},
		}
	})
	first, second := filepath.Join(e.dir, "first.result"), filepath.Join(e.dir, "second.result")
	sub := func(name, result, wait string) string {
		return fmt.Sprintf(`
[[subsystem]]
name = %q
command = [%q, "-test.run=^TestHelperReplicaWorker$", "-test.count=1"]
memory = "64MiB"
restart = "never"
dataspaces = ["shared", "rw"]
env = { %s = "replica-worker", VCORED_TEST_RESULT = %q, VCORED_TEST_WAIT = %q }
`, name, os.Args[0], helperEnv, result, wait)
	}
	cfg := e.config(t, "replica_budget = \"4MiB\"\n"+sub("first", first, "")+sub("second", second, first))
	e.startVCore(t, cfg)
	for _, r := range []string{first, second} {
		checkHelperResult(t, r)
	}
	var p api.Pager
	if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/pager", &p); err != nil {
		t.Fatal(err)
	}
	stats := map[string]api.DataspaceStats{}
	for _, d := range p.Dataspaces {
		stats[d.Dataspace] = d
	}
	pages := uint64(hw.MiB) / uint64(os.Getpagesize())
	_, _, _, _, forwards, _ := e.core.snapshot()
	sh, rw := stats["shared"], stats["rw"]
	t.Logf("core resolved %d forwards; shared: %+v; rw: %+v", forwards, sh, rw)
	if sh.Replicated < pages || sh.Forwarded < pages || sh.Forwarded >= 2*pages {
		t.Errorf("shared: %d forwarded, %d from the replica; want the first worker's %d pages forwarded, the second's from the replica",
			sh.Forwarded, sh.Replicated, pages)
	}
	if rw.Replicated != 0 || rw.Forwarded < 2*pages {
		t.Errorf("writable rw: %d forwarded, %d from the replica; want both workers' %d pages forwarded", rw.Forwarded, rw.Replicated, pages)
	}
}
