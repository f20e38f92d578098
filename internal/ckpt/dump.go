package ckpt

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"

	"github.com/vcored/vcored/internal/linux"
)

// Region is a dataspace as one process maps it: Size bytes at Addr in the
// address space of Pid.
type Region struct {
	Pid  int
	Addr uintptr
	Size uint64
}

func (r Region) end() uintptr { return r.Addr + uintptr(r.Size) }

// Tracker finds the pages of a region written since the last checkpoint.
type Tracker interface {
	// Dirty returns the pages (indexes from the region's start,
	// ascending, each once however often it was written) written since
	// the previous call or since the tracker began, and begins a new
	// epoch: a write after it (to any page) is in the next call's pages.
	// A page read after Dirty returns holds every write made before it.
	// So pages read while the process is stopped, from Dirty until the
	// read, are the region at one instant; pages read while it runs are
	// not, until the pages of a further Dirty, called and read while it
	// is stopped, are read over them (a checkpoint's pre-copy).
	Dirty() ([]uint64, error)
	// Close stops tracking (the write protection stays until the range
	// is unregistered).
	Close() error
}

// AsyncTracker tracks writes with async write protection and PAGEMAP_SCAN:
// no fault reaches anybody, the kernel just marks the pages written.
type AsyncTracker struct {
	r   Region
	pm  *linux.Pagemap
	vec []linux.PageRegion
}

// NewAsyncTracker starts tracking r. The range must be registered with
// UFFDIO_REGISTER_MODE_WP on a userfaultfd of r.Pid's that negotiated
// linux.WPAsyncFeatures; NewAsyncTracker write-protects it (every page
// clean from now on).
func NewAsyncTracker(r Region) (*AsyncTracker, error) {
	pm, err := linux.OpenPagemap(r.Pid)
	if err != nil {
		return nil, err
	}
	if err := pm.WriteProtectAsync(r.Addr, r.end()); err != nil {
		pm.Close()
		return nil, fmt.Errorf("ckpt: start tracking %#x+%#x of pid %d: %w", r.Addr, r.Size, r.Pid, err)
	}
	return &AsyncTracker{r: r, pm: pm, vec: make([]linux.PageRegion, 256)}, nil
}

// Dirty lists and re-protects the written pages in one walk.
func (t *AsyncTracker) Dirty() ([]uint64, error) {
	regs, err := t.pm.WrittenPages(t.r.Addr, t.r.end(), true, t.vec, nil)
	if err != nil {
		return nil, fmt.Errorf("ckpt: dirty pages of pid %d: %w", t.r.Pid, err)
	}
	ps := uint64(linux.PageSize())
	var out []uint64
	for _, g := range regs {
		for a := g.Start; a < g.End; a += ps {
			out = append(out, (a-uint64(t.r.Addr))/ps)
		}
	}
	return out, nil
}

// Close closes the pagemap.
func (t *AsyncTracker) Close() error { return t.pm.Close() }

// SyncTracker tracks writes with synchronous write protection, for kernels
// without WP_ASYNC (the qemu guests' 6.1): the first write to each
// protected page raises a fault on the userfaultfd, whose reader calls
// Fault; the page is recorded and unprotected, so later writes in the same
// epoch run free. A page populated by the pager's UFFDIO_COPY on a write
// fault is dirty too: the pager calls MarkDirty for it.
type SyncTracker struct {
	u *linux.Uffd
	r Region

	mu   sync.Mutex
	bits []uint64 // one bit per page of the current epoch
}

// NewSyncTracker starts tracking r through u (a userfaultfd of r.Pid's on
// which the range is registered with UFFDIO_REGISTER_MODE_WP), write
// protecting the range. Without UFFD_FEATURE_WP_UNPOPULATED only present
// pages are protected: the others reach the pager as missing-page faults.
func NewSyncTracker(u *linux.Uffd, r Region) (*SyncTracker, error) {
	t := &SyncTracker{u: u, r: r, bits: make([]uint64, (r.Size/uint64(linux.PageSize())+63)/64)}
	if err := u.WriteProtect(r.Addr, uintptr(r.Size), linux.UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
		return nil, fmt.Errorf("ckpt: write-protect %#x+%#x of pid %d: %w", r.Addr, r.Size, r.Pid, err)
	}
	return t, nil
}

