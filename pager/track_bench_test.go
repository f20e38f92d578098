package pager_test

import (
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// Benchmarks of async write tracking (Region.Track with WP_ASYNC and
// PAGEMAP_SCAN). Each compares, in the same process and interleaved, a
// write loop over a tracked region and over an untracked one, and reports
// their ratio: absolute times on the shared dev VM vary tenfold between
// days, the ratio less so.
//
// Two loops, because they cost different things:
//
//   - rewrite of present pages (BenchmarkTrackRewrite): the pages are
//     mapped already; an epoch (the time between two checkpoints) writes
//     every page `passes` times, then PAGEMAP_SCAN collects and re-protects
//     the written pages. Tracking costs one in-kernel write-protect fault
//     per page per epoch (the first write; later writes run free) plus the
//     scan — a fixed cost per written page per epoch, independent of how
//     often the page is written. Its share of the loop shrinks with the
//     work per page per epoch.
//   - first write to fresh pages (BenchmarkTrackFirstTouch): every page is
//     missing and its first touch is a write, served by the pager (zero
//     content) in both regions; the tracked one is Track. A missing page
//     needs its fault to the pager either way: tracking must not add a
//     second fault on top.

// trackBenchPages is the region size of the benchmarks: 16 MiB of 4 KiB
// pages.
const trackBenchPages = 4096

// benchPagerUffd makes a pager (its threads on any CPU) with uffd 1.
func benchPagerUffd(b *testing.B, opts pager.Options) *pager.Pager {
	b.Helper()
	needUffd(b)
	p, err := pager.New(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	u, err := linux.OpenUffd()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		b.Fatal(err)
	}
	return p
}

// writePass stores to one word in every page of mem (a different word each
// pass). A store, not an increment: the load of an increment would be a
// read fault of its own on a missing page.
func writePass(mem []byte, ps, k int) {
	off := (k % (ps / 8)) * 8
	v := byte(k) | 1
	for p := 0; p < len(mem); p += ps {
		mem[p+off] = v
	}
}

// threadCPU is the CPU time of the calling OS thread (user and kernel,
// so a fault's handling counts, a preemption does not): on a VM shared
// with busy neighbours the wall clock mostly measures them.
func threadCPU() time.Duration {
	var ts syscall.Timespec
	const clockThreadCPUTime = 3 // CLOCK_THREAD_CPUTIME_ID
	if _, _, errno := syscall.RawSyscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTime, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		panic(errno)
	}
	return time.Duration(ts.Nano())
}

// BenchmarkTrackRewrite: the rewrite loop, passes=1 (the worst case: one
// write per page per epoch), 16, 256 and 4096 (an epoch of ~0.25 s of
// writing on the dev VM: checkpoints are seconds apart), each epoch of the
// tracked region ending in the scan that a checkpoint makes. The two
// regions' passes alternate (plain, tracked, tracked, plain, ...) on one
// OS thread and are timed in that thread's CPU time. Reported per page
// and epoch: the loop untracked (ns/page-untracked), the loop tracked
// including the scan (ns/page-tracked), the tracked loop's first pass over
// the untracked one's (fault-ns/page: what the write-protect fault adds),
// the scan (scan-ns/page), the page faults of the tracked loop (faults/page,
// getrusage: 1 — the first write of the epoch — however many passes), and
// tracked/untracked (ratio).
func BenchmarkTrackRewrite(b *testing.B) {
	if !linux.HaveWPAsync() {
		b.Skip("kernel lacks async write protection (Linux 6.7)")
	}
	for _, passes := range []int{1, 16, 256, 4096} {
		b.Run("passes="+strconv.Itoa(passes), func(b *testing.B) {
			p := benchPagerUffd(b, pager.Options{})
			ps := linux.PageSize()
			size := trackBenchPages * ps
			plain, err := linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_POPULATE)
			if err != nil {
				b.Fatal(err)
			}
			defer linux.Munmap(plain)
			tracked, err := linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
			if err != nil {
				b.Fatal(err)
			}
			defer linux.Munmap(tracked)
			base := addrOf(tracked)
			if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(size), Dataspace: "bench", Content: content.Zero(), Track: true}); err != nil {
				b.Fatal(err)
			}
			defer p.RemoveRegion(1, base)
			writePass(tracked, ps, 0) // every page present (through the pager)
			pm, err := linux.OpenPagemap(0)
			if err != nil {
				b.Fatal(err)
			}
			defer pm.Close()
			vec := make([]linux.PageRegion, 256)
			var out []linux.PageRegion
			scan := func() {
				out, err = pm.WrittenPages(base, base+uintptr(size), true, vec, out[:0])
				if err != nil {
					b.Fatal(err)
				}
			}
			scan() // epoch 0 begins: everything protected
			lockOSThread()
			defer unlockOSThread()
			var plainT, trackedT, plainFirst, trackedFirst, scanT time.Duration
			var faults int64
			pass := func(mem []byte, k int, total, first *time.Duration, track bool) {
				var f0 int64
				if track && first != nil {
					f0 = pageFaults(b)
				}
				t0 := threadCPU()
				writePass(mem, ps, k)
				d := threadCPU() - t0
				*total += d
				if first != nil {
					*first += d
					if track {
						faults += pageFaults(b) - f0
					}
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := 0; j < passes; j++ {
					var pf, tf *time.Duration
					if j == 0 {
						pf, tf = &plainFirst, &trackedFirst
					}
					k := i*passes + j
					if k%2 == 0 {
						pass(plain, k, &plainT, pf, false)
						pass(tracked, k, &trackedT, tf, true)
					} else {
						pass(tracked, k, &trackedT, tf, true)
						pass(plain, k, &plainT, pf, false)
					}
				}
				t0 := threadCPU()
				scan()
				d := threadCPU() - t0
				scanT += d
				trackedT += d
				var n uint64
				for _, g := range out {
					n += (g.End - g.Start) / uint64(ps)
				}
				if n != trackBenchPages {
					b.Fatalf("the scan found %d written pages, want %d", n, trackBenchPages)
				}
			}
			b.StopTimer()
			n := float64(b.N * trackBenchPages)
			b.ReportMetric(float64(plainT.Nanoseconds())/n, "ns/page-untracked")
			b.ReportMetric(float64(trackedT.Nanoseconds())/n, "ns/page-tracked")
			b.ReportMetric(float64((trackedFirst-plainFirst).Nanoseconds())/n, "fault-ns/page")
			b.ReportMetric(float64(scanT.Nanoseconds())/n, "scan-ns/page")
			b.ReportMetric(float64(faults)/n, "faults/page")
			b.ReportMetric(float64(trackedT)/float64(plainT), "ratio")
		})
	}
}

