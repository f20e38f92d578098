package pager_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/ckpt"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// BenchmarkPrefetchOrder: the restore prefetch of a 64 MiB region whose
// content is a one-layer checkpoint image (page cache warm), every page in
// order, the pager on every CPU or on one, next to a sequential read of the layer file in 1 MiB reads (the
// bench's floor) and to the same prefetch from a zero source (no read, no
// checksum: the UFFDIO_COPY part). Reported: MB/s of each, and the
// prefetch ÷ read throughput ratio.
func BenchmarkPrefetchOrder(b *testing.B) {
	needUffd(b)
	cpus, err := linux.ThreadAffinity()
	if err != nil {
		b.Fatal(err)
	}
	b.Run("cpus=all", func(b *testing.B) { benchPrefetchOrder(b, hw.CPUSet{}) })
	b.Run("cpus=1", func(b *testing.B) { benchPrefetchOrder(b, hw.NewSet(cpus.Slice()[len(cpus.Slice())-1])) })
}

// benchPrefetchOrder is BenchmarkPrefetchOrder with the pager on cpus.
func benchPrefetchOrder(b *testing.B, cpus hw.CPUSet) {
	const size = 64 << 20
	ps := linux.PageSize()
	npages := size / ps
	dir := filepath.Join(b.TempDir(), "img")
	im, err := ckpt.Create(dir, size, ps)
	if err != nil {
		b.Fatal(err)
	}
	all := make([]uint64, npages)
	for i := range all {
		all[i] = uint64(i)
	}
	w, err := im.NewLayer(all, true)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, size)
	if err := content.Pattern(9).Fill(data, 0); err != nil {
		b.Fatal(err)
	}
	if err := w.Write(data); err != nil {
		b.Fatal(err)
	}
	info, err := w.Commit()
	if err != nil {
		b.Fatal(err)
	}
	rd, err := ckpt.OpenReader(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	p, err := pager.New(pager.Options{CPUs: cpus})
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
	readFile := func() time.Duration {
		f, err := os.Open(info.File)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 1<<20)
		t0 := time.Now()
		for {
			n, err := f.Read(buf)
			if n == 0 || err != nil {
				break
			}
		}
		return time.Since(t0)
	}
	prefetch := func(src content.Source) time.Duration {
		mem, err := linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
		if err != nil {
			b.Fatal(err)
		}
		defer linux.Munmap(mem)
		linux.Madvise(mem, linux.MADV_NOHUGEPAGE)
		base := addrOf(mem)
		if err := p.AddRegion(1, pager.Region{Start: base, Length: size, Dataspace: "r", Content: src}); err != nil {
			b.Fatal(err)
		}
		defer p.RemoveRegion(1, base)
		t0 := time.Now()
		o, err := p.PrefetchOrder(1, base, all)
		if err != nil {
			b.Fatal(err)
		}
		<-o.Done()
		d := time.Since(t0)
		if res := o.Result(); res.Err != nil || res.Mapped != npages {
			b.Fatalf("prefetch: %+v", res)
		}
		return d
	}
	readFile()
	var rt, pt, zt time.Duration
	b.ResetTimer()
	for range b.N {
		rt += readFile()
		pt += prefetch(rd)
		zt += prefetch(content.Zero())
	}
	mbs := func(d time.Duration) float64 { return float64(b.N) * size / d.Seconds() / 1e6 }
	b.ReportMetric(mbs(rt), "read-MB/s")
	b.ReportMetric(mbs(pt), "prefetch-MB/s")
	b.ReportMetric(mbs(zt), "zero-prefetch-MB/s")
	b.ReportMetric(rt.Seconds()/pt.Seconds(), "prefetch/read")
}