// Contains reports whether addr is in the tracked region.
func (t *SyncTracker) Contains(addr uintptr) bool { return addr >= t.r.Addr && addr < t.r.end() }

// MarkDirty records a page (index from the region's start) as written.
func (t *SyncTracker) MarkDirty(page uint64) {
	t.mu.Lock()
	t.bits[page/64] |= 1 << (page % 64)
	t.mu.Unlock()
}

// Fault handles a write-protect fault at addr (a UFFD_EVENT_PAGEFAULT with
// UFFD_PAGEFAULT_FLAG_WP): record the page, unprotect it and wake the
// writer.
func (t *SyncTracker) Fault(addr uintptr) error {
	if !t.Contains(addr) {
		return fmt.Errorf("ckpt: WP fault at %#x outside the tracked %#x+%#x", addr, t.r.Addr, t.r.Size)
	}
	ps := uintptr(linux.PageSize())
	page := (addr - t.r.Addr) / ps
	t.MarkDirty(uint64(page))
	err := t.u.WriteProtect(t.r.Addr+page*ps, ps, 0)
	if err != nil && !errors.Is(err, linux.ENOENT) {
		return fmt.Errorf("ckpt: unprotect %#x of pid %d: %w", t.r.Addr+page*ps, t.r.Pid, err)
	}
	return nil
}

// Dirty returns the recorded pages and protects the range again.
func (t *SyncTracker) Dirty() ([]uint64, error) {
	t.mu.Lock()
	var out []uint64
	for i, w := range t.bits {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			out = append(out, uint64(i*64+b))
			w &= w - 1
		}
		t.bits[i] = 0
	}
	t.mu.Unlock()
	if err := t.u.WriteProtect(t.r.Addr, uintptr(t.r.Size), linux.UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
		return nil, fmt.Errorf("ckpt: re-protect %#x+%#x of pid %d: %w", t.r.Addr, t.r.Size, t.r.Pid, err)
	}
	return out, nil
}

// Close does nothing: the userfaultfd belongs to the caller.
func (t *SyncTracker) Close() error { return nil }

// PresentPages returns the pages of r its process has touched (present or
// swapped out): what a full checkpoint stores. It does not fault pages in.
func PresentPages(r Region) ([]uint64, error) {
	pm, err := linux.OpenPagemap(r.Pid)
	if err != nil {
		return nil, err
	}
	defer pm.Close()
	return pm.PresentPages(r.Addr, r.end())
}

// dumpBatch is how many pages StageLayer reads per process_vm_readv.
const dumpBatch = 256

// checkRegion checks that r's pages fit im.
func checkRegion(im *Image, r Region) error {
	if r.Size > im.Size() {
		return fmt.Errorf("ckpt: region of %d bytes, larger than image %s of %d", r.Size, im.Dir(), im.Size())
	}
	if linux.PageSize() != im.PageSize() {
		return fmt.Errorf("ckpt: page size %d, image %s has %d", linux.PageSize(), im.Dir(), im.PageSize())
	}
	return nil
}

// readSegs fills buf with pages (ascending indexes from r's start), page j
// of pages at buf[j*ps:], adjacent pages read as one segment.
func readSegs(r Region, pages []uint64, buf []byte, segs []linux.RemoteSeg) ([]linux.RemoteSeg, error) {
	ps := uint64(linux.PageSize())
	segs = segs[:0]
	for j, p := range pages {
		dst := buf[uint64(j)*ps : uint64(j+1)*ps]
		if k := len(segs); k > 0 && segs[k-1].Addr+uintptr(len(segs[k-1].Buf)) == r.Addr+uintptr(p*ps) {
			segs[k-1].Buf = buf[uint64(j)*ps-uint64(len(segs[k-1].Buf)) : uint64(j+1)*ps]
			continue
		}
		segs = append(segs, linux.RemoteSeg{Addr: r.Addr + uintptr(p*ps), Buf: dst})
	}
	if err := linux.ReadRemote(r.Pid, segs); err != nil {
		return segs, fmt.Errorf("ckpt: read pages of pid %d: %w", r.Pid, err)
	}
	return segs, nil
}