// BenchmarkTrackFirstTouch: write once to every page of a fresh region
// served by the pager (zero content), Track and not, alternating; the
// anonymous memory the kernel fills itself (no userfaultfd) for scale.
// Async: WP_ASYNC tracking; sync: Options.SyncWriteTracking (the 6.1
// fallback). Reported per page: each loop's time, tracked/untracked
// (ratio), the page faults each loop took (getrusage: every exception, the
// kernel's retry after the pager resolved one is not another) and the
// faults the pager served per page of the tracked loop.
func BenchmarkTrackFirstTouch(b *testing.B) {
	b.Run("async", func(b *testing.B) { benchFirstTouch(b, false) })
	b.Run("sync", func(b *testing.B) { benchFirstTouch(b, true) })
}

// pageFaults is this process's page faults so far (minor and major:
// getrusage counts a fault the pager resolved as major).
func pageFaults(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Minflt + ru.Majflt
}

func benchFirstTouch(b *testing.B, sync bool) {
	if !sync && !linux.HaveWPAsync() {
		b.Skip("kernel lacks async write protection (Linux 6.7)")
	}
	p := benchPagerUffd(b, pager.Options{SyncWriteTracking: sync})
	ps := linux.PageSize()
	size := trackBenchPages * ps
	pm, err := linux.OpenPagemap(0)
	if err != nil {
		b.Fatal(err)
	}
	defer pm.Close()
	// The three regions of an iteration: anonymous (no userfaultfd),
	// served untracked, served tracked. Their pages are written in
	// alternating chunks, so that all three see the same neighbours.
	const chunk = 64
	type reg struct {
		mem    []byte
		t      time.Duration
		faults int64
	}
	var regs [3]reg
	var served uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		for k := range regs {
			mem, err := linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
			if err != nil {
				b.Fatal(err)
			}
			regs[k].mem = mem
			if k == 0 {
				continue
			}
			base := addrOf(mem)
			ds := "plain"
			if k == 2 {
				ds = "bench"
			}
			if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(size), Dataspace: ds, Content: content.Zero(), Track: k == 2}); err != nil {
				b.Fatal(err)
			}
			if k == 2 && !sync {
				// As the vcore starts tracking at attach: every page
				// protected, present or not (WP_UNPOPULATED).
				if err := pm.WriteProtectAsync(base, base+uintptr(size)); err != nil {
					b.Fatal(err)
				}
			}
		}
		s0 := p.Stats()["bench"].Faults
		b.StartTimer()
		for c := 0; c < trackBenchPages/chunk; c++ {
			for j := range regs {
				k := (c + j) % len(regs)
				m := regs[k].mem[c*chunk*ps : (c+1)*chunk*ps]
				f0 := pageFaults(b)
				t0 := time.Now()
				writePass(m, ps, 0)
				regs[k].t += time.Since(t0)
				regs[k].faults += pageFaults(b) - f0
			}
		}
		b.StopTimer()
		served += p.Stats()["bench"].Faults - s0
		tracked := regs[2].mem
		base := addrOf(tracked)
		var n uint64
		if sync {
			w, err := p.TakeWritten(1, base, uintptr(size))
			if err != nil {
				b.Fatal(err)
			}
			n = uint64(len(w))
		} else {
			got, err := pm.WrittenPages(base, base+uintptr(size), false, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			for _, g := range got {
				n += (g.End - g.Start) / uint64(ps)
			}
		}
		if n != trackBenchPages {
			b.Fatalf("%d pages written, want %d", n, trackBenchPages)
		}
		for k := range regs {
			if k > 0 {
				if err := p.RemoveRegion(1, addrOf(regs[k].mem)); err != nil {
					b.Fatal(err)
				}
			}
			linux.Munmap(regs[k].mem)
		}
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(b.N * trackBenchPages)
	b.ReportMetric(float64(regs[0].t.Nanoseconds())/n, "ns/page-anon")
	b.ReportMetric(float64(regs[1].t.Nanoseconds())/n, "ns/page-untracked")
	b.ReportMetric(float64(regs[2].t.Nanoseconds())/n, "ns/page-tracked")
	b.ReportMetric(float64(regs[1].faults)/n, "faults/page-untracked")
	b.ReportMetric(float64(regs[2].faults)/n, "faults/page-tracked")
	b.ReportMetric(float64(served)/n, "served/page-tracked")
	b.ReportMetric(float64(regs[2].t)/float64(regs[1].t), "ratio")
}
