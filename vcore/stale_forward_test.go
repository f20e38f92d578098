package vcore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/vcore/client"
)

// TestHelperStaleWorker is not a test: a worker that touches the first page
// of the core-owned dataspace "shared" (forwarded), detaches it, attaches it
// again, waits for $VCORED_TEST_WAIT, then checks every page of the new
// mapping and writes "ok" or the error to $VCORED_TEST_RESULT.
func TestHelperStaleWorker(t *testing.T) {
	if os.Getenv(helperEnv) != "stale-worker" {
		t.Skip("helper process")
	}
	err := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		m, err := client.Attach(ctx, "shared", int(hw.MiB))
		if err != nil {
			return err
		}
		if err := content.VerifyPattern(m.Bytes()[:os.Getpagesize()], sharedSeed, 0); err != nil {
			return fmt.Errorf("first mapping: %w", err)
		}
		if err := m.Close(); err != nil {
			return err
		}
		m2, err := client.Attach(ctx, "shared", int(hw.MiB))
		if err != nil {
			return err
		}
		defer m2.Close()
		if err := awaitFile(ctx, os.Getenv("VCORED_TEST_WAIT")); err != nil {
			return err
		}
		if err := content.VerifyPattern(m2.Bytes(), sharedSeed, 0); err != nil {
			return fmt.Errorf("second mapping: %w", err)
		}
		return nil
	}()
	writeHelperResult(t, err)
}

// TestStaleForwardFailureSparesNewMapping is the regression test of a
// worker killed by SIGBUS in the 4-node guest (TestReplicaFileContent):
// core answered a late Forward — the page's fault raised twice, the second
// read after the worker had detached the region — with EIO, and the vcore
// failed the address: UFFDIO_POISON of whatever was mapped there by then
// (the worker's next mapping of the dataspace) or, with the range unmapped,
// SIGBUS by tgkill to a thread that was elsewhere. The fake core answers
// the first Forward only after the region's RegionRemove and the next
// attach's RegionAdd over it, with EIO; the worker must read every page of
// its new mapping and exit normally.
func TestStaleForwardFailureSparesNewMapping(t *testing.T) {
	e := newTestEnv(t)
	e.core.set(func(fc *fakeCore) {
		fc.coreContent["shared"] = content.Pattern(sharedSeed)
		fc.grant.Dataspaces = []wire.DataspaceInfo{{Name: "shared", Size: uint64(hw.MiB), Content: wire.ContentPattern, Seed: sharedSeed}}
		fc.staleAnswer = true
	})
	result, goFile := filepath.Join(e.dir, "worker.result"), filepath.Join(e.dir, "go")
	r := e.startVCore(t, e.config(t, fmt.Sprintf(`
[[subsystem]]
name = "stale"
command = [%q, "-test.run=^TestHelperStaleWorker$", "-test.count=1"]
memory = "64MiB"
restart = "never"
dataspaces = ["shared"]
env = { %s = "stale-worker", VCORED_TEST_RESULT = %q, VCORED_TEST_WAIT = %q }
`, os.Args[0], helperEnv, result, goFile)))
	var seq uint64
	waitFor(t, "the late answer to the first Forward", func() bool {
		e.core.mu.Lock()
		defer e.core.mu.Unlock()
		seq = e.core.staleSent
		return seq != 0
	})
	waitFor(t, "the vcore to take the late answer", func() bool {
		r.v.fwdMu.Lock()
		defer r.v.fwdMu.Unlock()
		_, pending := r.v.pending[seq]
		return !pending
	})
	// The old vcore poisoned the page (or signalled the worker) right
	// after forgetting the forward; give it the moment it needs.
	time.Sleep(100 * time.Millisecond)
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	checkHelperResult(t, result)
}