// Snapshot is the content of some pages of a region at one point in time,
// read out of its process into memory: a layer not written yet. A
// checkpoint takes it while the process is stopped and writes it
// (WriteSnapshot) after letting the process run again. Its memory is
// mapped for it alone: Release returns it to the system at once.
type Snapshot struct {
	Pages []uint64 // page indexes from the region's start, ascending
	Data  []byte   // their contents, page i of Pages at Data[i*PageSize:]
	m     []byte   // the mapping behind Data (nil when empty)
}

// Bytes is the memory the snapshot holds.
func (s *Snapshot) Bytes() int64 { return int64(len(s.Data)) }

// Release unmaps the snapshot's memory; Data is gone afterwards.
func (s *Snapshot) Release() {
	if s.m != nil {
		_ = linux.Munmap(s.m)
		s.m, s.Data = nil, nil
	}
}

// snapPopulate: Snap maps its buffer with MAP_POPULATE (one batched
// allocation) rather than letting process_vm_readv fault each page in.
var snapPopulate = true

// Snap reads pages (ascending indexes from r's start) out of r's process
// with process_vm_readv into memory: len(pages) × the page size bytes.
// The process should be stopped (frozen) meanwhile, so that the snapshot
// is one point in time; once Snap returns, it may run again. Release the
// snapshot when done.
func Snap(r Region, pages []uint64) (*Snapshot, error) {
	ps := uint64(linux.PageSize())
	for i, p := range pages {
		if p >= r.Size/ps {
			return nil, fmt.Errorf("ckpt: page %d is beyond the region of %d pages", p, r.Size/ps)
		}
		if i > 0 && p <= pages[i-1] {
			return nil, fmt.Errorf("ckpt: snapshot pages not strictly ascending at %d (%d after %d)", i, p, pages[i-1])
		}
	}
	s := &Snapshot{Pages: slices.Clone(pages)}
	if len(pages) == 0 {
		return s, nil
	}
	flags := linux.MAP_PRIVATE
	if snapPopulate {
		flags |= linux.MAP_POPULATE
	}
	m, err := linux.Mmap(len(pages)*int(ps), linux.PROT_READ|linux.PROT_WRITE, flags)
	if err != nil {
		return nil, fmt.Errorf("ckpt: snapshot buffer: %w", err)
	}
	s.m, s.Data = m, m
	if _, err := readSegs(r, pages, s.Data, nil); err != nil {
		s.Release()
		return nil, err
	}
	return s, nil
}

// WriteSnapshot commits s to im as one layer (full: a base layer that
// replaces the chain): written, fsynced, the manifest replaced — durable
// when it returns. Checksums and the all-zero test are computed here, not
// while the process is stopped.
func WriteSnapshot(im *Image, s *Snapshot, full bool) (LayerInfo, error) {
	return WriteSnapshots(im, full, s)
}

