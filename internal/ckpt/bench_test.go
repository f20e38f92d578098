package ckpt

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
)

// Benchmarks of checkpointing (go test -bench . ./internal/ckpt/). Each
// reports ratios measured in the same run, since absolute times on the
// shared dev VM vary tenfold between days. VCORED_CKPT_BENCH_FULL=1 adds
// the 1 GiB size of docs/CHECKPOINT.md; the quick size is 64 MiB.

func benchSizes() []int {
	s := []int{64 << 20}
	if os.Getenv("VCORED_CKPT_BENCH_FULL") != "" {
		s = append(s, 1<<30)
	}
	return s
}

func sizeName(n int) string {
	if n >= 1<<30 {
		return strconv.Itoa(n>>30) + "GiB"
	}
	return strconv.Itoa(n>>20) + "MiB"
}

// BenchmarkAsyncTrackingOverhead: a write-heavy loop (every page of a
// 16 MiB region written `writes` times per epoch, then one epoch change)
// with async write tracking (each epoch: PAGEMAP_SCAN collects and
// re-protects; the first write to each page takes a kernel fault) and
// without, alternating in the same iteration. Reports ns per page-epoch
// of each and their ratio.
func BenchmarkAsyncTrackingOverhead(b *testing.B) {
	if !linux.HaveWPAsync() {
		b.Skip("kernel lacks async write protection")
	}
	for _, writes := range []int{1, 64} {
		b.Run("writes="+strconv.Itoa(writes), func(b *testing.B) {
			const size = 16 << 20
			ps := linux.PageSize()
			pages := size / ps
			plain, err := linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_POPULATE)
			if err != nil {
				b.Fatal(err)
			}
			defer linux.Munmap(plain)
			tracked, err := linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_POPULATE)
			if err != nil {
				b.Fatal(err)
			}
			defer linux.Munmap(tracked)
			u, err := linux.OpenUffd()
			if err != nil {
				b.Skip(err)
			}
			defer u.Close()
			if _, err := u.API(linux.WPAsyncFeatures); err != nil {
				b.Fatal(err)
			}
			base := uintptr(unsafe.Pointer(&tracked[0]))
			if _, err := u.Register(base, size, linux.UFFDIO_REGISTER_MODE_WP); err != nil {
				b.Fatal(err)
			}
			tr, err := NewAsyncTracker(Region{Pid: os.Getpid(), Addr: base, Size: size})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			loop := func(mem []byte, k int) {
				for range writes {
					for p := 0; p < pages; p++ {
						mem[p*ps+(k%64)*8]++
					}
				}
			}
			var plainT, trackedT time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				loop(plain, i)
				t1 := time.Now()
				loop(tracked, i)
				d, err := tr.Dirty()
				t2 := time.Now()
				if err != nil {
					b.Fatal(err)
				}
				if len(d) != pages {
					b.Fatalf("%d dirty pages, want %d", len(d), pages)
				}
				plainT += t1.Sub(t0)
				trackedT += t2.Sub(t1)
			}
			n := float64(b.N * pages)
			b.ReportMetric(float64(plainT.Nanoseconds())/n, "ns/page-untracked")
			b.ReportMetric(float64(trackedT.Nanoseconds())/n, "ns/page-tracked")
			b.ReportMetric(float64(trackedT)/float64(plainT), "ratio")
		})
	}
}

// benchRegion maps size bytes in this process filled with a pattern (every
// page non-zero, so a full layer stores every page).
func benchRegion(b *testing.B, size int) (Region, []byte) {
	mem, err := linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { linux.Munmap(mem) })
	content.Pattern(7).Fill(mem, 0)
	return Region{Pid: os.Getpid(), Addr: uintptr(unsafe.Pointer(&mem[0])), Size: uint64(size)}, mem
}

func allPages(n int) []uint64 {
	p := make([]uint64, n)
	for i := range p {
		p[i] = uint64(i)
	}
	return p
}

