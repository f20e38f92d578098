package pager_test

import (
	"cmp"
	"errors"
	"github.com/vcored/vcored/internal/ckpt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// waitOrder waits for a restore prefetch to end (generous: the VM is
// shared).
func waitOrder(t *testing.T, o *pager.OrderPrefetch) pager.OrderPrefetchResult {
	t.Helper()
	select {
	case <-o.Done():
	case <-time.After(60 * time.Second):
		o.Stop()
		t.Fatalf("restore prefetch not done after 60s: %+v", o.Result())
	}
	return o.Result()
}

// presentPages lists the present pages of mem (this process), from the
// pagemap: without touching them.
func presentPages(t *testing.T, mem []byte) []uint64 {
	t.Helper()
	pm, err := linux.OpenPagemap(0)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	got, err := pm.PresentPages(addrOf(mem), addrOf(mem)+uintptr(len(mem)))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestPrefetchOrder: the pages of the order are mapped before anything
// touches them (the pagemap shows them, touching them raises no fault),
// with their content; a page the worker had faulted in (and written)
// before is left as it is; pages beyond the region and repeats are
// dropped; in a Track region the prefetched pages stay clean.
func TestPrefetchOrder(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	for _, track := range []bool{false, true} {
		if track && !linux.HaveWPAsync() {
			continue
		}
		p := newPager(t, pager.Options{FaultAround: 2})
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
		if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "r", Content: content.Pattern(6), Track: track}); err != nil {
			t.Fatal(err)
		}
		pm, err := linux.OpenPagemap(0)
		if err != nil {
			t.Fatal(err)
		}
		defer pm.Close()
		if track {
			if err := pm.WriteProtectAsync(base, base+uintptr(len(mem))); err != nil {
				t.Fatal(err)
			}
		}
		mem[5*ps] = 0xEE // faulted in (with page 4: fault-around 2) and written
		o, err := p.PrefetchOrder(1, base, []uint64{10, 11, 12, 5, 3, 63, 64, 1000, 10, 4})
		if err != nil {
			t.Fatal(err)
		}
		if o.Pages != 7 || o.Dropped != 3 {
			t.Fatalf("prefetch of %d pages, %d dropped; want 7 and 3 (64 and 1000 are beyond the region, 10 repeats)", o.Pages, o.Dropped)
		}
		res := waitOrder(t, o)
		if res.Err != nil || res.Ended || res.Mapped != 5 || res.Present != 2 {
			t.Fatalf("result %+v: want 5 mapped (3 10 11 12 63), 2 present (4 5)", res)
		}
		if got := presentPages(t, mem); !slices.Equal(got, []uint64{3, 4, 5, 10, 11, 12, 63}) {
			t.Fatalf("present before any touch: %v", got)
		}
		faults := p.Stats()["r"].Faults
		for _, pg := range []int{3, 10, 11, 12, 63} {
			if err := content.VerifyPattern(mem[pg*ps:(pg+1)*ps], 6, uint64(pg*ps)); err != nil {
				t.Fatalf("page %d: %v", pg, err)
			}
		}
		if f := p.Stats()["r"].Faults; f != faults {
			t.Errorf("touching prefetched pages raised %d faults", f-faults)
		}
		if mem[5*ps] != 0xEE {
			t.Fatal("the prefetch overwrote a page the worker had written")
		}
		if st := p.Stats()["r"]; st.Prefetched != 5 {
			t.Errorf("stats: %d prefetched, want 5", st.Prefetched)
		}
		if track {
			regs, err := pm.WrittenPages(base, base+uintptr(len(mem)), false, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(regs) != 1 || regs[0].Start != uint64(base)+uint64(5*ps) || regs[0].End != uint64(base)+uint64(6*ps) {
				t.Fatalf("written pages %+v: want only page 5 (prefetched pages are clean)", regs)
			}
		}
		if err := p.RemoveRegion(1, base); err != nil {
			t.Fatal(err)
		}
	}
}

// badSource fails the Fill of one page, as an image whose page fails its
// checksum does.
type badSource struct {
	content.Source
	bad uint64 // offset of the bad page
	ps  uint64
}

var errBadPage = errors.New("page fails its checksum")

func (s badSource) Fill(dst []byte, off uint64) error {
	if off <= s.bad && s.bad < off+uint64(len(dst)) {
		return errBadPage
	}
	return s.Source.Fill(dst, off)
}

// TestPrefetchOrderBadPage: a page whose content fails stops the prefetch
// with the error and is never mapped (nor what follows it).
func TestPrefetchOrderBadPage(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	p := newPager(t, pager.Options{})
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	mem, err := linux.Mmap(16*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := addrOf(mem)
	src := badSource{Source: content.Pattern(2), bad: uint64(7 * ps), ps: uint64(ps)}
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "b", Content: src}); err != nil {
		t.Fatal(err)
	}
	defer p.RemoveRegion(1, base)
	o, err := p.PrefetchOrder(1, base, []uint64{1, 2, 7, 8, 12})
	if err != nil {
		t.Fatal(err)
	}
	res := waitOrder(t, o)
	// Runs of the order: [1 2], [7 8] (fails at 7), [12].
	if !errors.Is(res.Err, errBadPage) || res.Mapped != 2 {
		t.Fatalf("result %+v: want the bad page's error after 2 pages mapped", res)
	}
	if got := presentPages(t, mem); !slices.Equal(got, []uint64{1, 2}) {
		t.Fatalf("present: %v, want [1 2]", got)
	}
}

