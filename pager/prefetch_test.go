package pager_test

import (
	"testing"
	"time"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// servePrefetch serves w's regions with prefetch on for those in on, runs
// the worker (which verifies every page) and returns the stats.
func servePrefetch(t *testing.T, opts pager.Options, w *testWorker, regions []pager.Region) map[string]pager.DataspaceStats {
	t.Helper()
	p := newPager(t, opts)
	if err := p.AddUffd(1, w.uffd, w.pid, true); err != nil {
		w.uffd = nil
		w.kill()
		t.Fatal(err)
	}
	w.uffd = nil
	for _, r := range regions {
		if err := p.AddRegion(1, r); err != nil {
			w.kill()
			t.Fatal(err)
		}
	}
	w.start()
	if err := w.result(workerTimeout); err != nil {
		t.Fatalf("worker: %v", err)
	}
	return p.Stats()
}

// TestPrefetchSequential: a sequential stream gets its pages mapped ahead
// (far fewer faults than pages), every page verified by the worker, each
// page mapped once.
func TestPrefetchSequential(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	for _, fa := range []int{1, 4} {
		w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 2048, Seed: 5}, {Pages: 1024, Zero: true}}})
		rs := w.regions("ds", false)
		for i := range rs {
			rs[i].Prefetch = true
		}
		st := servePrefetch(t, pager.Options{FaultAround: fa, PrefetchMax: 128}, w, rs)
		for ds, pages := range map[string]uint64{"ds0": 2048, "ds1": 1024} {
			s := st[ds]
			t.Logf("fault-around %d, %s: %d faults, %d pages, %d prefetched", fa, ds, s.Faults, s.Pages, s.Prefetched)
			if s.Pages != pages || s.Errors != 0 {
				t.Errorf("fault-around %d, %s: %d pages mapped (%d errors), want %d", fa, ds, s.Pages, s.Errors, pages)
			}
			if s.Faults > pages/4 {
				t.Errorf("fault-around %d, %s: %d faults, %d pages prefetched for %d pages: no stream was followed", fa, ds, s.Faults, s.Prefetched, pages)
			}
		}
	}
}

// TestPrefetchStrided: every 8th page first, then the rest in random
// order: the strided pass (and only it) is followed ahead.
func TestPrefetchStrided(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 4096, Seed: 9}}, Order: "stride8"})
	rs := w.regions("ds", false)
	rs[0].Prefetch = true
	st := servePrefetch(t, pager.Options{}, w, rs)["ds0"]
	t.Logf("strided: %d faults, %d pages, %d prefetched", st.Faults, st.Pages, st.Prefetched)
	if st.Pages != 4096 || st.Errors != 0 {
		t.Errorf("%d pages mapped (%d errors), want 4096", st.Pages, st.Errors)
	}
	// The strided pass is 512 touches; followed ahead, most of them find
	// their page mapped (the random rest is no stream).
	if st.Prefetched < 512/4 {
		t.Errorf("only %d pages prefetched: the strided pass was not followed", st.Prefetched)
	}
}

// TestPrefetchRandom: random access is no stream: (almost) nothing is
// mapped ahead, every touch faults.
func TestPrefetchRandom(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 2048, Seed: 3}}, Order: "random"})
	rs := w.regions("ds", false)
	rs[0].Prefetch = true
	st := servePrefetch(t, pager.Options{}, w, rs)["ds0"]
	t.Logf("random: %d faults, %d pages, %d prefetched", st.Faults, st.Pages, st.Prefetched)
	if st.Pages != 2048 || st.Errors != 0 {
		t.Errorf("%d pages mapped (%d errors), want 2048", st.Pages, st.Errors)
	}
	if st.Prefetched > 2048/16 || st.Faults < 2048-2048/16 {
		t.Errorf("random access: %d faults, %d pages prefetched: prefetch followed streams that are not there", st.Faults, st.Prefetched)
	}
}

