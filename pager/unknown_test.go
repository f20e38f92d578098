package pager_test

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// registerBehindPagersBack registers r on the uffd p holds as id without
// telling p: a range the kernel raises faults for but no region describes
// (a worker that registered memory itself, a region removed from the table).
func registerBehindPagersBack(t *testing.T, p *pager.Pager, id uint64, start, length uintptr) {
	t.Helper()
	d, err := p.Uffd(id)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.Register(start, length, linux.UFFDIO_REGISTER_MODE_MISSING); err != nil {
		t.Fatal(err)
	}
}

// TestUnknownFaultSIGBUS: a worker touching registered memory that is in no
// region gets SIGBUS once the grace is over — it neither hangs nor gets a
// silent zero page. The worker (a helper process) dies of it; the known
// region next to it was served.
func TestUnknownFaultSIGBUS(t *testing.T) {
	for _, noPoison := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoPoison=%v", noPoison), func(t *testing.T) { testUnknownFaultSIGBUS(t, noPoison) })
	}
}

func testUnknownFaultSIGBUS(t *testing.T, noPoison bool) {
	needUffd(t)
	p := newPager(t, pager.Options{UnknownGrace: 200 * time.Millisecond, NoPoison: noPoison})
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 4, Seed: 3}, {Pages: 4, Seed: 4}}})
	if err := p.AddUffd(1, w.uffd, w.pid, true); err != nil {
		w.uffd = nil
		w.kill()
		t.Fatal(err)
	}
	w.uffd = nil
	regs := w.regions("ds", false)
	if err := p.AddRegion(1, regs[0]); err != nil {
		w.kill()
		t.Fatal(err)
	}
	registerBehindPagersBack(t, p, 1, regs[1].Start, regs[1].Length)
	w.start()
	start := time.Now()
	err := w.result(workerTimeout)
	if err == nil {
		t.Fatal("the worker read memory no region backs and reported ok")
	}
	ws := w.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		t.Fatalf("the worker hung on a fault outside every region (killed after %v): %v", time.Since(start), err)
	}
	t.Logf("worker ended after %v: %v (%v)", time.Since(start).Round(time.Millisecond), err, w.cmd.ProcessState)
	st := p.Stats()
	if st["ds0"].Pages != 4 {
		t.Errorf("known region: %+v, want its 4 pages served", st["ds0"])
	}
	if st[pager.UnknownDataspace].Errors == 0 {
		t.Errorf("the fault outside every region was not counted: %+v", st)
	}
}