// WriteSnapshots commits the pages of snapshots of one region, oldest
// first, as one layer: the union of their pages, each with its content in
// the newest snapshot that has it. (A checkpoint copies the written pages
// while the process still runs, then, stopped, those written again since:
// together they are the region at the stop.)
func WriteSnapshots(im *Image, full bool, snaps ...*Snapshot) (LayerInfo, error) {
	ps := im.PageSize()
	if linux.PageSize() != ps {
		return LayerInfo{}, fmt.Errorf("ckpt: page size %d, image %s has %d", linux.PageSize(), im.Dir(), ps)
	}
	var live []*Snapshot
	for _, s := range snaps {
		if len(s.Data) != len(s.Pages)*ps {
			return LayerInfo{}, fmt.Errorf("ckpt: snapshot of %d pages holds %d bytes", len(s.Pages), len(s.Data))
		}
		if len(s.Pages) > 0 {
			live = append(live, s)
		}
	}
	if len(live) <= 1 {
		// One source: written straight from its memory.
		var pages []uint64
		var data []byte
		if len(live) == 1 {
			pages, data = live[0].Pages, live[0].Data
		}
		w, err := im.NewLayer(pages, full)
		if err != nil {
			return LayerInfo{}, err
		}
		// In pieces of dumpBatch pages: each Write is one pass over its
		// pages (checksum, zero test) then the file writes of its runs.
		chunk := dumpBatch * ps
		for off := 0; off < len(data); off += chunk {
			if err := w.Write(data[off:min(off+chunk, len(data))]); err != nil {
				w.Abort()
				return LayerInfo{}, err
			}
		}
		return w.Commit()
	}
	// Merge: walk the snapshots' page lists together; each page comes
	// from the newest snapshot that has it, gathered into a buffer of
	// dumpBatch pages per Write.
	type src struct {
		s *Snapshot
		i int
	}
	srcs := make([]src, len(live))
	for k, s := range live {
		srcs[k] = src{s: s}
	}
	var union []uint64
	var from [][]byte // the content of union[j]
	for {
		lo, found := uint64(0), false
		for _, c := range srcs {
			if c.i < len(c.s.Pages) && (!found || c.s.Pages[c.i] < lo) {
				lo, found = c.s.Pages[c.i], true
			}
		}
		if !found {
			break
		}
		var data []byte
		for k := range srcs {
			c := &srcs[k]
			if c.i < len(c.s.Pages) && c.s.Pages[c.i] == lo {
				data = c.s.Data[c.i*ps : (c.i+1)*ps] // newer ones come later
				c.i++
			}
		}
		if n := len(union); n > 0 && lo <= union[n-1] {
			return LayerInfo{}, fmt.Errorf("ckpt: snapshot pages not ascending at page %d", lo)
		}
		union = append(union, lo)
		from = append(from, data)
	}
	w, err := im.NewLayer(union, full)
	if err != nil {
		return LayerInfo{}, err
	}
	buf := make([]byte, dumpBatch*ps)
	for j := 0; j < len(union); {
		n := min(dumpBatch, len(union)-j)
		for k := range n {
			copy(buf[k*ps:(k+1)*ps], from[j+k])
		}
		if err := w.Write(buf[:n*ps]); err != nil {
			w.Abort()
			return LayerInfo{}, err
		}
		j += n
	}
	return w.Commit()
}

// Union returns the pages of a and b (each ascending) in ascending order,
// each once.
func Union(a, b []uint64) []uint64 {
	out := make([]uint64, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i, j = i+1, j+1
		}
	}
	return out
}

// StageLayer reads pages (ascending indexes from r's start, which is the
// dataspace's offset 0; r may be shorter than the image) out of r's
// process with process_vm_readv, dumpBatch pages at a time, and writes
// them to a new layer file of im (full: a base layer) without committing
// it: nothing is fsynced and the image is unchanged. The returned writer's
// Commit makes the layer durable and part of the image, its Abort drops
// it. The process should be stopped (frozen) until StageLayer returns, so
// that the layer is one point in time; it may run during the Commit. The
// memory used is one batch, whatever the number of pages.
func StageLayer(im *Image, r Region, pages []uint64, full bool) (*LayerWriter, error) {
	if err := checkRegion(im, r); err != nil {
		return nil, err
	}
	w, err := im.NewLayer(pages, full)
	if err != nil {
		return nil, err
	}
	ps := uint64(im.PageSize())
	buf := make([]byte, dumpBatch*ps)
	segs := make([]linux.RemoteSeg, 0, dumpBatch)
	for i := 0; i < len(pages); {
		n := min(dumpBatch, len(pages)-i)
		if segs, err = readSegs(r, pages[i:i+n], buf, segs); err != nil {
			w.Abort()
			return nil, err
		}
		if err := w.Write(buf[:uint64(n)*ps]); err != nil {
			w.Abort()
			return nil, err
		}
		i += n
	}
	return w, nil
}

// WriteLayer reads pages out of r's process and commits them to im as one
// layer: StageLayer, then Commit. The process should be stopped (frozen)
// meanwhile, so that the layer is one point in time.
func WriteLayer(im *Image, r Region, pages []uint64, full bool) (LayerInfo, error) {
	w, err := StageLayer(im, r, pages, full)
	if err != nil {
		return LayerInfo{}, err
	}
	return w.Commit()
}
