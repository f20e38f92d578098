package pager

import (
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
)

// TestFaultPathAllocs: handling a fault allocates nothing on the heap.
// The ioctl timer of the breakdown was built per fault and escaped, with
// the counter it added to: two allocations per fault, garbage the daemon's
// GC collected on the partition's CPUs. The test calls the pager thread's
// fault handler itself (the uffd is held, not served) with real
// UFFDIO_COPYs into a registered region, the way drain does: single
// pages with patterned content, fault-around 16 with zero content, and a
// Prefetch region (stream faults copying ahead, queueing prefetch jobs).
func TestFaultPathAllocs(t *testing.T) {
	if u, err := linux.OpenUffd(); err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	} else {
		u.Close()
	}
	const runs = 40
	ps := linux.PageSize()
	for _, c := range []struct {
		name     string
		around   int
		src      content.Source
		prefetch bool
		step     int // pages between faults
	}{
		{"single", 1, content.Pattern(3), false, 1},
		{"fa16", 16, content.Zero(), false, 16},
		{"prefetch", 1, content.Zero(), true, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := New(Options{FaultAround: c.around})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			u, err := linux.OpenUffd()
			if err != nil {
				t.Fatal(err)
			}
			if err := p.AddUffd(1, u, 0, false); err != nil {
				t.Fatal(err)
			}
			pages := (runs + 1) * c.step
			if c.prefetch {
				pages += p.opts.PrefetchMax + prefetchSync
			}
			mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
			if err != nil {
				t.Fatal(err)
			}
			defer linux.Munmap(mem)
			// Closed before the munmap (defers run last first): with the
			// UNMAP event negotiated, munmap waits for a reader of the uffd,
			// which nobody serves here.
			defer p.Close()
			base := uintptr(unsafe.Pointer(&mem[0]))
			if err := p.AddRegion(1, Region{Start: base, Length: uintptr(len(mem)), Dataspace: "a", Content: c.src, Prefetch: c.prefetch}); err != nil {
				t.Fatal(err)
			}
			p.mu.Lock()
			e := p.byID[1]
			p.mu.Unlock()
			th := &thread{p: p, buf: make([]byte, c.around*ps), pbuf: make([]byte, (prefetchBufPages+c.around)*ps)}
			addr := base
			fault := func() {
				m := linux.NewPagefaultMsg(addr, linux.UFFD_PAGEFAULT_FLAG_WRITE, 0)
				e.use.RLock()
				th.stats.mu.Lock()
				if err := th.fault(e, &m, time.Now()); err != nil {
					t.Error(err)
				}
				th.stats.mu.Unlock()
				e.use.RUnlock()
				addr += uintptr(c.step * ps)
			}
			// The first faults allocate the dataspace's counters and the
			// job queue.
			for range 3 {
				fault()
			}
			if allocs := testing.AllocsPerRun(runs-3, fault); allocs != 0 {
				t.Errorf("%.1f heap allocations per fault, want 0", allocs)
			}
			st := th.stats.get(p.stats.indexOf("a"))
			if st.errors != 0 || st.faults != runs+1 || st.timed != runs+1 {
				// (Fatal: a page left missing would hang the check below.)
				t.Fatalf("%d faults (%d timed), %d errors; want %d, all timed, none failed", st.faults, st.timed, st.errors, runs+1)
			}
			want := make([]byte, ps)
			for pg := 0; pg < (runs+1)*c.step; pg++ {
				if err := c.src.Fill(want, uint64(pg*ps)); err != nil {
					t.Fatal(err)
				}
				if got := mem[pg*ps : (pg+1)*ps]; string(got) != string(want) {
					t.Fatalf("page %d differs from its content", pg)
				}
			}
		})
	}
}
