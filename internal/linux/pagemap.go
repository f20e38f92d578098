package linux

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PAGEMAP_SCAN uapi (Linux 6.7), from include/uapi/linux/fs.h. With a
// userfaultfd that negotiated UFFD_FEATURE_WP_ASYNC and a range registered
// with UFFDIO_REGISTER_MODE_WP, a write to a write-protected page is not
// reported on the uffd: the kernel just lifts the protection and the page
// reads as PAGE_IS_WRITTEN until it is protected again. PAGEMAP_SCAN on
// /proc/PID/pagemap lists the written pages and (PM_SCAN_WP_MATCHING)
// protects them again in the same walk: dirty tracking without faults.
const (
	// Page categories (page_region.categories and the pm_scan_arg masks).
	PAGE_IS_WPALLOWED  = 1 << 0
	PAGE_IS_WRITTEN    = 1 << 1
	PAGE_IS_FILE       = 1 << 2
	PAGE_IS_PRESENT    = 1 << 3
	PAGE_IS_SWAPPED    = 1 << 4
	PAGE_IS_PFNZERO    = 1 << 5
	PAGE_IS_HUGE       = 1 << 6
	PAGE_IS_SOFT_DIRTY = 1 << 7

	// pm_scan_arg.flags.
	PM_SCAN_WP_MATCHING   = 1 << 0 // write-protect the pages that matched
	PM_SCAN_CHECK_WPASYNC = 1 << 1 // fail (EPERM) on a page without async WP
)

// PageRegion is one struct page_region: [Start, End) with the requested
// categories of every page in it.
type PageRegion struct {
	Start      uint64
	End        uint64
	Categories uint64
}

// pmScanArg is struct pm_scan_arg (all fields __u64).
type pmScanArg struct {
	Size              uint64
	Flags             uint64
	Start             uint64
	End               uint64
	WalkEnd           uint64
	Vec               uint64
	VecLen            uint64
	MaxPages          uint64
	CategoryInverted  uint64
	CategoryMask      uint64
	CategoryAnyofMask uint64
	ReturnMask        uint64
}

// PAGEMAP_SCAN is _IOWR('f', 16, struct pm_scan_arg).
const PAGEMAP_SCAN = (iocRead|iocWrite)<<30 | unsafe.Sizeof(pmScanArg{})<<16 | 'f'<<8 | 16

var opPagemapScan = newIoctlOp("PAGEMAP_SCAN")

// Pagemap is an open /proc/PID/pagemap. It acts on the mm of the process it
// was opened for (the kernel takes the mm at open), whoever calls it.
//
// Its methods may be called concurrently: Scan serializes on a mutex.
type Pagemap struct {
	f   *os.File
	pid int

	mu sync.Mutex
	// buf is where the kernel writes the regions: a heap buffer of our own.
	// A caller's slice may live on its goroutine's stack, and a pointer
	// that travels to the kernel inside a struct (not as a direct system
	// call argument) is not updated when that stack moves — the kernel
	// would write into the old stack.
	buf []PageRegion
}

// scanBufLen is the most regions one Scan returns.
const scanBufLen = 256

// OpenPagemap opens /proc/PID/pagemap (pid 0: this process). Reading
// another process's needs ptrace-read access to it (root has it).
func OpenPagemap(pid int) (*Pagemap, error) {
	name := "/proc/self/pagemap"
	if pid != 0 {
		name = "/proc/" + strconv.Itoa(pid) + "/pagemap"
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("pagemap: %w", err)
	}
	return &Pagemap{f: f, pid: pid, buf: make([]PageRegion, scanBufLen)}, nil
}

// Close closes the file.
func (p *Pagemap) Close() error { return p.f.Close() }

// PagemapScan describes one PAGEMAP_SCAN call; see ioctl_pagemap_scan(2).
type PagemapScan struct {
	Start, End       uintptr // page-aligned range to walk
	Flags            uint64  // PM_SCAN_*
	MaxPages         uint64  // stop after this many matching pages (0: no limit)
	CategoryInverted uint64  // categories that match when clear
	CategoryMask     uint64  // a page matches only with all of these
	CategoryAnyof    uint64  // ... and at least one of these (0: any)
	ReturnMask       uint64  // categories reported in each PageRegion
}

