package pager

import "testing"

// TestStreamDetector: three faults a stride apart start a stream, the
// window doubles on hits up to PrefetchMax, halves on a miss, and never
// reaches past the region.
func TestStreamDetector(t *testing.T) {
	const ps = 4096
	p := &Pager{ps: ps, around: 1, opts: Options{PrefetchMax: 64}}
	r := &region{Region: Region{Start: 1 << 20, Length: 1000 * ps}, end: 1<<20 + 1000*ps, stream: new(stream)}
	fault := func(page int) (uintptr, prefetchJob, bool) {
		addr := r.Start + uintptr(page)*ps
		lo, hi := p.window(r, addr)
		return p.observe(r, addr, lo, hi)
	}
	if _, _, ok := fault(0); ok {
		t.Fatal("one fault is a stream")
	}
	if _, _, ok := fault(1); ok {
		t.Fatal("two faults are a stream")
	}
	_, j, ok := fault(2)
	if !ok || j.stride != 0 || j.cur != r.Start+3*ps || j.end != r.Start+(3+prefetchFirst)*ps {
		t.Fatalf("third sequential fault: job %+v ok %v, want pages 3..%d", j, ok, 3+prefetchFirst)
	}
	// The stream catches up inside what was mapped ahead: the fault's
	// window widens to a chunk, the window doubles.
	hi, j, ok := fault(3)
	if !ok || hi != r.Start+(3+prefetchChunk)*ps || j.end-j.cur != 2*prefetchFirst*ps {
		t.Fatalf("fault inside the prefetched range: hi page %d, job %d pages, ok %v", (hi-r.Start)/ps, (j.end-j.cur)/ps, ok)
	}
	for page := 3 + prefetchChunk; page < 400; page += prefetchChunk {
		_, j, _ = fault(page)
	}
	if r.stream.window != 64 {
		t.Errorf("window after a long stream: %d, want PrefetchMax 64", r.stream.window)
	}
	// A miss halves the window and maps nothing ahead.
	if _, _, ok := fault(900); ok || r.stream.window != 32 {
		t.Errorf("a miss: ok %v window %d, want no job and window 32", ok, r.stream.window)
	}
	// A strided stream near the region's end: never past it.
	for _, page := range []int{940, 950, 960, 970, 980, 990} {
		if _, j, ok := fault(page); ok && (j.end > r.end || j.stride != 10*ps) {
			t.Fatalf("strided job %+v past the region end %#x or with the wrong stride", j, r.end)
		}
	}
	// Random pages: no job.
	for _, page := range []int{5, 700, 33, 512, 2, 800} {
		if _, j, ok := fault(page); ok {
			t.Errorf("random fault at page %d queued %+v", page, j)
		}
	}
}
