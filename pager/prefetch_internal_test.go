package pager

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
)

// TestStreamDetector: three faults a stride apart start a stream, whose
// fault maps prefetchSync pages with itself and queues the rest of the
// window; the window doubles on hits up to PrefetchMax, halves on a miss,
// and never reaches past the region.
func TestStreamDetector(t *testing.T) {
	const ps = 4096
	const max = 4 * prefetchFirst
	p := &Pager{ps: ps, around: 1, opts: Options{PrefetchMax: max}}
	r := &region{Region: Region{Start: 1 << 20, Length: 4000 * ps}, end: 1<<20 + 4000*ps, stream: new(stream)}
	page := func(a uintptr) int { return int((a - r.Start) / ps) }
	fault := func(pg int) (uintptr, prefetchJob, bool) {
		addr := r.Start + uintptr(pg)*ps
		lo, hi := p.window(r, addr)
		return p.observe(r, addr, lo, hi)
	}
	for _, pg := range []int{0, 1} {
		if hi, _, ok := fault(pg); ok || page(hi) != pg+1 {
			t.Fatalf("fault %d: a stream (ok %v) or a wider range (to page %d)", pg, ok, page(hi))
		}
	}
	// The third fault: its page and prefetchSync more now; the window
	// (prefetchFirst) ends with them, nothing queued.
	hi, _, ok := fault(2)
	if page(hi) != 3+min(prefetchSync, prefetchFirst) || (ok && prefetchSync >= prefetchFirst) {
		t.Fatalf("third sequential fault: resolves to page %d (job %v), want %d", page(hi), ok, 3+min(prefetchSync, prefetchFirst))
	}
	// The stream catches up: the window doubles; prefetchSync pages now,
	// the rest of the window queued after them.
	next := page(hi)
	hi, j, ok := fault(next)
	w := 2 * prefetchFirst
	if page(hi) != next+1+prefetchSync || !ok || page(j.cur) != page(hi) || page(j.end) != next+1+w {
		t.Fatalf("fault at page %d: resolves to %d, job %d..%d (ok %v); want to %d, job to %d",
			next, page(hi), page(j.cur), page(j.end), ok, next+1+prefetchSync, next+1+w)
	}
	for pg := page(hi); pg < 3000; pg += prefetchSync + 1 {
		if _, j, ok := fault(pg); ok && page(j.end)-pg-1 > max {
			t.Fatalf("fault at page %d: mapped ahead to page %d, beyond PrefetchMax %d", pg, page(j.end), max)
		}
	}
	if r.stream.window != max {
		t.Errorf("window after a long stream: %d, want PrefetchMax %d", r.stream.window, max)
	}
	// A miss halves the window and maps nothing ahead.
	if hi, _, ok := fault(3900); ok || r.stream.window != max/2 || page(hi) != 3901 {
		t.Errorf("a miss: ok %v window %d resolves to page %d, want no job, window %d, its own page", ok, r.stream.window, page(hi), max/2)
	}
	// A sequential stream at the region's end: never past it.
	for _, pg := range []int{3990, 3991, 3992, 3993} {
		if hi, j, ok := fault(pg); hi > r.end || (ok && j.end > r.end) {
			t.Fatalf("fault at page %d: resolves to %#x, job %+v: past the region end %#x", pg, hi, j, r.end)
		}
	}
	// A strided stream near the region's end: never past it.
	for _, pg := range []int{3940, 3950, 3960, 3970, 3980, 3990} {
		if _, j, ok := fault(pg); ok && (j.end > r.end || j.stride != 10*ps) {
			t.Fatalf("strided job %+v past the region end %#x or with the wrong stride", j, r.end)
		}
	}
	// Random pages: no job, nothing but their own page.
	for _, pg := range []int{5, 700, 33, 512, 2, 800} {
		if hi, j, ok := fault(pg); ok || page(hi) != pg+1 {
			t.Errorf("random fault at page %d resolves to page %d, queued %+v", pg, page(hi), j)
		}
	}
}