// slowSource is a content source whose every Fill takes a while (an image
// on a slow disk).
type slowSource struct {
	content.Source
	d time.Duration
}

func (s slowSource) Fill(dst []byte, off uint64) error {
	time.Sleep(s.d)
	return s.Source.Fill(dst, off)
}

// TestPrefetchOrderFaultFirst: a real fault on a page late in the order is
// served while the prefetch is still far from it — it does not wait behind
// the prefetch — and the prefetch then skips that page.
func TestPrefetchOrderFaultFirst(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	p := newPager(t, pager.Options{})
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	const pages = 512
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := addrOf(mem)
	src := slowSource{Source: content.Pattern(8), d: 2 * time.Millisecond}
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "s", Content: src}); err != nil {
		t.Fatal(err)
	}
	defer p.RemoveRegion(1, base)
	// Every other page: one page per copy, one slow Fill each (≥ 0.5 s).
	var order []uint64
	for pg := uint64(0); pg < pages; pg += 2 {
		order = append(order, pg)
	}
	last := int(order[len(order)-1])
	o, err := p.PrefetchOrder(1, base, order)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { o.Stop(); <-o.Done() }()
	if err := content.VerifyPattern(mem[last*ps:(last+1)*ps], 8, uint64(last*ps)); err != nil {
		t.Fatal(err)
	}
	res := o.Result()
	if res.Done || res.Mapped >= len(order)-1 {
		t.Fatalf("the fault on the order's last page was served only once the prefetch got there: %+v", res)
	}
	res = waitOrder(t, o)
	if res.Err != nil || res.Mapped != len(order)-1 || res.Present != 1 {
		t.Fatalf("result %+v: want %d mapped, the faulted page present", res, len(order)-1)
	}
}

// TestPrefetchOrderRegionRemoved: a region removed while its prefetch runs
// ends the prefetch (nothing is mapped outside a registered region).
func TestPrefetchOrderRegionRemoved(t *testing.T) {
	needUffd(t)
	leakCheck(t)
	p := newPager(t, pager.Options{})
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	const pages = 256
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := addrOf(mem)
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "x", Content: slowSource{Source: content.Pattern(1), d: 5 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	var order []uint64
	for pg := uint64(0); pg < pages; pg += 2 {
		order = append(order, pg)
	}
	o, err := p.PrefetchOrder(1, base, order)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.RemoveRegion(1, base); err != nil {
		t.Fatal(err)
	}
	res := waitOrder(t, o)
	if !res.Ended || res.Err != nil || res.Mapped >= len(order) {
		t.Fatalf("result %+v: want ended early without error", res)
	}
	if _, err := p.PrefetchOrder(1, base, order); !errors.Is(err, pager.ErrNoRegion) {
		t.Fatalf("prefetch of a removed region: %v", err)
	}
}

// TestPrefetchOrderCorruptInRun: a restore of a real checkpoint image
// whose page in the middle of a long run of the order fails its checksum:
// the prefetch stops with ckpt.ErrCorrupt, the pages mapped are a prefix
// of the order before the bad page's run (every run before it, whole), and
// neither the bad page nor anything after it is mapped.
func TestPrefetchOrderCorruptInRun(t *testing.T) {
	needUffd(t)
	for _, cpus := range cpuChoices(t) {
		t.Run("cpus="+cmp.Or(cpus.String(), "all"), func(t *testing.T) { testPrefetchOrderCorruptInRun(t, cpus) })
	}
}

func testPrefetchOrderCorruptInRun(t *testing.T, cpus hw.CPUSet) {
	leakCheck(t)
	ps := linux.PageSize()
	const pages, bad = 1024, 700
	dir := filepath.Join(t.TempDir(), "img")
	im, err := ckpt.Create(dir, pages*uint64(ps), ps)
	if err != nil {
		t.Fatal(err)
	}
	all := make([]uint64, pages)
	for i := range all {
		all[i] = uint64(i)
	}
	w, err := im.NewLayer(all, true)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, pages*ps)
	if err := content.Pattern(4).Fill(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	info, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	// Every page has data: the data section is the file's last pages.
	f, err := os.OpenFile(info.File, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0x5A}, info.Bytes-int64((pages-bad)*ps)+123); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rd, err := ckpt.OpenReader(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	p := newPager(t, pager.Options{CPUs: cpus})
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := addrOf(mem)
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "c", Content: rd}); err != nil {
		t.Fatal(err)
	}
	defer p.RemoveRegion(1, base)
	o, err := p.PrefetchOrder(1, base, all)
	if err != nil {
		t.Fatal(err)
	}
	res := waitOrder(t, o)
	if !errors.Is(res.Err, ckpt.ErrCorrupt) || res.Ended {
		t.Fatalf("result %+v: want the corrupt page's error", res)
	}
	got := presentPages(t, mem)
	if len(got) != res.Mapped || res.Mapped == 0 || res.Mapped > bad {
		t.Fatalf("present %d pages (%d mapped): want the runs before page %d", len(got), res.Mapped, bad)
	}
	for i, pg := range got {
		if pg != uint64(i) {
			t.Fatalf("present pages %v...: not a prefix of the order", got[:i+1])
		}
	}
	for _, pg := range got {
		if err := content.VerifyPattern(mem[pg*uint64(ps):(pg+1)*uint64(ps)], 4, pg*uint64(ps)); err != nil {
			t.Fatalf("page %d: %v", pg, err)
		}
	}
}

