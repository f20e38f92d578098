package pager_test

import (
	"testing"
	"time"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

var benchSink byte

// benchFaults touches b.N fresh pages, one read each, from this goroutine
// pinned to touchCPU, while a Pager pinned to pagerCPU serves them with
// content src. ns/op is the cost per page; with fault-around 1 each touch is
// one fault round trip, and its median and p99 are reported too.
func benchFaults(b *testing.B, pagerCPU, touchCPU hw.CPU, around int, src content.Source) {
	needUffd(b)
	cpus, err := linux.ThreadAffinity()
	if err != nil {
		b.Fatal(err)
	}
	if !cpus.Contains(pagerCPU) || !cpus.Contains(touchCPU) {
		b.Skipf("needs cpus %d and %d, have %s", pagerCPU, touchCPU, cpus)
	}
	p, err := pager.New(pager.Options{CPUs: hw.NewSet(pagerCPU), FaultAround: around})
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
	// Pin this goroutine's thread; restore it before unlocking.
	lockAndPin(b, touchCPU, cpus)

	ps := linux.PageSize()
	const chunk = 4096 // pages per region
	h := hist.New()
	timed := around == 1
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(b.N-done, chunk)
		b.StopTimer()
		mem, err := linux.Mmap(n*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
		if err != nil {
			b.Fatal(err)
		}
		base := addrOf(mem)
		if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(n * ps), Dataspace: "bench", Content: src}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if timed {
			for off := 0; off < n*ps; off += ps {
				t0 := time.Now()
				benchSink += mem[off]
				h.RecordDuration(time.Since(t0))
			}
		} else {
			for off := 0; off < n*ps; off += ps {
				benchSink += mem[off]
			}
		}
		b.StopTimer()
		if err := p.RemoveRegion(1, base); err != nil {
			b.Fatal(err)
		}
		linux.Munmap(mem)
		b.StartTimer()
		done += n
	}
	b.StopTimer()
	if timed {
		b.ReportMetric(float64(h.Quantile(0.5)), "median-ns/fault")
		b.ReportMetric(float64(h.Quantile(0.99)), "p99-ns/fault")
	}
	st := p.Stats()["bench"]
	if st.Errors != 0 || st.Pages < uint64(b.N) {
		b.Fatalf("pager: %d pages for %d touches, %d errors", st.Pages, b.N, st.Errors)
	}
	b.ReportMetric(float64(st.Faults)/float64(b.N), "faults/page")
}

func lockAndPin(b *testing.B, cpu hw.CPU, restore hw.CPUSet) {
	b.Helper()
	lockOSThread()
	if err := linux.SetThreadAffinity(hw.NewSet(cpu)); err != nil {
		unlockOSThread()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := linux.SetThreadAffinity(restore); err == nil {
			unlockOSThread()
		} // else: stay locked, the thread dies with the goroutine
	})
}

// BenchmarkResolve: one fault, resolved with UFFDIO_COPY of a pattern page,
// pager and faulting thread on the same CPU (the local pager) or not (the
// single pager of another CPU).
func BenchmarkResolve(b *testing.B) {
	b.Run("same-cpu", func(b *testing.B) { benchFaults(b, 1, 1, 1, content.Pattern(1)) })
	b.Run("cross-cpu", func(b *testing.B) { benchFaults(b, 0, 1, 1, content.Pattern(1)) })
	b.Run("same-cpu-zero", func(b *testing.B) { benchFaults(b, 1, 1, 1, content.Zero()) })
}

// BenchmarkFaultAround: sequential touches with 1 and 16 pages per fault,
// same CPU; ns/op is the cost per page.
func BenchmarkFaultAround(b *testing.B) {
	b.Run("1", func(b *testing.B) { benchFaults(b, 1, 1, 1, content.Pattern(1)) })
	b.Run("16", func(b *testing.B) { benchFaults(b, 1, 1, 16, content.Pattern(1)) })
}

// BenchmarkKernelFirstTouch is the reference: the same touches on plain
// anonymous memory, no userfaultfd.
func BenchmarkKernelFirstTouch(b *testing.B) {
	cpus, err := linux.ThreadAffinity()
	if err != nil {
		b.Fatal(err)
	}
	lockAndPin(b, 1, cpus)
	ps := linux.PageSize()
	const chunk = 4096
	for done := 0; done < b.N; {
		n := min(b.N-done, chunk)
		b.StopTimer()
		mem, err := linux.Mmap(n*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for off := 0; off < n*ps; off += ps {
			mem[off] = 1 // a write: a read would map the shared zero page
		}
		b.StopTimer()
		linux.Munmap(mem)
		b.StartTimer()
		done += n
	}
}
