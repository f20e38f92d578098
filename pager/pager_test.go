package pager_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

const workerTimeout = 60 * time.Second

func newPager(t *testing.T, opts pager.Options) *pager.Pager {
	t.Helper()
	p, err := pager.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// serveWorker adds w's uffd and regions to p (serving) and runs the worker.
func serveWorker(t *testing.T, p *pager.Pager, w *testWorker, id uint64) error {
	t.Helper()
	if err := p.AddUffd(id, w.uffd, w.pid, true); err != nil {
		w.uffd = nil
		w.kill()
		t.Fatal(err)
	}
	w.uffd = nil // p owns it
	for _, r := range w.regions("ds", false) {
		if err := p.AddRegion(id, r); err != nil {
			w.kill()
			t.Fatal(err)
		}
	}
	w.start()
	return w.result(workerTimeout)
}

func TestServeZeroAndPattern(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	p := newPager(t, pager.Options{})
	w := startWorker(t, workerSpec{Regions: []workerRegion{
		{Pages: 64, Zero: true},
		{Pages: 64, Seed: 42},
		{Pages: 3, Seed: 43},
	}})
	if err := serveWorker(t, p, w, 7); err != nil {
		t.Fatalf("worker: %v", err)
	}
	st := p.Stats()
	for ds, want := range map[string]uint64{"ds0": 64, "ds1": 64, "ds2": 3} {
		s := st[ds]
		// Exactly want pages mapped; at least want faults (a woken thread
		// whose page is not mapped yet may fault twice), one latency each.
		if s.Faults < want || s.Pages != want || s.Errors != 0 || s.LatencyHistogram().Count() != int64(s.Faults) {
			t.Errorf("%s: faults %d pages %d errors %d latencies %d, want %d pages, >= %d faults, one latency per fault",
				ds, s.Faults, s.Pages, s.Errors, s.Latency.Count, want, want)
		}
	}
	if _, ok := st[pager.UnknownDataspace]; ok {
		t.Errorf("unknown faults: %+v", st[pager.UnknownDataspace])
	}
	t.Logf("pattern resolve latency: median %d ns, p99 %d ns", st["ds1"].LatencyHistogram().Quantile(0.5), st["ds1"].LatencyHistogram().Quantile(0.99))
	// The worker exited: its pidfd removes the uffd.
	waitFor(t, "uffd removed after the worker's exit", func() bool { return len(p.Uffds()) == 0 })
}

func TestFaultAround16(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	p := newPager(t, pager.Options{FaultAround: 16})
	w := startWorker(t, workerSpec{Regions: []workerRegion{
		{Pages: 256, Seed: 1},
		{Pages: 37, Seed: 2}, // not a multiple of 16: the last window is clipped
		{Pages: 40, Zero: true},
	}})
	if err := serveWorker(t, p, w, 1); err != nil {
		t.Fatalf("worker: %v", err)
	}
	st := p.Stats()
	for ds, want := range map[string][2]uint64{"ds0": {16, 256}, "ds1": {3, 37}, "ds2": {3, 40}} {
		// A duplicate fault (see TestServeZeroAndPattern) maps nothing more:
		// pages are exact, faults at least the windows.
		if s := st[ds]; s.Faults < want[0] || s.Faults > want[0]+2 || s.Pages != want[1] || s.Errors != 0 {
			t.Errorf("%s: %d faults for %d pages (%d errors), want %d for %d", ds, s.Faults, s.Pages, s.Errors, want[0], want[1])
		}
	}
}

// TestForwardRegion: the serving pager forwards every fault; the resolver
// holds a dup of the uffd without serving it and resolves each forwarded
// fault with Resolve, as core does for core-owned dataspaces.
func TestForwardRegion(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	var (
		resolver *pager.Pager
		mu       sync.Mutex
		errs     []error
		seen     int
	)
	local := newPager(t, pager.Options{Forward: func(f pager.Fault) {
		err := resolver.Resolve(f.Uffd, f.Addr)
		mu.Lock()
		defer mu.Unlock()
		seen++
		if err != nil {
			errs = append(errs, err)
		}
		if f.Dataspace != "ds0" || f.Offset%uint64(linux.PageSize()) != 0 || f.TID == 0 || f.Start.IsZero() {
			errs = append(errs, fmt.Errorf("forwarded fault %+v", f))
		}
	}})
	resolver = newPager(t, pager.Options{FaultAround: 4})
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 32, Seed: 9}}})
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
	mu.Lock()
	defer mu.Unlock()
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	// 32 pages, fault-around 4 on the resolver: 8 faults, each mapping 4
	// pages. A fault may be raised twice (a thread woken before its page is
	// mapped faults again; seen on an 8-CPU guest); the duplicate finds its
	// pages present (EEXIST) and maps nothing more. So: at least 8
	// forwarded, every one resolved, and exactly 32 pages mapped.
	ls, rs := local.Stats()["ds0"], resolver.Stats()["ds0"]
	if ls.Forwarded < 8 || ls.Forwarded != ls.Faults || ls.Pages != 0 || seen != int(ls.Forwarded) {
		t.Errorf("local: %d faults, %d forwarded, %d pages (callback saw %d); want >= 8 faults, all forwarded, no page mapped here",
			ls.Faults, ls.Forwarded, ls.Pages, seen)
	}
	if rs.Faults != ls.Forwarded || rs.Pages != 32 || rs.Latency.Count != int64(rs.Faults) {
		t.Errorf("resolver: %d faults, %d pages, %d latencies; want %d faults (those forwarded), 32 pages, one latency each",
			rs.Faults, rs.Pages, rs.Latency.Count, ls.Forwarded)
	}
}

