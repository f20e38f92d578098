package pager_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/vcored/vcored/pager"
)

// TestTryForward: each fault of a Forward region is offered to TryForward
// first, on the pager thread; the ones it takes never reach Forward, the
// ones it declines are queued for Forward. Either way the fault is
// resolved (here by a second pager, as core does) and counted forwarded.
func TestTryForward(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	var (
		resolver          *pager.Pager
		mu                sync.Mutex
		errs              []error
		tried, took, sent int
	)
	resolve := func(f pager.Fault) {
		if err := resolver.Resolve(f.Uffd, f.Addr); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	local := newPager(t, pager.Options{
		TryForward: func(f pager.Fault) bool {
			mu.Lock()
			tried++
			take := tried%2 == 0 // every other one
			if take {
				took++
			}
			mu.Unlock()
			if take {
				go resolve(f) // must not block the pager thread
			}
			return take
		},
		Forward: func(f pager.Fault) {
			mu.Lock()
			sent++
			mu.Unlock()
			resolve(f)
		},
	})
	resolver = newPager(t, pager.Options{})
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 16, Seed: 4}}})
	dup, err := w.uffd.Dup()
	if err != nil {
		t.Fatal(err)
	}
	if err := local.AddUffd(5, w.uffd, w.pid, true); err != nil {
		t.Fatal(err)
	}
	w.uffd = nil
	if err := resolver.AddUffd(5, dup, w.pid, false); err != nil {
		t.Fatal(err)
	}
	for _, r := range w.regions("ds", true) {
		if err := local.AddRegion(5, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range w.regions("ds", false) {
		if err := resolver.AddRegion(5, r); err != nil {
			t.Fatal(err)
		}
	}
	w.start()
	if err := w.result(workerTimeout); err != nil {
		t.Fatalf("worker: %v", err)
	}
	local.Close() // the forwarder has called Forward for all it queued
	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	ls := local.Stats()["ds0"]
	if tried < 16 || took == 0 || sent != tried-took || int(ls.Forwarded) != tried {
		t.Fatalf("TryForward offered %d faults and took %d, Forward got %d, %d counted forwarded; want >= 16 offered, the declined ones (and only those) to Forward, all counted",
			tried, took, sent, ls.Forwarded)
	}
}