// TestUnknownFaultInProcess: with UFFDIO_POISON (6.6+) the faulting access
// itself gets SIGBUS (recoverable here with SetPanicOnFault), at the
// faulting address.
func TestUnknownFaultInProcess(t *testing.T) {
	needUffd(t)
	if have, _ := linux.UffdFeatures(); have&linux.UFFD_FEATURE_POISON == 0 {
		t.Skip("no UFFDIO_POISON on this kernel: the fallback (tgkill) would kill the test binary; TestUnknownFaultSIGBUS covers it")
	}
	p := newPager(t, pager.Options{UnknownGrace: 100 * time.Millisecond})
	mem := uffdMapping(t, p, 4, true)
	defer linux.Munmap(mem)
	registerBehindPagersBack(t, p, 1, addrOf(mem), uintptr(len(mem)))
	got := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			r := recover()
			if err, ok := r.(error); ok {
				got <- err
				return
			}
			got <- errors.New("no fault")
		}()
		sink += mem[linux.PageSize()]
	}()
	select {
	case err := <-got:
		var ae interface{ Addr() uintptr }
		want := addrOf(mem) + uintptr(linux.PageSize())
		if !errors.As(err, &ae) || ae.Addr() != want {
			t.Fatalf("touch: %v (%T), want a fault at %#x", err, err, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a fault outside every region is still pending after 30s")
	}
}

// TestUnknownFaultServedWhenRegionArrives: a fault read before its region
// was added is parked, and AddRegion wakes it: the worker gets the region's
// content (a worker re-sending its regions after a reconnect, a RegionAdd
// still in flight to core).
func TestUnknownFaultServedWhenRegionArrives(t *testing.T) {
	needUffd(t)
	p := newPager(t, pager.Options{UnknownGrace: time.Minute})
	// Without async preemption the Go worker's thread, blocked in the fault,
	// is not interrupted by SIGURG (which re-raises a pending fault): only
	// the pager can wake it.
	t.Setenv("GODEBUG", "asyncpreemptoff=1")
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 8, Seed: 5}}})
	if err := p.AddUffd(1, w.uffd, w.pid, true); err != nil {
		w.uffd = nil
		w.kill()
		t.Fatal(err)
	}
	w.uffd = nil
	r := w.regions("late", false)[0]
	registerBehindPagersBack(t, p, 1, r.Start, r.Length)
	w.start()
	deadline := time.Now().Add(30 * time.Second)
	for p.ParkedFaults() == 0 {
		if time.Now().After(deadline) {
			w.kill()
			t.Fatal("the fault was not parked")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.AddRegion(1, r); err != nil {
		w.kill()
		t.Fatal(err)
	}
	if err := w.result(workerTimeout); err != nil {
		t.Fatalf("worker: %v", err)
	}
	if st := p.Stats()["late0"]; st.Pages != 8 {
		t.Errorf("late region: %+v, want 8 pages served", st)
	}
}

// TestOverlapNamesExisting: the overlap error names the registered range
// the new one collides with.
func TestOverlapNamesExisting(t *testing.T) {
	needUffd(t)
	p := newPager(t, pager.Options{})
	mem := uffdMapping(t, p, 8, true)
	defer linux.Munmap(mem)
	ps := uintptr(linux.PageSize())
	a := addrOf(mem)
	if err := p.AddRegion(1, pager.Region{Start: a, Length: 4 * ps, Dataspace: "first", Content: content.Zero()}); err != nil {
		t.Fatal(err)
	}
	err := p.AddRegion(1, pager.Region{Start: a + 2*ps, Length: 4 * ps, Dataspace: "second", Content: content.Zero()})
	if !errors.Is(err, pager.ErrOverlap) || !strings.Contains(err.Error(), `"first"`) || !strings.Contains(err.Error(), "registered") {
		t.Fatalf("overlap: %v, want ErrOverlap naming the registered region \"first\"", err)
	}
}

// TestUnknownFaultHeld: while its uffd is held (HoldUnknown: taken over
// from a dead holder, the worker's client not reconnected yet) a fault
// outside every region outlives Options.UnknownGrace many times over and is
// served when its region arrives; a shortened hold (the worker reconnected)
// settles what is still parked: SIGBUS, never a wait forever.
func TestUnknownFaultHeld(t *testing.T) {
	needUffd(t)
	const grace = 100 * time.Millisecond
	p := newPager(t, pager.Options{UnknownGrace: grace})
	t.Setenv("GODEBUG", "asyncpreemptoff=1") // only the pager wakes the fault (see above)
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 4, Seed: 5}}})
	if err := p.AddUffd(1, w.uffd, w.pid, true); err != nil {
		w.uffd = nil
		w.kill()
		t.Fatal(err)
	}
	w.uffd = nil
	if err := p.HoldUnknown(1, time.Now().Add(time.Hour)); err != nil {
		w.kill()
		t.Fatal(err)
	}
	r := w.regions("late", false)[0]
	registerBehindPagersBack(t, p, 1, r.Start, r.Length)
	w.start()
	deadline := time.Now().Add(30 * time.Second)
	for p.ParkedFaults() == 0 {
		if time.Now().After(deadline) {
			w.kill()
			t.Fatal("the fault was not parked")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(10 * grace)
	if p.ParkedFaults() == 0 || w.cmd.ProcessState != nil || !linux.ProcessLive(w.pid) {
		w.kill()
		t.Fatalf("held fault settled after %v (grace %v, held an hour): parked %d", 10*grace, grace, p.ParkedFaults())
	}
	if err := p.AddRegion(1, r); err != nil {
		w.kill()
		t.Fatal(err)
	}
	if err := w.result(workerTimeout); err != nil {
		t.Fatalf("worker: %v", err)
	}
	if st := p.Stats()["late0"]; st.Pages != 4 {
		t.Errorf("late region: %+v, want 4 pages served", st)
	}
}

// TestUnknownFaultHoldShortened: a hold is bounded and may be cut short:
// the parked fault gets SIGBUS once the hold is lifted (no region came).
func TestUnknownFaultHoldShortened(t *testing.T) {
	needUffd(t)
	p := newPager(t, pager.Options{UnknownGrace: 100 * time.Millisecond})
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 4, Seed: 3}}})
	if err := p.AddUffd(1, w.uffd, w.pid, true); err != nil {
		w.uffd = nil
		w.kill()
		t.Fatal(err)
	}
	w.uffd = nil
	if err := p.HoldUnknown(1, time.Now().Add(time.Hour)); err != nil {
		w.kill()
		t.Fatal(err)
	}
	r := w.regions("ds", false)[0]
	registerBehindPagersBack(t, p, 1, r.Start, r.Length)
	w.start()
	deadline := time.Now().Add(30 * time.Second)
	for p.ParkedFaults() == 0 {
		if time.Now().After(deadline) {
			w.kill()
			t.Fatal("the fault was not parked")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.HoldUnknown(1, time.Now()); err != nil {
		w.kill()
		t.Fatal(err)
	}
	err := w.result(workerTimeout)
	if err == nil {
		t.Fatal("the worker read memory no region backs and reported ok")
	}
	if ws := w.cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		t.Fatalf("the fault stayed parked after its hold was lifted: %v", err)
	}
	if p.ParkedFaults() != 0 {
		t.Errorf("%d faults still parked", p.ParkedFaults())
	}
}