// TestWorkerExitMidFault: the worker exits while its thread waits on a fault
// nobody resolves; the pidfd removes the uffd, nothing leaks.
func TestWorkerExitMidFault(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	pending := make(chan pager.Fault, 16)
	p := newPager(t, pager.Options{Forward: func(f pager.Fault) { pending <- f }})
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 4, Seed: 1}}, ExitAfter: 300 * time.Millisecond})
	if err := p.AddUffd(3, w.uffd, w.pid, true); err != nil {
		t.Fatal(err)
	}
	w.uffd = nil
	for _, r := range w.regions("ds", true) {
		if err := p.AddRegion(3, r); err != nil {
			t.Fatal(err)
		}
	}
	w.start()
	select {
	case f := <-pending:
		if f.Addr != w.addrs[0] {
			t.Errorf("first fault at %#x, want %#x", f.Addr, w.addrs[0])
		}
	case <-time.After(workerTimeout):
		w.kill()
		t.Fatal("no fault forwarded")
	}
	err := w.cmd.Wait()
	var ee interface{ ExitCode() int }
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("worker exit: %v, want exit status 3", err)
	}
	w.conn.Close()
	waitFor(t, "uffd removed after the worker's exit", func() bool { return len(p.Uffds()) == 0 })
	if err := p.RemoveUffd(3); !errors.Is(err, pager.ErrUnknownUffd) {
		t.Errorf("RemoveUffd after removal: %v", err)
	}
}

func TestManyRegions(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	p := newPager(t, pager.Options{})
	var regions []workerRegion
	for i := range 1000 {
		regions = append(regions, workerRegion{Pages: 1 + i%3, Seed: uint64(i + 1)})
	}
	w := startWorker(t, workerSpec{Regions: regions})
	if err := p.AddUffd(1, w.uffd, w.pid, true); err != nil {
		t.Fatal(err)
	}
	w.uffd = nil
	pages := 0
	for i, r := range w.regions("ds", false) {
		if err := p.AddRegion(1, r); err != nil {
			w.kill()
			t.Fatal(err)
		}
		pages += regions[i].Pages
	}
	if got := p.RegisteredPages(); got != int64(pages) {
		t.Errorf("RegisteredPages = %d, want %d", got, pages)
	}
	tb := p.TrackingBytes()
	t.Logf("tracking: %d bytes for %d pages in 1000 regions (%.1f B/page)", tb, pages, float64(tb)/float64(pages))
	if tb <= 0 {
		t.Errorf("TrackingBytes = %d", tb)
	}
	infos := p.Uffds()
	if len(infos) != 1 || len(infos[0].Regions) != 1000 || infos[0].Pid != w.pid || !infos[0].Serving {
		t.Errorf("Uffds: %d entries", len(infos))
	}
	w.start()
	if err := w.result(workerTimeout); err != nil {
		t.Fatalf("worker: %v", err)
	}
	// The worker verified every page's pattern. Exactly one page is mapped
	// per page; faults are at least one per page, not exactly: a thread
	// woken before its page is mapped may fault again (seen on the 8-CPU
	// guest: 2000 faults for 1999 pages), and the duplicate maps nothing.
	var faults, mapped, errs uint64
	for _, s := range p.Stats() {
		faults += s.Faults
		mapped += s.Pages
		errs += s.Errors
	}
	if mapped != uint64(pages) || faults < uint64(pages) || errs != 0 {
		t.Errorf("%d pages mapped, %d faults, %d errors; want exactly %d pages, >= %d faults, no errors", mapped, faults, errs, pages, pages)
	}
}

