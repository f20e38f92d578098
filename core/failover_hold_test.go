package core

import (
	"errors"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

var sinkByte byte

// TestFailoverHoldsUnknownFault: a vcore dies before core learnt of a
// region its worker uses (the RegionAdd died with it). While core serves
// the orphaned partition, the worker's fault there is not killed after the
// usual grace: it waits for a vcore to re-claim the partition, and core
// hands it over with the uffd; the new vcore (which gets the region from
// the reconnecting worker) serves it. Before, core gave the live worker
// SIGBUS after UnknownGrace (2 s) whenever the restart took longer.
func TestFailoverHoldsUnknownFault(t *testing.T) {
	if have, _ := linux.UffdFeatures(); have&linux.UFFD_FEATURE_POISON == 0 {
		t.Skip("no UFFDIO_POISON on this kernel: the fallback (tgkill) would kill the test binary")
	}
	const grace = 100 * time.Millisecond
	c := testCore(t)
	pg, err := pager.New(pager.Options{Threads: 1, UnknownGrace: grace, Forward: func(pager.Fault) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	c.pg = pg
	c.cfg = &config.Core{OrphanGrace: time.Hour}
	c.ledger, _, err = OpenLedger(filepath.Join(t.TempDir(), "ledger.json"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	const holder = "/run/v.sock"
	if _, _, err := c.ledger.Grant(Claim{Node: 0, CPUs: hw.MustParse[hw.CPU]("1"), Holder: holder, Pid: 10}); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	mem, addr, u := workerMemory(t, 4*ps)
	ts := newTestSession(t, holder)
	const id = 1<<32 | 5
	c.send(t, ts, &wire.UffdAdd{UffdID: id, WorkerPid: 0}, dupFD(t, u))
	// The dead vcore registered the range; its RegionAdd never left.
	if _, err := u.Register(uintptr(addr), uintptr(len(mem)), linux.UFFDIO_REGISTER_MODE_MISSING); err != nil {
		t.Fatal(err)
	}
	// Before the munmap (which would wait for a reader of its UNMAP event)
	// and whatever happened: unregistered, a blocked fault falls through.
	t.Cleanup(func() { u.Unregister(uintptr(addr), uintptr(len(mem))) })
	c.endSession(ts.s)

	touched := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			if r := recover(); r != nil {
				touched <- errors.New("SIGBUS")
			}
		}()
		sinkByte += mem[ps]
		touched <- nil
	}()
	deadline := time.Now().Add(30 * time.Second)
	for pg.ParkedFaults() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the fault was not parked by core")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case err := <-touched:
		t.Fatalf("during failover the worker's fault ended (%v) after less than %v, %d times the grace: a live worker killed because its vcore restarts", err, 20*grace, 20)
	case <-time.After(20 * grace):
	}

	// A vcore re-claims the partition: core hands the uffd back, and the
	// parked fault with it. The new vcore's pager learns the region (from
	// the worker's re-sent Attach) and serves it.
	ts2 := newTestSession(t, holder)
	c.mu.Lock()
	c.sessions[holder] = ts2.s
	c.mu.Unlock()
	c.takeBack(ts2.s)
	ts2.peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := ts2.peer.Recv()
	if err != nil || f.Type != wire.TypeTakeBack || len(f.FDs) != 1 {
		t.Fatalf("TakeBack: %v %v (%d fds)", f.Type, err, len(f.FDs))
	}
	vpg, err := pager.New(pager.Options{Threads: 1, UnknownGrace: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer vpg.Close()
	if err := vpg.AddUffd(id, linux.NewUffd(f.FDs[0]), 0, true); err != nil {
		t.Fatal(err)
	}
	if err := vpg.AddRegion(id, pager.Region{Start: uintptr(addr), Length: uintptr(len(mem)), Dataspace: "d", Content: content.Pattern(3)}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-touched:
		if err != nil {
			t.Fatalf("after the take-back: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handed-over fault is still pending after 30s")
	}
	if err := content.VerifyPattern(mem[ps:2*ps], 3, uint64(ps)); err != nil {
		t.Fatal(err)
	}
}