// TestFailUnmappedRangeSignalsNobody: failing an address whose mapping is
// gone (a late refusal from core for a region the worker unmapped since)
// signals no thread. UFFDIO_POISON answers ENOENT there; the pager used to
// fall back to tgkill, which sent SIGBUS to a thread that was elsewhere —
// here the test binary itself, which it killed.
func TestFailUnmappedRangeSignalsNobody(t *testing.T) {
	needUffd(t)
	if have, _ := linux.UffdFeatures(); have&linux.UFFD_FEATURE_POISON == 0 {
		// Without UFFDIO_POISON (before 6.6) the pager cannot tell an
		// unmapped range from a live one and signals the thread; the
		// vcore's own check (TestStaleForwardFailureSparesNewMapping)
		// keeps a late refusal from getting here.
		t.Skip("no UFFDIO_POISON on this kernel: the fallback (tgkill) would kill the test binary")
	}
	p := newPager(t, pager.Options{})
	mem, err := linux.Mmap(4*linux.PageSize(), linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	u, err := linux.OpenUffd()
	if err != nil {
		linux.Munmap(mem)
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, syscall.Getpid(), true); err != nil {
		linux.Munmap(mem)
		t.Fatal(err)
	}
	if err := p.AddRegion(1, pager.Region{Start: addrOf(mem), Length: uintptr(len(mem)), Dataspace: "gone", Content: content.Zero()}); err != nil {
		linux.Munmap(mem)
		t.Fatal(err)
	}
	addr := addrOf(mem) + uintptr(linux.PageSize())
	if err := linux.Munmap(mem); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := p.Fail(1, addr, uint32(syscall.Gettid()), "test: a late refusal"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a signal sent would have killed the binary by now
}