// Scan runs PAGEMAP_SCAN once, filling vec (at most 256 regions; vec may
// be empty when only Flags' write protection is wanted). It returns the number of regions
// filled and where the walk stopped: before s.End when vec filled up or
// MaxPages was reached — call again from walkEnd for the rest.
func (p *Pagemap) Scan(s PagemapScan, vec []PageRegion) (n int, walkEnd uintptr, err error) {
	arg := pmScanArg{
		Size:              uint64(unsafe.Sizeof(pmScanArg{})),
		Flags:             s.Flags,
		Start:             uint64(s.Start),
		End:               uint64(s.End),
		MaxPages:          s.MaxPages,
		CategoryInverted:  s.CategoryInverted,
		CategoryMask:      s.CategoryMask,
		CategoryAnyofMask: s.CategoryAnyof,
		ReturnMask:        s.ReturnMask,
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.buf[:min(len(vec), len(p.buf))]
	if len(out) > 0 {
		arg.Vec = uint64(uintptr(unsafe.Pointer(unsafe.SliceData(out))))
		arg.VecLen = uint64(len(out))
	}
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, p.f.Fd(), PAGEMAP_SCAN, uintptr(unsafe.Pointer(&arg)))
	runtime.KeepAlive(out)
	runtime.KeepAlive(p.f)
	if errno == 0 {
		copy(vec, out[:r])
	}
	if errno != 0 {
		if errno == unix.ENOTTY {
			return 0, 0, &UnsupportedError{Feature: "PAGEMAP_SCAN", Hint: "Linux 6.7"}
		}
		return 0, uintptr(arg.WalkEnd), fmt.Errorf("%w (pid %d, range %#x-%#x, flags %#x)", opPagemapScan.err(errno), p.pid, s.Start, s.End, s.Flags)
	}
	return int(r), uintptr(arg.WalkEnd), nil
}

// WrittenPages appends to out the regions of [start, end) written since
// they were last write-protected (PAGE_IS_WRITTEN), walking the whole range
// with vec as the buffer. With reprotect the same walk write-protects them
// again (PM_SCAN_WP_MATCHING), atomically per page: a write after the walk
// passed a page is seen by the next call. The range must be registered for
// async write protection (UFFD_FEATURE_WP_ASYNC and UFFDIO_REGISTER_MODE_WP);
// a page that is not gives EPERM (PM_SCAN_CHECK_WPASYNC).
func (p *Pagemap) WrittenPages(start, end uintptr, reprotect bool, vec []PageRegion, out []PageRegion) ([]PageRegion, error) {
	if len(vec) == 0 {
		vec = make([]PageRegion, 64)
	}
	s := PagemapScan{
		Start:         start,
		End:           end,
		Flags:         PM_SCAN_CHECK_WPASYNC,
		CategoryAnyof: PAGE_IS_WRITTEN,
		ReturnMask:    PAGE_IS_WRITTEN,
	}
	if reprotect {
		s.Flags |= PM_SCAN_WP_MATCHING
	}
	for s.Start < end {
		n, walkEnd, err := p.Scan(s, vec)
		if err != nil {
			return out, err
		}
		for _, r := range vec[:n] {
			// Adjacent regions across calls are merged.
			if k := len(out); k > 0 && out[k-1].End == r.Start && out[k-1].Categories == r.Categories {
				out[k-1].End = r.End
				continue
			}
			out = append(out, r)
		}
		if walkEnd <= s.Start {
			return out, fmt.Errorf("PAGEMAP_SCAN made no progress at %#x (pid %d)", s.Start, p.pid)
		}
		s.Start = walkEnd
	}
	return out, nil
}