// TestPrefetchRealFaultJumpsQueue: a sequential stream grows its window
// until a big prefetch is queued (at least 1024 pages, 16 chunks); while
// a chunk of it is being mapped, a thread faults on another region. That
// fault is served before the next chunk: at that moment most of the job
// is still queued. Proven by the order of the pager thread's own events,
// not by timing: the hook of that chunk returns only once the other fault
// is pending in the uffd.
func TestPrefetchRealFaultJumpsQueue(t *testing.T) {
	u, err := linux.OpenUffd()
	if err != nil {
		t.Skipf("no userfaultfd: %v", err)
	}
	const big = 2048
	p, err := New(Options{Threads: 1, PrefetchMax: big})
	if err != nil {
		u.Close()
		t.Fatal(err)
	}
	defer func() {
		if err := p.Close(); err != nil { // the thread calling the hook ends first
			t.Error(err)
		}
		prefetchHook = nil
	}()
	// A second epoll set watching the uffd (level-triggered): it tells
	// the hook when a fault is pending.
	watch, err := linux.NewEpoll()
	if err != nil {
		u.Close()
		t.Fatal(err)
	}
	defer watch.Close()
	if err := watch.Add(u.FD(), linux.EPOLLIN, 1); err != nil {
		u.Close()
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	a, err := linux.Mmap(4*big*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(a)
	b, err := linux.Mmap(ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(b)
	aStart, bStart := uintptr(unsafe.Pointer(&a[0])), uintptr(unsafe.Pointer(&b[0]))

	type event struct {
		ev      hookEvent
		ds      string
		addr    uintptr
		pending int // pages the stream's job still had to map
	}
	var (
		mu        sync.Mutex
		events    []event
		triggered bool
		trigger   int // the event of the chunk during which b faulted
	)
	touchB := make(chan struct{})
	var bDone sync.WaitGroup
	bDone.Add(1)
	go func() {
		defer bDone.Done()
		<-touchB
		if b[0] != byte(content.PatternWord(7, 0)) { // faults: served from the pattern
			t.Error("region b: wrong content")
		}
	}()
	prefetchHook = func(ev hookEvent, r *region, addr uintptr, jobs []prefetchJob) {
		left := 0
		for _, j := range jobs {
			if j.r.Dataspace == "a" {
				left += int((j.end - j.cur) / uintptr(ps))
			}
		}
		mu.Lock()
		events = append(events, event{ev, r.Dataspace, addr, left})
		first := ev == hookChunk && left >= big/2 && !triggered
		if first {
			triggered = true
			trigger = len(events) - 1
		}
		mu.Unlock()
		if !first {
			return
		}
		// The first chunk of the big job: make region b fault now and
		// wait until its fault is in the uffd.
		close(touchB)
		var evs [1]linux.EpollEvent
		if n, err := watch.Wait(evs[:], 60_000); err != nil || n == 0 {
			t.Errorf("the fault on region b never arrived (%d, %v)", n, err)
		}
	}
	if err := p.AddRegion(1, Region{Start: aStart, Length: uintptr(len(a)), Dataspace: "a", Content: content.Zero(), Prefetch: true}); err != nil {
		t.Fatal(err)
	}
	if err := p.AddRegion(1, Region{Start: bStart, Length: uintptr(ps), Dataspace: "b", Content: content.Pattern(7), Prefetch: true}); err != nil {
		t.Fatal(err)
	}
	// A sequential scan of a, until the window (doubled on every fault of
	// the stream) is PrefetchMax; then this thread stops faulting, and the
	// pager thread maps the queued rest in chunks.
	p.mu.Lock()
	ra := p.byID[1].find(aStart)
	p.mu.Unlock()
	for off := 0; off < len(a); off += ps {
		if a[off] != 0 {
			t.Fatalf("region a, page %d: not zero", off/ps)
		}
		a[off] = 1
		ra.stream.mu.Lock()
		w := ra.stream.window
		ra.stream.mu.Unlock()
		if w >= big {
			break
		}
	}
	// Wait (generously: no timing is judged) for the hook to see a chunk
	// with the big rest queued behind it.
	select {
	case <-touchB:
	case <-time.After(time.Minute):
	}
	mu.Lock()
	if !triggered {
		triggered = true // no trigger from now on
		close(touchB)    // let the goroutine end; the test fails below
		trigger = -1
	}
	mu.Unlock()
	bDone.Wait()
	// b's fault is recorded by the hook just after the copy that woke b.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		seen := slices.ContainsFunc(events, func(e event) bool { return e.ds == "b" })
		mu.Unlock()
		if seen || trigger < 0 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if trigger < 0 {
		t.Fatalf("no chunk with %d pages queued after it: %d events", big/2, len(events))
	}
	var order []string
	bAt, bPending := -1, 0
	for i, e := range events {
		if i >= trigger-1 && i <= trigger+1 || e.ds == "b" {
			order = append(order, fmt.Sprintf("%s:%s@%d(left %d)", map[hookEvent]string{hookFault: "fault", hookChunk: "chunk"}[e.ev], e.ds, int(e.addr-aStart)/ps, e.pending))
		}
		if e.ev == hookFault && e.ds == "b" {
			bAt, bPending = i, e.pending
		}
	}
	t.Logf("pager events around the chunk (event %d) during which b faulted, and b's: %v", trigger, order)
	if bAt < 0 {
		t.Fatal("the fault on region b was never served")
	}
	// After the chunk during which b faulted: faults only (b's, maybe
	// one of a's), no chunk, until b's is served.
	for i := trigger + 1; i < bAt; i++ {
		if events[i].ev == hookChunk {
			t.Errorf("a chunk of prefetch (event %d) was mapped while the fault on b was pending (served at event %d)", i, bAt)
		}
	}
	if bAt < trigger || bPending < big/4 {
		t.Errorf("the fault on region b: event %d, with %d pages of prefetch queued; want after event %d, with most of the prefetch still queued", bAt, bPending, trigger)
	}
}