// TestPrefetchStaysInRegion: one mapping registered as two regions, the
// first with prefetch on: a stream running to the end of the first never
// maps pages of the second (each of its pages is faulted in by the worker).
func TestPrefetchStaysInRegion(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	const half = 1024
	w := startWorker(t, workerSpec{Regions: []workerRegion{{Pages: 2 * half, Seed: 11}}})
	ps := uintptr(linux.PageSize())
	whole := w.regions("ds", false)[0]
	first := pager.Region{Start: whole.Start, Length: half * ps, Dataspace: "on", Content: content.Pattern(11), Prefetch: true}
	second := pager.Region{Start: whole.Start + half*ps, Length: half * ps, Dataspace: "off", Offset: uint64(half * ps),
		Content: content.Pattern(11)}
	st := servePrefetch(t, pager.Options{PrefetchMax: 512}, w, []pager.Region{first, second})
	on, off := st["on"], st["off"]
	t.Logf("on: %d faults %d pages %d prefetched; off: %d faults %d pages", on.Faults, on.Pages, on.Prefetched, off.Faults, off.Pages)
	if on.Pages != half || on.Faults > half/4 {
		t.Errorf("prefetched region: %d faults for %d pages, want %d pages, most mapped ahead", on.Faults, on.Pages, half)
	}
	if off.Pages != half || off.Prefetched != 0 || off.Faults < half {
		t.Errorf("region after it: %d faults, %d pages, %d prefetched: want every one of its %d pages faulted in", off.Faults, off.Pages, off.Prefetched, half)
	}
}

// BenchmarkPrefetchSeq: a sequential scan of zero-content pages, each
// touch a timed 8-byte write (as the bench's toucher), the pager with
// prefetch on and the toucher on the same CPU (a one-CPU partition), and
// the kernel's own first touch of the same number of pages, interleaved.
// Reported: touch ns per page of each and their ratio.
func BenchmarkPrefetchSeq(b *testing.B) {
	needUffd(b)
	cpus, err := linux.ThreadAffinity()
	if err != nil {
		b.Fatal(err)
	}
	cpu := cpus.Slice()[len(cpus.Slice())-1]
	p, err := pager.New(pager.Options{CPUs: hw.NewSet(cpu)})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	u, err := linux.OpenUffd()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		b.Fatal(err)
	}
	lockAndPin(b, cpu, cpus)
	ps := linux.PageSize()
	const pages = 2048
	touch := func(mem []byte) time.Duration {
		var sum time.Duration
		for off := 0; off < len(mem); off += ps {
			t0 := time.Now()
			mem[off] = 0
			sum += time.Since(t0)
		}
		return sum
	}
	var pf, kern time.Duration
	b.ResetTimer()
	for range b.N {
		mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
		if err != nil {
			b.Fatal(err)
		}
		linux.Madvise(mem, linux.MADV_NOHUGEPAGE)
		base := addrOf(mem)
		if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(pages * ps), Dataspace: "bench", Content: content.Zero(), Prefetch: true}); err != nil {
			b.Fatal(err)
		}
		pf += touch(mem)
		if err := p.RemoveRegion(1, base); err != nil {
			b.Fatal(err)
		}
		linux.Munmap(mem)
		mem, err = linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
		if err != nil {
			b.Fatal(err)
		}
		linux.Madvise(mem, linux.MADV_NOHUGEPAGE)
		kern += touch(mem)
		linux.Munmap(mem)
	}
	b.StopTimer()
	st := p.Stats()["bench"]
	n := float64(b.N * pages)
	b.ReportMetric(float64(pf)/n, "prefetch-ns/page")
	b.ReportMetric(float64(kern)/n, "kernel-ns/page")
	b.ReportMetric(float64(pf)/float64(kern), "prefetch/kernel")
	b.ReportMetric(float64(st.Faults)/n, "faults/page")
}