// WriteProtectAsync write-protects every page of [start, end) for async
// tracking (UFFD_FEATURE_WP_UNPOPULATED makes this cover pages not yet
// populated as well): the starting point of a tracking epoch. It is one
// PAGEMAP_SCAN with PM_SCAN_WP_MATCHING and no output, as the kernel's
// selftest does it.
func (p *Pagemap) WriteProtectAsync(start, end uintptr) error {
	s := PagemapScan{
		Start:         start,
		End:           end,
		Flags:         PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		CategoryAnyof: PAGE_IS_WRITTEN,
		ReturnMask:    PAGE_IS_WRITTEN,
	}
	for s.Start < end {
		_, walkEnd, err := p.Scan(s, nil)
		if err != nil {
			return err
		}
		if walkEnd <= s.Start {
			return fmt.Errorf("PAGEMAP_SCAN made no progress at %#x (pid %d)", s.Start, p.pid)
		}
		s.Start = walkEnd
	}
	return nil
}

// WPAsyncFeatures are the userfaultfd features async dirty tracking of
// anonymous memory needs: UFFD_FEATURE_WP_ASYNC (6.7) and
// UFFD_FEATURE_WP_UNPOPULATED (6.4, so that a page never touched before
// the epoch began is tracked too).
const WPAsyncFeatures = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED

// HaveWPAsync tells whether this kernel can track writes asynchronously
// (WPAsyncFeatures; PAGEMAP_SCAN came in the same release as WP_ASYNC).
func HaveWPAsync() bool {
	f, err := UffdFeatures()
	return err == nil && f&WPAsyncFeatures == WPAsyncFeatures
}

// PresentPages returns the indexes (from start) of the pages of [start,
// end) that are present or swapped out — the pages a process has touched —
// from the classic /proc/PID/pagemap entries (bit 63 present, bit 62
// swapped), which every kernel has. The PTE markers that write protection
// of unpopulated pages leaves (UFFD_FEATURE_WP_UNPOPULATED) read as
// swapped entries; they are not pages and are left out (see pteMarker). Reading the pagemap does not fault
// pages in, so it is safe on a range a userfaultfd pager serves.
func (p *Pagemap) PresentPages(start, end uintptr) ([]uint64, error) {
	ps := uintptr(pageSize)
	if start%ps != 0 || end%ps != 0 || end < start {
		return nil, fmt.Errorf("pagemap: range %#x-%#x is not page-aligned", start, end)
	}
	const batch = 4096 // entries per read
	buf := make([]byte, 8*batch)
	var out []uint64
	for a := start; a < end; {
		n := min(uintptr(batch), (end-a)/ps)
		b := buf[:8*n]
		got, err := p.f.ReadAt(b, int64(a/ps*8))
		if got != len(b) {
			return out, fmt.Errorf("pagemap pid %d at %#x: read %d of %d bytes: %w", p.pid, a, got, len(b), err)
		}
		for i := range n {
			if e := binary.NativeEndian.Uint64(b[8*i:]); e&(1<<63) != 0 || e&(1<<62) != 0 && !pteMarker(e) {
				out = append(out, uint64((a-start)/ps+i))
			}
		}
		a += n * ps
	}
	return out, nil
}

// pteMarker tells a pagemap "swapped" entry that is a PTE marker (no page:
// e.g. the uffd-wp marker on a never-populated page) from a real swap or
// migration entry. The entry holds the swap type in bits 0-4 and the
// offset above it. A marker has the kernel's last special swap type
// (SWP_PTE_MARKER: 31 on this project's kernels; the special types sit at
// the top of the 32, above MAX_SWAPFILES >= 23) and an offset of a few
// marker bits (PTE_MARKER_UFFD_WP 1, POISONED 2, GUARD 4). A real swap
// entry has a type below MAX_SWAPFILES; a migration entry has a page frame
// number as its offset, far above 7.
func pteMarker(e uint64) bool {
	typ := e & 0x1f
	off := (e >> 5) & (1<<50 - 1)
	return typ >= 24 && off < 8
}