// ddWrite writes size bytes of buf-sized chunks to a new file in dir and
// fsyncs it: the floor a layer write is compared against.
func ddWrite(b *testing.B, dir string, mem []byte) {
	f, err := os.Create(filepath.Join(dir, "dd"))
	if err != nil {
		b.Fatal(err)
	}
	for off := 0; off < len(mem); off += 1 << 20 {
		if _, err := f.Write(mem[off:min(off+1<<20, len(mem))]); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	os.Remove(f.Name())
}

// BenchmarkCheckpointWrite: per iteration, a full checkpoint of the
// region (every page, read with process_vm_readv, checksummed, written,
// fsynced, committed), an incremental one of 1% random pages on top, and
// a dd-like sequential write of the same bytes to the same directory.
// Reports each time and the ratios full/dd and incremental/full.
//
// The incremental checkpoint is taken both ways, alternating which goes
// first: written while the process would be frozen (WriteLayer: read,
// checksum, write, fsync, commit) and copied while frozen then written
// (Snap, then WriteSnapshot after the thaw). The dirty pages are found
// by an async tracker's PAGEMAP_SCAN over the whole region (ms-scan), as
// in the vcore. ms-incr1% is WriteLayer; ms-incr1%-frozen scan + Snap,
// what the process waits for now; ms-incr1%-total scan + Snap +
// WriteSnapshot.
func BenchmarkCheckpointWrite(b *testing.B) {
	for _, size := range benchSizes() {
		b.Run(sizeName(size), func(b *testing.B) {
			r, mem := benchRegion(b, size)
			tr := benchTracker(b, r)
			ps := linux.PageSize()
			npages := size / ps
			all := allPages(npages)
			rng := rand.New(rand.NewPCG(1, 2))
			dir := b.TempDir()
			var fullT, incrT, scanT, snapT, snapWriteT, ddT time.Duration
			// dirty writes 1% random pages and collects them.
			dirty := func() ([]uint64, time.Duration) {
				set := map[uint64]bool{}
				for len(set) < max(1, npages/100) {
					p := rng.Uint64N(uint64(npages))
					set[p] = true
					mem[int(p)*ps]++
				}
				t0 := time.Now()
				d := tr.dirty(b)
				if len(d) != len(set) {
					b.Fatalf("tracker found %d dirty pages, %d written", len(d), len(set))
				}
				return d, time.Since(t0)
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				img := filepath.Join(dir, "img"+strconv.Itoa(i))
				im, err := Create(img, uint64(size), ps)
				if err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				if _, err := WriteLayer(im, r, all, true); err != nil {
					b.Fatal(err)
				}
				fullT += time.Since(t0)
				tr.dirty(b) // the full checkpoint's epoch
				for k := range 2 {
					d, scan := dirty()
					if (i+k)%2 == 0 {
						t1 := time.Now()
						if _, err := WriteLayer(im, r, d, false); err != nil {
							b.Fatal(err)
						}
						incrT += time.Since(t1)
						continue
					}
					scanT += scan
					t1 := time.Now()
					s, err := Snap(r, d)
					if err != nil {
						b.Fatal(err)
					}
					t2 := time.Now()
					if _, err := WriteSnapshot(im, s, false); err != nil {
						b.Fatal(err)
					}
					s.Release()
					t3 := time.Now()
					snapT += t2.Sub(t1)
					snapWriteT += t3.Sub(t2)
				}
				t4 := time.Now()
				ddWrite(b, dir, mem)
				ddT += time.Since(t4)
				b.StopTimer()
				os.RemoveAll(img)
				b.StartTimer()
			}
			n := float64(b.N)
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
			b.ReportMetric(ms(fullT), "ms-full")
			b.ReportMetric(ms(incrT), "ms-incr1%")
			b.ReportMetric(ms(scanT), "ms-scan")
			b.ReportMetric(ms(scanT+snapT), "ms-incr1%-frozen")
			b.ReportMetric(ms(scanT+snapT+snapWriteT), "ms-incr1%-total")
			b.ReportMetric(ms(ddT), "ms-dd")
			b.ReportMetric(float64(fullT)/float64(ddT), "full/dd")
			b.ReportMetric(float64(incrT)/float64(fullT), "incr/full")
		})
	}
}

// benchTrack tracks writes to r (memory of this process) with async write
// protection on a userfaultfd of its own.
type benchTrack struct {
	tr *AsyncTracker
	u  *linux.Uffd
}

func benchTracker(b *testing.B, r Region) *benchTrack {
	if !linux.HaveWPAsync() {
		b.Skip("kernel lacks async write protection")
	}
	u, err := linux.OpenUffd()
	if err != nil {
		b.Skip(err)
	}
	if _, err := u.API(linux.WPAsyncFeatures); err != nil {
		u.Close()
		b.Fatal(err)
	}
	if _, err := u.Register(r.Addr, uintptr(r.Size), linux.UFFDIO_REGISTER_MODE_WP); err != nil {
		u.Close()
		b.Fatal(err)
	}
	tr, err := NewAsyncTracker(r)
	if err != nil {
		u.Close()
		b.Fatal(err)
	}
	t := &benchTrack{tr: tr, u: u}
	b.Cleanup(func() { tr.Close(); u.Close() })
	return t
}

func (t *benchTrack) dirty(b *testing.B) []uint64 {
	d, err := t.tr.Dirty()
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkRestoreFill: reading a whole image back through the reader (the
// pager's content source) in 64 KiB fault-around pieces.
func BenchmarkRestoreFill(b *testing.B) {
	const size = 64 << 20
	r, _ := benchRegion(b, size)
	ps := linux.PageSize()
	dir := filepath.Join(b.TempDir(), "img")
	im, err := Create(dir, size, ps)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := WriteLayer(im, r, allPages(size/ps), true); err != nil {
		b.Fatal(err)
	}
	rd, err := OpenReader(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	buf := make([]byte, 64<<10)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for off := uint64(0); off < size; off += uint64(len(buf)) {
			if err := rd.Fill(buf, off); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkSnap: Snap of 1% random pages of a 1 GiB region (what a
// checkpoint copies while the process is frozen), its buffer populated in
// one go or faulted in page by page by process_vm_readv.
func BenchmarkSnap(b *testing.B) {
	const size = 1 << 30
	r, _ := benchRegion(b, size)
	ps := linux.PageSize()
	npages := size / ps
	rng := rand.New(rand.NewPCG(1, 2))
	set := map[uint64]bool{}
	for len(set) < npages/100 {
		set[rng.Uint64N(uint64(npages))] = true
	}
	var pages []uint64
	for p := range set {
		pages = append(pages, p)
	}
	slices.Sort(pages)
	for _, pop := range []bool{true, false} {
		b.Run("populate="+strconv.FormatBool(pop), func(b *testing.B) {
			old := snapPopulate
			snapPopulate = pop
			defer func() { snapPopulate = old }()
			for i := 0; i < b.N; i++ {
				s, err := Snap(r, pages)
				if err != nil {
					b.Fatal(err)
				}
				s.Release()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(pages)), "ns/page")
		})
	}
}
