package ckpt

import (
	"errors"
	"fmt"
	"math/bits"
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
	// epoch. The region's process must be stopped (its cgroup frozen)
	// from this call until the pages have been read, or a write made
	// meanwhile may be missed by both epochs.
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

// dumpBatch is how many pages WriteLayer reads per process_vm_readv.
const dumpBatch = 256

// WriteLayer reads pages (ascending indexes from r's start, which is the
// dataspace's offset 0; r may be shorter than the image) out of r's
// process with process_vm_readv and commits them to im as one layer
// (full: a base layer that replaces the chain). The process should be
// stopped (frozen) meanwhile, so that the layer is one point in time.
func WriteLayer(im *Image, r Region, pages []uint64, full bool) (LayerInfo, error) {
	if r.Size > im.Size() {
		return LayerInfo{}, fmt.Errorf("ckpt: region of %d bytes, larger than image %s of %d", r.Size, im.Dir(), im.Size())
	}
	if linux.PageSize() != im.PageSize() {
		return LayerInfo{}, fmt.Errorf("ckpt: page size %d, image %s has %d", linux.PageSize(), im.Dir(), im.PageSize())
	}
	w, err := im.NewLayer(pages, full)
	if err != nil {
		return LayerInfo{}, err
	}
	ps := uint64(im.PageSize())
	buf := make([]byte, dumpBatch*ps)
	segs := make([]linux.RemoteSeg, 0, dumpBatch)
	for i := 0; i < len(pages); {
		n := min(dumpBatch, len(pages)-i)
		segs = segs[:0]
		for j, p := range pages[i : i+n] {
			dst := buf[uint64(j)*ps : uint64(j+1)*ps]
			// Adjacent pages read as one segment.
			if k := len(segs); k > 0 && segs[k-1].Addr+uintptr(len(segs[k-1].Buf)) == r.Addr+uintptr(p*ps) {
				segs[k-1].Buf = buf[uint64(j)*ps-uint64(len(segs[k-1].Buf)) : uint64(j+1)*ps]
				continue
			}
			segs = append(segs, linux.RemoteSeg{Addr: r.Addr + uintptr(p*ps), Buf: dst})
		}
		if err := linux.ReadRemote(r.Pid, segs); err != nil {
			w.Abort()
			return LayerInfo{}, fmt.Errorf("ckpt: read pages of pid %d: %w", r.Pid, err)
		}
		if err := w.Write(buf[:uint64(n)*ps]); err != nil {
			return LayerInfo{}, err
		}
		i += n
	}
	return w.Commit()
}