// TestTakeover: pager A (another process) serves the worker while this
// process's pager B only holds a dup. A reads a fault and is killed before
// resolving it; B starts serving, which re-raises the lost fault, and the
// worker completes with every page verified (none zero-filled).
func TestTakeover(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	b := newPager(t, pager.Options{FaultAround: 2})
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 32, Seed: 11}, {Pages: 32, Seed: 12}}})
	if err := b.AddUffd(1, w.uffd, w.pid, false); err != nil { // negotiates the API
		t.Fatal(err)
	}
	w.uffd = nil
	for _, r := range w.regions("ds", false) {
		if err := b.AddRegion(1, r); err != nil {
			t.Fatal(err)
		}
	}
	dup, err := b.Uffd(1)
	if err != nil {
		t.Fatal(err)
	}
	ps := uintptr(linux.PageSize())
	// A serves region 0 and "forwards" region 1 into a black hole.
	a, out := startPagerHelper(t, dup, pagerSpec{ID: 1, Pid: w.pid, Regions: []pagerRegion{
		{Start: w.addrs[0], Length: 32 * ps, Seed: 11},
		{Start: w.addrs[1], Length: 32 * ps, Forward: true},
	}})
	w.start()
	if !out.Scan() || !strings.HasPrefix(out.Text(), "pending ") {
		a.Process.Kill()
		a.Wait()
		w.kill()
		t.Fatalf("pager A said %q", out.Text())
	}
	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.Wait()
	if err := b.Serve(1, true); err != nil {
		t.Fatal(err)
	}
	if err := w.result(workerTimeout); err != nil {
		t.Fatalf("worker after takeover: %v", err)
	}
	if s := b.Stats()["ds1"]; s.Pages != 32 || s.Errors != 0 {
		t.Errorf("B resolved %d pages of region 1 (%d errors), want 32", s.Pages, s.Errors)
	}
	if s := b.Stats()["ds0"]; s.Faults != 0 {
		t.Errorf("B resolved %d faults of region 0, which A served", s.Faults)
	}
}

// TestRegionTable covers the bookkeeping errors, in process.
func TestRegionTable(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	p := newPager(t, pager.Options{})
	ps := linux.PageSize()
	mem, err := linux.Mmap(8*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := addrOf(mem)
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, false); err != nil {
		t.Fatal(err)
	}
	u2, _ := linux.OpenUffd()
	if err := p.AddUffd(1, u2, 0, false); !errors.Is(err, pager.ErrDuplicateUffd) {
		t.Errorf("duplicate id: %v", err)
	}
	if u2.FD() != -1 {
		t.Error("AddUffd did not close the refused uffd")
	}
	pat := content.Pattern(1)
	for _, c := range []struct {
		r    pager.Region
		want error
	}{
		{pager.Region{Start: base + 1, Length: uintptr(ps), Content: pat}, pager.ErrBadRegion},
		{pager.Region{Start: base, Length: 0, Content: pat}, pager.ErrBadRegion},
		{pager.Region{Start: base, Length: uintptr(ps)}, pager.ErrBadRegion},                // no content
		{pager.Region{Start: base, Length: uintptr(ps), Forward: true}, pager.ErrBadRegion}, // no Forward func
		{pager.Region{Start: base, Length: uintptr(4 * ps), Content: pat}, nil},
		{pager.Region{Start: base + uintptr(3*ps), Length: uintptr(2 * ps), Content: pat}, pager.ErrOverlap},
		{pager.Region{Start: base + uintptr(4*ps), Length: uintptr(4 * ps), Content: pat, Offset: 1 << 20}, nil},
	} {
		if err := p.AddRegion(1, c.r); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("AddRegion %#x+%#x: %v, want %v", c.r.Start-base, c.r.Length, err, c.want)
		}
	}
	if err := p.AddRegion(2, pager.Region{Start: base, Length: uintptr(ps), Content: pat}); !errors.Is(err, pager.ErrUnknownUffd) {
		t.Errorf("AddRegion on unknown uffd: %v", err)
	}
	// Resolve without serving: content lands, at the region's offset.
	if err := p.Resolve(1, base+uintptr(5*ps)+123); err != nil {
		t.Fatal(err)
	}
	if err := content.VerifyPattern(mem[5*ps:6*ps], 1, 1<<20+uint64(ps)); err != nil {
		t.Error(err)
	}
	if err := p.Resolve(1, base+uintptr(5*ps)); err != nil {
		t.Errorf("Resolve of a present page: %v, want success", err)
	}
	if err := p.Resolve(1, base+uintptr(9*ps)); !errors.Is(err, pager.ErrNoRegion) {
		t.Errorf("Resolve outside regions: %v", err)
	}
	if err := p.RemoveRegion(1, base+uintptr(4*ps)); err != nil {
		t.Fatal(err)
	}
	if err := p.RemoveRegion(1, base+uintptr(4*ps)); !errors.Is(err, pager.ErrNoRegion) {
		t.Errorf("second RemoveRegion: %v", err)
	}
	if err := p.Serve(1, true); err != nil {
		t.Fatal(err)
	}
	if err := p.Serve(1, false); err != nil {
		t.Fatal(err)
	}
	if err := p.Serve(9, true); !errors.Is(err, pager.ErrUnknownUffd) {
		t.Errorf("Serve unknown: %v", err)
	}
	if err := p.RemoveUffd(1); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	u3, _ := linux.OpenUffd()
	if err := p.AddUffd(3, u3, 0, true); !errors.Is(err, pager.ErrClosed) {
		t.Errorf("AddUffd after Close: %v", err)
	}
}