// gateSource is a content source whose Fill waits for release (closed),
// then fails: the source of a region that goes away while the prefetch
// reads it (its image closed).
type gateSource struct {
	content.Source
	entered chan struct{}
	release chan struct{}
}

func (s gateSource) Fill(dst []byte, off uint64) error {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return errors.New("image closed")
}

// TestPrefetchOrderGoneWhileReading: a read that fails because the region
// was removed meanwhile ends the prefetch without error, mapping nothing.
func TestPrefetchOrderGoneWhileReading(t *testing.T) {
	needUffd(t)
	for _, cpus := range cpuChoices(t) {
		t.Run("cpus="+cmp.Or(cpus.String(), "all"), func(t *testing.T) { testPrefetchOrderGoneWhileReading(t, cpus) })
	}
}

func testPrefetchOrderGoneWhileReading(t *testing.T, cpus hw.CPUSet) {
	leakCheck(t)
	p := newPager(t, pager.Options{CPUs: cpus})
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
	src := gateSource{Source: content.Pattern(3), entered: make(chan struct{}, 1), release: make(chan struct{})}
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "g", Content: src}); err != nil {
		t.Fatal(err)
	}
	o, err := p.PrefetchOrder(1, base, []uint64{0, 1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	<-src.entered
	if err := p.RemoveRegion(1, base); err != nil {
		t.Fatal(err)
	}
	close(src.release)
	res := waitOrder(t, o)
	if !res.Ended || res.Err != nil || res.Mapped != 0 {
		t.Fatalf("result %+v: want ended, no error, nothing mapped", res)
	}
}

// cpuChoices: a pager on every CPU (unpinned: the restore prefetch reads
// and maps on two threads) and on one (one thread).
func cpuChoices(t *testing.T) []hw.CPUSet {
	cpus, err := linux.ThreadAffinity()
	if err != nil {
		t.Fatal(err)
	}
	return []hw.CPUSet{{}, hw.NewSet(cpus.Slice()[0])}
}

// TestPrefetchOrderStop: Stop ends a running prefetch early, reported as
// Ended, without an error and before it mapped every page.
func TestPrefetchOrderStop(t *testing.T) {
	needUffd(t)
	for _, cpus := range cpuChoices(t) {
		t.Run("cpus="+cmp.Or(cpus.String(), "all"), func(t *testing.T) { testPrefetchOrderStop(t, cpus) })
	}
}

func testPrefetchOrderStop(t *testing.T, cpus hw.CPUSet) {
	leakCheck(t)
	p := newPager(t, pager.Options{CPUs: cpus})
	u, err := linux.OpenUffd()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	const pages = 256
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := addrOf(mem)
	src := gateSource{Source: content.Pattern(3), entered: make(chan struct{}, 1), release: make(chan struct{})}
	if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "s", Content: passSource{src}}); err != nil {
		t.Fatal(err)
	}
	defer p.RemoveRegion(1, base)
	var order []uint64
	for pg := uint64(0); pg < pages; pg += 2 { // one page per run
		order = append(order, pg)
	}
	o, err := p.PrefetchOrder(1, base, order)
	if err != nil {
		t.Fatal(err)
	}
	<-src.entered // reading the first run
	o.Stop()
	close(src.release)
	res := waitOrder(t, o)
	if !res.Ended || res.Err != nil || res.Mapped >= len(order) {
		t.Fatalf("result %+v: want ended early by Stop, no error", res)
	}
}

// passSource is a gateSource whose Fill succeeds once released.
type passSource struct{ g gateSource }

func (s passSource) Fill(dst []byte, off uint64) error {
	select {
	case s.g.entered <- struct{}{}:
	default:
	}
	<-s.g.release
	return s.g.Source.Fill(dst, off)
}

func (s passSource) IsZero() bool   { return false }
func (s passSource) Size() uint64   { return s.g.Source.Size() }
func (s passSource) String() string { return "pass" }
