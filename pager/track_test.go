package pager_test

import (
	"errors"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// TestTrackRegion: a Track region in this process, served by the pager's
// threads. Pages the pager copies in on read faults stay clean; pages
// written (whether the write was the first touch or came later) are the
// written pages PAGEMAP_SCAN reports — exactly those.
func TestTrackRegion(t *testing.T) {
	t.Run("async", func(t *testing.T) { trackRegion(t, false) })
	t.Run("sync", func(t *testing.T) { trackRegion(t, true) })
}

func trackRegion(t *testing.T, sync bool) {
	needUffd(t)
	if !sync && !linux.HaveWPAsync() {
		t.Skip("kernel lacks async write protection (Linux 6.7)")
	}
	p := newPager(t, pager.Options{FaultAround: 4, SyncWriteTracking: sync})
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	const pages = 32
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	r := pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "t", Content: content.Pattern(5), Track: true}
	if err := p.AddRegion(1, r); err != nil {
		t.Fatal(err)
	}
	defer p.RemoveRegion(1, base)
	if async, err := p.WriteTracking(1); err != nil || async == sync {
		t.Fatalf("WriteTracking = %v, %v with SyncWriteTracking %v", async, err, sync)
	}
	pm, err := linux.OpenPagemap(0)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	// written collects an epoch's written pages, the way a checkpoint does.
	written := func() []int {
		var got []int
		if sync {
			pages, err := p.TakeWritten(1, base, uintptr(len(mem)))
			if err != nil {
				t.Fatal(err)
			}
			for _, pg := range pages {
				got = append(got, int(pg))
			}
			return got
		}
		regs, err := pm.WrittenPages(base, base+uintptr(len(mem)), true, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range regs {
			for a := g.Start; a < g.End; a += uint64(ps) {
				got = append(got, int((a-uint64(base))/uint64(ps)))
			}
		}
		return got
	}
	if !sync {
		if err := pm.WriteProtectAsync(base, base+uintptr(len(mem))); err != nil {
			t.Fatal(err)
		}
	}
	// Reads: every page of the first half (fault-around copies 4 at once).
	for pg := range pages / 2 {
		trackSink += mem[pg*ps]
	}
	if err := content.VerifyPattern(mem[:pages/2*ps], 5, 0); err != nil {
		t.Fatal(err)
	}
	mem[3*ps+8]++    // present page, written later
	mem[20*ps] = 1   // first touch is a write
	mem[21*ps+1] = 2 // in the same fault-around window as 20
	if got := written(); !slices.Equal(got, []int{3, 20, 21}) {
		t.Fatalf("written pages %v, want [3 20 21] (pages copied in on reads must stay clean)", got)
	}
	// A page whose first touch was a write was filled from the content
	// before the write landed.
	if err := content.VerifyPattern(mem[20*ps+8:21*ps], 5, uint64(20*ps+8)); err != nil {
		t.Fatal(err)
	}
	if mem[20*ps] != 1 || mem[21*ps+1] != 2 {
		t.Fatal("writes lost")
	}
	// Re-protected: a new epoch sees only new writes.
	mem[30*ps]++
	mem[3*ps+9]++ // written again in the new epoch
	if got := written(); !slices.Equal(got, []int{3, 30}) {
		t.Fatalf("second epoch: %v, want [3 30]", got)
	}
	if got := written(); len(got) != 0 {
		t.Fatalf("idle epoch: %v", got)
	}
	// First touches in order: the read faults of the first half (every
	// fourth page: fault-around maps 4), then page 20's write (21 came
	// with it), then page 30's; page 3's writes were no first touch.
	order, err := p.TouchOrder(1, base, uintptr(len(mem)))
	if err != nil || !slices.Equal(order, []uint64{0, 4, 8, 12, 20, 30}) {
		t.Fatalf("TouchOrder = %v, %v; want [0 4 8 12 20 30]", order, err)
	}
}

// A Track region on a uffd this pager did not negotiate is refused: a
// write there would raise a WP fault nobody handles.
func TestTrackRegionNeedsNegotiatedUffd(t *testing.T) {
	needUffd(t)
	p := newPager(t, pager.Options{})
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.API(0); err != nil { // negotiated elsewhere, without WP_ASYNC
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	mem, err := linux.Mmap(linux.PageSize(), linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	err = p.AddRegion(1, pager.Region{Start: uintptr(unsafe.Pointer(&mem[0])), Length: uintptr(len(mem)),
		Dataspace: "t", Content: content.Zero(), Track: true})
	if !errors.Is(err, pager.ErrBadRegion) {
		t.Fatalf("AddRegion(Track) on a foreign-negotiated uffd: %v", err)
	}
}

var trackSink byte

// TestWPFaultUntrackedRegion: a write-protect fault in a region this pager
// does not track (another holder's, e.g. after a failover) is let through
// instead of faulting forever.
func TestWPFaultUntrackedRegion(t *testing.T) {
	needUffd(t)
	p := newPager(t, pager.Options{SyncWriteTracking: true})
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	uu, err := p.Uffd(1)
	if err != nil {
		t.Fatal(err)
	}
	defer uu.Close()
	ps := linux.PageSize()
	mem, err := linux.Mmap(2*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_POPULATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "u", Content: content.Zero()}); err != nil {
		t.Fatal(err)
	}
	// Another holder registers the range for WP and protects it.
	if _, err := uu.Register(base, uintptr(len(mem)), linux.UFFDIO_REGISTER_MODE_MISSING|linux.UFFDIO_REGISTER_MODE_WP); err != nil {
		t.Fatal(err)
	}
	if err := uu.WriteProtect(base, uintptr(len(mem)), linux.UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { mem[ps] = 7; close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("a write to a protected page of an untracked region never completed")
	}
}

// TestTrackFirstWriteOneFault: a write that is a page's first touch costs
// one fault to the pager in either mode — the page is copied in
// unprotected, so the writer's retry does not raise a write-protect fault
// on top (sync tracking used to serve two per page) — and the page counts
// as written, with its content filled before the write landed.
func TestTrackFirstWriteOneFault(t *testing.T) {
	for _, sync := range []bool{false, true} {
		name := "async"
		if sync {
			name = "sync"
		}
		t.Run(name, func(t *testing.T) {
			needUffd(t)
			if !sync && !linux.HaveWPAsync() {
				t.Skip("kernel lacks async write protection (Linux 6.7)")
			}
			p := newPager(t, pager.Options{SyncWriteTracking: sync})
			u, err := linux.OpenUffd()
			if err != nil {
				t.Fatal(err)
			}
			if err := p.AddUffd(1, u, 0, true); err != nil {
				t.Fatal(err)
			}
			ps := linux.PageSize()
			const pages = 64
			mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
			if err != nil {
				t.Fatal(err)
			}
			defer linux.Munmap(mem)
			base := addrOf(mem)
			if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "w", Content: content.Pattern(4), Track: true}); err != nil {
				t.Fatal(err)
			}
			defer p.RemoveRegion(1, base)
			pm, err := linux.OpenPagemap(0)
			if err != nil {
				t.Fatal(err)
			}
			defer pm.Close()
			if !sync {
				if err := pm.WriteProtectAsync(base, base+uintptr(len(mem))); err != nil {
					t.Fatal(err)
				}
			}
			for pg := 0; pg < pages; pg += 2 {
				mem[pg*ps] = 0xAB // a store: the first touch is a write
			}
			var got []int
			if sync {
				w, err := p.TakeWritten(1, base, uintptr(len(mem)))
				if err != nil {
					t.Fatal(err)
				}
				for _, pg := range w {
					got = append(got, int(pg))
				}
			} else {
				regs, err := pm.WrittenPages(base, base+uintptr(len(mem)), true, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				for _, g := range regs {
					for a := g.Start; a < g.End; a += uint64(ps) {
						got = append(got, int((a-uint64(base))/uint64(ps)))
					}
				}
			}
			var want []int
			for pg := 0; pg < pages; pg += 2 {
				want = append(want, pg)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("written pages %v, want %v", got, want)
			}
			// The kernel may raise a fault again (a signal): allow some,
			// not a second fault per page.
			if f := p.Stats()["w"].Faults; f < pages/2 || f >= pages/2+pages/4 {
				t.Errorf("%d faults served for %d first writes, want about one each", f, pages/2)
			}
			for pg := 0; pg < pages; pg += 2 {
				if mem[pg*ps] != 0xAB {
					t.Fatalf("page %d: write lost", pg)
				}
				if err := content.VerifyPattern(mem[pg*ps+8:(pg+1)*ps], 4, uint64(pg*ps+8)); err != nil {
					t.Fatalf("page %d: %v", pg, err)
				}
			}
			// Written in the next epoch: page 2 again. (A fault the
			// kernel raised again for a write of the last epoch may
			// record its page once more: stored twice, never lost.)
			mem[2*ps+9] = 1
			if sync {
				w, err := p.TakeWritten(1, base, uintptr(len(mem)))
				if err != nil || !slices.Contains(w, 2) {
					t.Fatalf("next epoch: %v, %v; want page 2 in it", w, err)
				}
				for _, pg := range w {
					if !slices.Contains(want, int(pg)) {
						t.Fatalf("next epoch: %v: page %d was never written", w, pg)
					}
				}
			}
		})
	}
}