// TestUnmapEvent: the worker's munmap of a registered region reaches the
// pager as UFFD_EVENT_UNMAP and the region leaves the table. In process.
func TestUnmapEvent(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	have, err := linux.UffdFeatures()
	if err != nil || have&linux.UFFD_FEATURE_EVENT_UNMAP == 0 {
		t.Skipf("no UFFD_FEATURE_EVENT_UNMAP here (%v)", err)
	}
	p := newPager(t, pager.Options{CPUs: hw.NewSet[hw.CPU](0)})
	ps := linux.PageSize()
	mem := uffdMapping(t, p, 6, true)
	base := addrOf(mem)
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(6 * ps), Dataspace: "x", Content: content.Pattern(3)}); err != nil {
		t.Fatal(err)
	}
	if mem[2*ps] != byte(content.PatternWord(3, uint64(2*ps))) { // a fault served in process
		t.Fatal("wrong content")
	}
	// Unmap the middle two pages: the region splits in two.
	rawMunmap(t, base+uintptr(2*ps), 2*ps)
	waitFor(t, "region split by the UNMAP event", func() bool {
		rs := p.Uffds()[0].Regions
		return len(rs) == 2 && rs[0].Length == uintptr(2*ps) && rs[1].Start == base+uintptr(4*ps) && rs[1].Offset == uint64(4*ps)
	})
	if err := content.VerifyPattern(mem[4*ps:6*ps], 3, uint64(4*ps)); err != nil {
		t.Error(err)
	}
	rawMunmap(t, base, 2*ps)
	rawMunmap(t, base+uintptr(4*ps), 2*ps)
	waitFor(t, "regions gone after unmapping everything", func() bool { return len(p.Uffds()[0].Regions) == 0 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rawMunmap unmaps part of a mapping (linux.Munmap takes whole mappings).
func rawMunmap(t *testing.T, addr uintptr, length int) {
	t.Helper()
	if _, _, errno := syscall.Syscall(syscall.SYS_MUNMAP, addr, uintptr(length), 0); errno != 0 {
		t.Fatalf("munmap %#x+%#x: %v", addr, length, errno)
	}
}

func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

// TestRemapEvent: the worker's mremap of a registered region reaches the
// pager as UFFD_EVENT_REMAP; the region moves and later faults at the new
// address get the right content. In process.
func TestRemapEvent(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	have, err := linux.UffdFeatures()
	if err != nil || have&linux.UFFD_FEATURE_EVENT_REMAP == 0 {
		t.Skipf("no UFFD_FEATURE_EVENT_REMAP here (%v)", err)
	}
	p := newPager(t, pager.Options{CPUs: hw.NewSet[hw.CPU](0)})
	ps := linux.PageSize()
	mem := uffdMapping(t, p, 4, true)
	base := addrOf(mem)
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(4 * ps), Dataspace: "x", Offset: 8 * uint64(ps), Content: content.Pattern(5)}); err != nil {
		t.Fatal(err)
	}
	_ = mem[0] // one page in place before the move
	// Move it onto a mapping of our own (MREMAP_MAYMOVE|MREMAP_FIXED).
	dst, err := linux.Mmap(4*ps, linux.PROT_NONE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(dst)
	to := addrOf(dst)
	const mremapMaymove, mremapFixed = 1, 2
	if _, _, errno := syscall.Syscall6(syscall.SYS_MREMAP, base, uintptr(4*ps), uintptr(4*ps), mremapMaymove|mremapFixed, to, 0); errno != 0 {
		t.Fatalf("mremap: %v", errno)
	}
	waitFor(t, "region moved by the REMAP event", func() bool {
		rs := p.Uffds()[0].Regions
		return len(rs) == 1 && rs[0].Start == to && rs[0].Offset == 8*uint64(ps)
	})
	if err := content.VerifyPattern(dst, 5, 8*uint64(ps)); err != nil {
		t.Error(err)
	}
	if s := p.Stats()["x"]; s.Faults < 4 || s.Pages != 4 || s.Errors != 0 {
		t.Errorf("%d faults, %d pages, %d errors; want >= 4 faults, 4 pages, no error", s.Faults, s.Pages, s.Errors)
	}
}

// TestPeakTracking: the high-water mark of the tracking survives the
// regions it counted (the bench reads it after the workers are gone).
func TestPeakTracking(t *testing.T) {
	needUffd(t)
	p := newPager(t, pager.Options{})
	ps := linux.PageSize()
	mem := uffdMapping(t, p, 64, false)
	defer linux.Munmap(mem)
	base := addrOf(mem)
	for i := range 2 {
		r := pager.Region{Start: base + uintptr(i*32*ps), Length: uintptr(32 * ps), Dataspace: "ds", Content: content.Zero()}
		if err := p.AddRegion(1, r); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.RegisteredPages(); got != 64 {
		t.Fatalf("RegisteredPages = %d, want 64", got)
	}
	bytes, pages := p.PeakTracking()
	if pages != 64 || bytes != p.TrackingBytes() || bytes <= 0 {
		t.Fatalf("PeakTracking = %d bytes, %d pages; TrackingBytes %d", bytes, pages, p.TrackingBytes())
	}
	if err := p.RemoveUffd(1); err != nil {
		t.Fatal(err)
	}
	if got := p.RegisteredPages(); got != 0 {
		t.Fatalf("RegisteredPages after RemoveUffd = %d", got)
	}
	if b2, p2 := p.PeakTracking(); b2 != bytes || p2 != 64 {
		t.Fatalf("peak lost after RemoveUffd: %d bytes %d pages", b2, p2)
	}
}

// uffdMapping maps pages of anonymous memory in this process and hands a
// fresh userfaultfd for it to p as uffd 1 (served or only held). The caller
// registers regions in it and unmaps it.
func uffdMapping(t *testing.T, p *pager.Pager, pages int, serve bool) []byte {
	t.Helper()
	mem, err := linux.Mmap(pages*linux.PageSize(), linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	u, err := linux.OpenUffd()
	if err != nil {
		linux.Munmap(mem)
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, serve); err != nil {
		linux.Munmap(mem)
		t.Fatal(err)
	}
	return mem
}

// TestFaultBreakdown: every resolved fault is timed, its read, work and
// ioctl shares recorded; work + ioctl is the fault's pager-side latency.
func TestFaultBreakdown(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	p := newPager(t, pager.Options{})
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 128, Seed: 4}}})
	if err := serveWorker(t, p, w, 1); err != nil {
		t.Fatalf("worker: %v", err)
	}
	s := p.Stats()["ds0"]
	lat := s.LatencyHistogram()
	t.Logf("%d faults timed: read %d, work %d, ioctl %d ns in all; latency mean %.0f ns", s.Timed, s.ReadNS, s.WorkNS, s.IoctlNS, lat.Mean())
	if s.Timed == 0 || s.Timed != uint64(lat.Count()) || s.ReadNS == 0 || s.WorkNS == 0 || s.IoctlNS == 0 {
		t.Fatalf("breakdown %+v: want every resolved fault timed, each part measured", s)
	}
	// work + ioctl is the latency the histogram holds (two clock reads
	// apart, and the histogram's ±1.6% buckets).
	perFault := float64(s.WorkNS+s.IoctlNS) / float64(s.Timed)
	if perFault < 0.9*lat.Mean() || perFault > 1.1*lat.Mean()+1000 {
		t.Errorf("work + ioctl %.0f ns per fault, latency mean %.0f ns", perFault, lat.Mean())
	}
}
