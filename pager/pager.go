// Package pager serves page faults of worker processes through their
// userfaultfds: the mechanism under a vcore (local pager on the partition's
// CPUs) and under core (the fallback pager, the forwarded-fault resolver and
// the single-pager baseline).
//
// # Who does what with a userfaultfd
//
// The worker maps a region, creates the userfaultfd (linux.OpenUffd) and
// hands the fd over (SCM_RIGHTS). It does not call UFFDIO_API: the first
// daemon that adds the fd to a Pager does (AddUffd calls InitUffd when the
// fd is not initialized yet), requesting the features a pager needs
// (Features: the faulting thread id and the UNMAP/REMOVE/REMAP events) as
// far as the kernel has them. Every dup of the fd (core keeps one) shares
// that state, so a second holder never negotiates again. AddRegion does
// UFFDIO_REGISTER (MISSING) on the worker's range; registrations also belong
// to the shared context, so a second holder registering the same range is a
// no-op for the kernel.
//
// # Threads
//
// New starts the pager threads: goroutines locked to their OS thread and
// pinned to Options.CPUs (one thread per CPU by default, each pinned to its
// CPU). They all wait in epoll_wait on one epoll set holding the served
// uffds (edge-triggered: a thread reads a uffd until it is empty), the pidfd
// of each worker (one-shot: its exit removes the uffd) and an eventfd that
// stops them. No thread blocks anywhere else.
//
// # A fault
//
// A thread reads the fault, finds the region (a per-uffd sorted table read
// without locks), fills its page buffer from the region's content and does
// one UFFDIO_COPY of the fault-around window (Options.FaultAround pages,
// aligned within the region and clipped to it), or one UFFDIO_ZEROPAGE for
// zero content. A window copy that hits a page already present (EEXIST)
// stops there; if the faulting page was not among the copied ones it is
// copied alone, and EEXIST on it means someone else resolved it: wake and
// move on. EAGAIN (the worker's mm is changing) is retried once the pending
// events are read; if it persists the page is woken so the fault is raised
// again. ESRCH (the worker is gone) drops the uffd. Faults in Forward
// regions are queued to Options.Forward, called from one forwarding
// goroutine, so pager threads never block on it.
//
// A fault at an address outside every region the Pager knows is counted as
// an error and parked for Options.UnknownGrace: its region may be on its way
// (a worker re-sending its regions after a reconnect, a RegionAdd still in
// flight to core), and AddRegion wakes the threads waiting in the range it
// adds, so they fault again and are served. A uffd taken over from a holder
// that died waits longer (HoldUnknown, ReconnectGrace). A fault still
// outside every region when the grace (and hold) ends gets a definite outcome: SIGBUS to the worker,
// as the kernel does for a mapping it cannot back (UFFDIO_POISON on the page
// where the kernel has it, 6.6+, else tgkill(2) of the faulting thread, then
// a wake), with a warning naming pid, address and uffd. A Pager that no
// longer serves the uffd only wakes it (at once when it stops serving), so
// that the fault is raised again to whoever serves it now. Nothing is ever zero-filled without a region saying
// so, and no fault is left pending.
package pager

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// Sentinel errors; the returned errors wrap them with the uffd id, address
// or region.
var (
	ErrClosed        = errors.New("pager: closed")
	ErrUnknownUffd   = errors.New("pager: unknown uffd id")
	ErrDuplicateUffd = errors.New("pager: uffd id already added")
	ErrBadRegion     = errors.New("pager: invalid region")
	ErrOverlap       = errors.New("pager: region overlaps another")
	ErrNoRegion      = errors.New("pager: address in no region")
)

// Features are the userfaultfd features InitUffd requests when the kernel
// has them: the faulting thread's id, and the events that keep the region
// table right when the worker unmaps, discards or moves registered memory.
const Features = linux.UFFD_FEATURE_THREAD_ID | linux.UFFD_FEATURE_EVENT_UNMAP |
	linux.UFFD_FEATURE_EVENT_REMOVE | linux.UFFD_FEATURE_EVENT_REMAP

// InitUffd negotiates the API of a fresh userfaultfd (UFFDIO_API) with
// Features, minus those the kernel lacks. It must run once per userfaultfd
// context, by its first holder; AddUffd calls it when needed.
func InitUffd(u *linux.Uffd) (features uint64, err error) {
	have, err := linux.UffdFeatures()
	if err != nil {
		return 0, fmt.Errorf("pager: probe userfaultfd features: %w", err)
	}
	want := Features & have
	if have&linux.WPAsyncFeatures == linux.WPAsyncFeatures {
		// Write tracking for Track regions; it changes nothing for ranges
		// registered without MODE_WP.
		want |= linux.WPAsyncFeatures
	}
	if _, err := u.API(want); err != nil {
		return 0, fmt.Errorf("pager: negotiate userfaultfd fd %d: %w", u.FD(), err)
	}
	return want, nil
}

// Options configure a Pager.
type Options struct {
	// CPUs the pager threads are pinned to. Empty: not pinned.
	CPUs hw.CPUSet
	// Threads is the number of pager threads. 0: one per CPU of CPUs, each
	// pinned to its own CPU (1 when CPUs is empty). Otherwise every thread
	// is pinned to all of CPUs.
	Threads int
	// FaultAround is the number of pages resolved per fault (the aligned
	// window around the faulting page, clipped to the region); 0 means 1.
	FaultAround int
	// Forward receives the faults of Forward regions. It is called from a
	// single goroutine of the Pager, in fault order, and should not block
	// for long: while it runs, further forwarded faults queue (up to 4096,
	// then they are woken to be raised again later).
	Forward func(Fault)
	// TryForward, if set, is offered each fault of a Forward region first,
	// on the pager thread that read it: true means it took the fault
	// (Forward is not called for it), false queues it for Forward. It must
	// not block: the thread holds the uffd's locks.
	TryForward func(Fault) bool
	// Replica, if set, is asked on the pager thread, before a fault of a
	// Forward region is forwarded, for the page at offset of dataspace:
	// if it fills dst (one page) and returns true, the pager maps dst
	// there itself and the fault is not forwarded. It must not block.
	Replica func(dataspace string, offset uint64, dst []byte) bool
	// RegionsChanged, if set, is told the uffd id whose region table an
	// UNMAP or REMAP event of the worker changed (the pager cut or moved
	// regions; Regions(id) has the new table), so a holder can tell others.
	// It is called on a pager thread with no lock held and must not block.
	RegionsChanged func(id uint64)
	// Log receives warnings (unknown faults, dropped uffds). Nil: discard.
	Log *slog.Logger
	// UnknownGrace is how long a fault outside every known region waits for
	// its region to be added before the worker gets SIGBUS; 0 means
	// DefaultUnknownGrace.
	UnknownGrace time.Duration
	// NoPoison delivers SIGBUS with tgkill even where the kernel has
	// UFFDIO_POISON (tests of the pre-6.6 fallback).
	NoPoison bool
	// PrefetchMax is the most pages mapped ahead of one stream of a
	// Prefetch region; 0 means DefaultPrefetchMax.
	PrefetchMax int
	// SyncWriteTracking makes Track regions use synchronous write
	// protection even where the kernel has async (what a kernel before
	// 6.7 gets): for tests and comparisons. See TakeWritten.
	SyncWriteTracking bool
}

// DefaultUnknownGrace is Options.UnknownGrace's default: long enough for a
// reconnecting worker to re-send its regions, short enough that a worker
// touching memory nobody serves dies quickly instead of hanging.
const DefaultUnknownGrace = 2 * time.Second

// Region is a registered range of a worker's address space and what it
// holds.
type Region struct {
	// Start and Length are page-aligned, in the worker's address space.
	Start, Length uintptr
	// Dataspace names the dataspace (stats are kept per dataspace).
	Dataspace string
	// Offset is the dataspace offset of Start (page-aligned).
	Offset uint64
	// Content fills the pages; nil only for Forward regions.
	Content content.Source
	// Forward: faults go to Options.Forward instead of being resolved here.
	Forward bool
	// Track: the region is also registered for write protection
	// (UFFDIO_REGISTER_MODE_WP), so that a checkpoint finds the pages
	// written since the last one. Async where the uffd negotiated
	// linux.WPAsyncFeatures (InitUffd asks for them when the kernel has
	// them): the kernel marks written pages, PAGEMAP_SCAN collects them
	// (ckpt.AsyncTracker). Else sync: the first write to a page per epoch
	// raises a WP fault the pager threads record and resolve, and
	// TakeWritten collects them (WriteTracking says which). Pages are
	// copied in write-protected (never as the shared zero page): one the
	// worker only reads stays clean.
	Track bool
	// Prefetch: the pager maps pages ahead of sequential and strided fault
	// streams in the region (see prefetch.go). Ignored for Forward regions.
	Prefetch bool
	// Replicate: a Forward region whose faults Options.Replica may serve.
	Replicate bool
}

// End is the first address after the region.
func (r Region) End() uintptr { return r.Start + r.Length }

// Fault is a forwarded fault.
type Fault struct {
	// Uffd is the id the worker's uffd was added with.
	Uffd uint64
	// Addr is the faulting address (page-aligned).
	Addr uintptr
	// Dataspace and Offset locate the page in its dataspace.
	Dataspace string
	Offset    uint64
	// TID is the faulting thread (0 without UFFD_FEATURE_THREAD_ID).
	TID uint32
	// Start is when the pager read the fault.
	Start time.Time
}

// UffdInfo describes a uffd the Pager holds, e.g. to hand it over.
type UffdInfo struct {
	ID      uint64
	Pid     int
	Serving bool
	Regions []Region
}

// Token kinds in the epoll data: kind in the low 2 bits, sequence above.
const (
	kindStop = 0
	kindUffd = 1
	kindPid  = 2
)

// Pager serves the faults of the uffds added to it. Its methods are safe for
// concurrent use.
type Pager struct {
	opts   Options
	log    *slog.Logger
	ps     uintptr // page size
	around int     // pages per fault
	// reserved is how many threads New counted in pagerThreads (Close
	// gives them back).
	reserved int
	zero     []byte // around + prefetchBufPages pages of zeros, never written: the source for zero-content copies
	// zeroMapped: zero is an mmap'd read-only mapping, unmapped by Close.
	zeroMapped bool

	ep   *linux.Epoll
	stop *linux.EventFD

	mu                   sync.Mutex                            // serializes changes of the tables below
	byID                 map[uint64]*uffdEntry                 // under mu
	byToken              atomic.Pointer[map[uint64]*uffdEntry] // copy-on-write, read by pager threads
	nextSeq              uint64                                // under mu
	peakBytes, peakPages int64                                 // under mu: high-water mark of the tracking (PeakTracking)
	closed               bool                                  // under mu

	threads []*thread
	wg      sync.WaitGroup

	fwd   chan fwdItem
	fwdWG sync.WaitGroup

	stats statsTable

	bufPool sync.Pool // page buffers for Resolve

	unkMu   sync.Mutex
	unknown map[unknownKey]*unknownFault // parked faults outside every region

	closeOnce sync.Once
	closeErr  error
}

type fwdItem struct {
	f Fault
	e *uffdEntry
}

// uffdEntry is one held uffd.
type uffdEntry struct {
	id    uint64
	seq   uint64
	u     *linux.Uffd
	pid   int
	watch *linux.PidWatch

	// regions is the sorted, immutable region table; replaced under
	// Pager.mu, read lock-free.
	regions atomic.Pointer[[]*region]

	// use guards the fd against being closed while a thread uses it: users
	// RLock, the closer Locks.
	use    sync.RWMutex
	closed bool // under use

	serving bool        // under Pager.mu
	wpAsync bool        // InitUffd negotiated async write protection (Track regions)
	wpKnown bool        // this pager negotiated the uffd (else its WP mode is unknown)
	written syncWritten // pages written in sync WP mode (track.go)
	touch   touchOrder  // first touches of Track regions (touch.go)
	hold    time.Time   // no SIGBUS for a fault outside every region before this (HoldUnknown); under Pager.unkMu
}

// region is a Region with its stats slot.
type region struct {
	Region
	end uintptr
	ds  int // dataspace index in the stats table
	// stream is the fault-stream detector of a Prefetch region (nil
	// otherwise).
	stream *stream
}

func (e *uffdEntry) table() []*region {
	if p := e.regions.Load(); p != nil {
		return *p
	}
	return nil
}

// find returns the region holding addr, or nil.
func (e *uffdEntry) find(addr uintptr) *region {
	rs := e.table()
	lo, hi := 0, len(rs)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if rs[m].end <= addr {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(rs) && rs[lo].Start <= addr {
		return rs[lo]
	}
	return nil
}

// pagerThreads counts the pager threads of the process's live Pagers.
var pagerThreads atomic.Int64

// reserveThreads accounts for n more pager threads and raises GOMAXPROCS
// above their number: a pager thread keeps its P while it waits for faults
// (linux.Epoll.WaitLocked), so the process's other goroutines need one
// more. GOMAXPROCS is never lowered.
func reserveThreads(n int) {
	want := int(pagerThreads.Add(int64(n))) + 1
	if runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}

// New starts a Pager and its threads. It fails if a thread cannot be pinned.
func New(opts Options) (*Pager, error) {
	if opts.FaultAround <= 0 {
		opts.FaultAround = 1
	}
	if opts.Threads < 0 {
		return nil, fmt.Errorf("pager: %d threads", opts.Threads)
	}
	cpus := opts.CPUs.Slice()
	perCPU := opts.Threads == 0 && len(cpus) > 0
	n := opts.Threads
	if n == 0 {
		n = max(len(cpus), 1)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pager{
		opts:   opts,
		log:    log,
		ps:     uintptr(linux.PageSize()),
		around: opts.FaultAround,
		byID:   map[uint64]*uffdEntry{},
		fwd:    make(chan fwdItem, 4096),

		unknown: map[unknownKey]*unknownFault{},
	}
	if p.opts.PrefetchMax <= 0 {
		p.opts.PrefetchMax = DefaultPrefetchMax
	}
	if p.opts.UnknownGrace <= 0 {
		p.opts.UnknownGrace = DefaultUnknownGrace
	}
	p.stats.init()
	empty := map[uint64]*uffdEntry{}
	p.byToken.Store(&empty)
	bufSize := p.around * int(p.ps)
	p.bufPool.New = func() any { b := make([]byte, bufSize); return &b }
	// The zero source also serves prefetch copies of zero content. A
	// read-only anonymous mapping: every page of it is the kernel's shared
	// zero page, so a copy of many pages reads one cache-hot page.
	zsize := bufSize + prefetchBufPages*int(p.ps)
	if z, err := linux.Mmap(zsize, linux.PROT_READ, linux.MAP_PRIVATE); err == nil {
		p.zero, p.zeroMapped = z, true
	} else {
		p.zero = make([]byte, zsize)
	}

	var err error
	if p.ep, err = linux.NewEpoll(); err != nil {
		return nil, fmt.Errorf("pager: %w", err)
	}
	if p.stop, err = linux.NewEventFD(); err != nil {
		p.ep.Close()
		return nil, fmt.Errorf("pager: %w", err)
	}
	if err := p.ep.Add(p.stop.FD(), linux.EPOLLIN, kindStop); err != nil {
		p.stop.Close()
		p.ep.Close()
		return nil, fmt.Errorf("pager: %w", err)
	}

	reserveThreads(n) // released by Close, which every path from here on ends in on error
	p.reserved = n
	started := make(chan error, n)
	for i := range n {
		var pin hw.CPUSet
		switch {
		case perCPU:
			pin = hw.NewSet(cpus[i])
		case len(cpus) > 0:
			pin = opts.CPUs
		}
		t := &thread{p: p, idx: i, pin: pin}
		p.threads = append(p.threads, t)
		p.wg.Add(1)
		go t.run(started)
	}
	var errs []error
	for range n {
		if err := <-started; err != nil {
			errs = append(errs, err)
		}
	}
	p.fwdWG.Add(1)
	go p.forwarder()
	if len(errs) > 0 {
		return nil, errors.Join(append(errs, p.Close())...)
	}
	return p, nil
}

// forwarder calls Options.Forward for queued faults.
func (p *Pager) forwarder() {
	defer p.fwdWG.Done()
	for it := range p.fwd {
		if p.opts.Forward != nil {
			p.opts.Forward(it.f)
		}
	}
}

// Close stops the threads, closes every held uffd and releases the epoll
// set. Faults being resolved complete first. Closing the last holder of a
// uffd lets its pending faults fall back to the kernel (zero pages): keep
// another holder (core) when that matters. Close is idempotent.
func (p *Pager) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		var errs []error
		if err := p.stop.Signal(); err != nil {
			errs = append(errs, err)
		}
		p.wg.Wait()
		pagerThreads.Add(-int64(p.reserved))
		close(p.fwd)
		p.fwdWG.Wait()
		p.mu.Lock()
		entries := make([]*uffdEntry, 0, len(p.byID))
		for _, e := range p.byID {
			entries = append(entries, e)
		}
		p.mu.Unlock()
		for _, e := range entries {
			if err := p.remove(e); err != nil && !errors.Is(err, ErrUnknownUffd) {
				errs = append(errs, err)
			}
		}
		errs = append(errs, p.stop.Close(), p.ep.Close())
		if p.zeroMapped { // every user of it is gone: the threads, and Resolve (entries removed)
			linux.Munmap(p.zero)
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

func uffdToken(seq uint64) uint64 { return seq<<2 | kindUffd }
func pidToken(seq uint64) uint64  { return seq<<2 | kindPid }

// publish rebuilds the token map for the pager threads. Called under mu.
func (p *Pager) publish() {
	m := make(map[uint64]*uffdEntry, len(p.byID))
	for _, e := range p.byID {
		m[e.seq] = e
	}
	p.byToken.Store(&m)
}

func (p *Pager) bySeq(seq uint64) *uffdEntry { return (*p.byToken.Load())[seq] }

// AddUffd takes ownership of u, a worker's userfaultfd, under id. pid is the
// worker (0: not watched); its exit removes the uffd. With serve, the pager
// threads start resolving its faults; without, the Pager only holds it (for
// Resolve, or a later Serve). An fd not negotiated yet is (InitUffd). On
// error u is closed.
func (p *Pager) AddUffd(id uint64, u *linux.Uffd, pid int, serve bool) error {
	fail := func(err error) error {
		u.Close()
		return err
	}
	ok, err := u.Initialized()
	if err != nil {
		return fail(fmt.Errorf("pager: uffd %d: %w", id, err))
	}
	var features uint64
	if !ok {
		if features, err = p.initUffd(u); err != nil {
			return fail(fmt.Errorf("uffd %d: %w", id, err))
		}
	}
	e := &uffdEntry{id: id, u: u, pid: pid, wpAsync: features&linux.WPAsyncFeatures == linux.WPAsyncFeatures, wpKnown: !ok}
	if pid > 0 {
		if e.watch, err = linux.WatchPid(pid); err != nil {
			return fail(fmt.Errorf("pager: uffd %d: watch worker %d: %w", id, pid, err))
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		e.closeFDs()
		return fmt.Errorf("%w (adding uffd %d)", ErrClosed, id)
	}
	if _, dup := p.byID[id]; dup {
		e.closeFDs()
		return fmt.Errorf("%w: %d", ErrDuplicateUffd, id)
	}
	p.nextSeq++
	e.seq = p.nextSeq
	if e.watch != nil {
		if err := p.ep.Add(e.watch.FD(), linux.EPOLLIN|linux.EPOLLONESHOT, pidToken(e.seq)); err != nil {
			e.closeFDs()
			return fmt.Errorf("pager: uffd %d: %w", id, err)
		}
	}
	p.byID[id] = e
	p.publish()
	if serve {
		if err := p.serveLocked(e, true); err != nil {
			delete(p.byID, id)
			p.publish()
			p.unwatchLocked(e)
			e.closeFDs()
			return err
		}
	}
	return nil
}

func (e *uffdEntry) closeFDs() error {
	var errs []error
	if e.watch != nil {
		errs = append(errs, e.watch.Close())
	}
	errs = append(errs, e.u.Close())
	return errors.Join(errs...)
}

func (p *Pager) unwatchLocked(e *uffdEntry) {
	if e.watch != nil {
		_ = p.ep.Delete(e.watch.FD())
	}
}

// AddRegion registers r on uffd id (UFFDIO_REGISTER, MISSING mode) and
// serves it from then on.
func (p *Pager) AddRegion(id uint64, r Region) error {
	if r.Length == 0 || r.Start%p.ps != 0 || r.Length%p.ps != 0 || r.Offset%uint64(p.ps) != 0 || r.Start+r.Length < r.Start {
		return fmt.Errorf("%w: %#x+%#x offset %#x (must be page-aligned and non-empty)", ErrBadRegion, r.Start, r.Length, r.Offset)
	}
	if r.Content == nil && !r.Forward {
		return fmt.Errorf("%w: %#x+%#x of dataspace %q has no content", ErrBadRegion, r.Start, r.Length, r.Dataspace)
	}
	if r.Forward && p.opts.Forward == nil {
		return fmt.Errorf("%w: %#x+%#x of dataspace %q is forwarded but Options.Forward is nil", ErrBadRegion, r.Start, r.Length, r.Dataspace)
	}
	p.mu.Lock()
	e, err := p.entryLocked(id)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	// Wait until no pager thread is between reading this uffd's events and
	// applying them. A worker's munmap returns as soon as a pager thread has
	// READ the UNMAP event; the worker may then map new memory at the same
	// address and attach it, and the late UNMAP must not cut the new region.
	// (Lock order: e.use before p.mu, as in the pager threads.)
	e.use.Lock()
	defer e.use.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.closed || p.byID[id] != e {
		return fmt.Errorf("%w: %d (removed)", ErrUnknownUffd, id)
	}
	old := e.table()
	i, _ := slices.BinarySearchFunc(old, r.Start, func(x *region, s uintptr) int { return cmp.Compare(x.Start, s) })
	var ov *region
	switch {
	case i > 0 && old[i-1].end > r.Start:
		ov = old[i-1]
	case i < len(old) && old[i].Start < r.End():
		ov = old[i]
	}
	if ov != nil {
		return fmt.Errorf("%w: %#x+%#x (%q) overlaps the registered %#x+%#x (%q) on uffd %d",
			ErrOverlap, r.Start, r.Length, r.Dataspace, ov.Start, ov.Length, ov.Dataspace, id)
	}
	mode := uint64(linux.UFFDIO_REGISTER_MODE_MISSING)
	if r.Track {
		if !e.wpKnown {
			// Negotiated by another holder: whether a write raises a WP
			// fault (sync) or not (async) is unknown here.
			return fmt.Errorf("%w: %q: write tracking on a userfaultfd this pager did not negotiate", ErrBadRegion, r.Dataspace)
		}
		mode |= linux.UFFDIO_REGISTER_MODE_WP
	}
	if _, err := e.u.Register(r.Start, r.Length, mode); err != nil {
		return fmt.Errorf("pager: uffd %d region %q: %w", id, r.Dataspace, err)
	}
	if r.Track {
		e.touch.grow(int(r.Length / p.ps))
	}
	if r.Track && !e.wpAsync {
		// Sync: protect what is present already (pages copied in later
		// are copied protected).
		if err := e.u.WriteProtect(r.Start, r.Length, linux.UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
			_ = e.u.Unregister(r.Start, r.Length)
			return fmt.Errorf("pager: uffd %d region %q: write-protect: %w", id, r.Dataspace, err)
		}
	}
	nr := &region{Region: r, end: r.End(), ds: p.stats.indexOf(r.Dataspace)}
	if r.Prefetch && !r.Forward {
		nr.stream = new(stream)
	}
	table := make([]*region, 0, len(old)+1)
	table = append(append(append(table, old[:i]...), nr), old[i:]...)
	e.regions.Store(&table)
	if b, n := p.trackingLocked(); n > p.peakPages {
		p.peakBytes, p.peakPages = b, n
	}
	// Threads parked on a fault in this range (read before the region was
	// known) fault again and are served now.
	if err := e.u.Wake(r.Start, r.Length); err != nil && !errors.Is(err, linux.ESRCH) {
		p.log.Warn("pager: wake a new region", "uffd", id, "addr", fmt.Sprintf("%#x", r.Start), "err", err)
	}
	return nil
}

// RemoveRegion forgets the region starting at start on uffd id and
// unregisters it (UFFDIO_UNREGISTER; an error there is ignored when the
// worker already unmapped it).
func (p *Pager) RemoveRegion(id uint64, start uintptr) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, err := p.entryLocked(id)
	if err != nil {
		return err
	}
	old := e.table()
	i := slices.IndexFunc(old, func(r *region) bool { return r.Start == start })
	if i < 0 {
		return fmt.Errorf("%w: no region starts at %#x on uffd %d", ErrNoRegion, start, id)
	}
	r := old[i]
	table := slices.Delete(slices.Clone(old), i, i+1)
	e.regions.Store(&table)
	if err := e.u.Unregister(r.Start, r.Length); err != nil && !errors.Is(err, linux.EINVAL) &&
		!errors.Is(err, linux.ENOMEM) && !errors.Is(err, linux.ESRCH) {
		return fmt.Errorf("pager: uffd %d region %q: %w", id, r.Dataspace, err)
	}
	return nil
}

// HasRegion reports whether uffd id has a region starting at start of
// length bytes in dataspace ds (still whole: not cut by an unmap).
func (p *Pager) HasRegion(id uint64, start, length uintptr, ds string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, err := p.entryLocked(id)
	if err != nil {
		return false
	}
	for _, r := range e.table() {
		if r.Start == start {
			return r.Length == length && r.Dataspace == ds
		}
	}
	return false
}

// ForgetRange drops from uffd id's table every region that overlaps
// [start, start+length) and returns them. Unlike RemoveRegion it leaves the
// kernel registration alone: another holder of the fd (the vcore, for core)
// owns it and may already have registered a new region there. A fault there
// is then treated as any fault outside every region: parked until a region
// covering it is added, else SIGBUS after Options.UnknownGrace.
func (p *Pager) ForgetRange(id uint64, start, length uintptr) ([]Region, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, err := p.entryLocked(id)
	if err != nil {
		return nil, err
	}
	old := e.table()
	var gone []Region
	table := make([]*region, 0, len(old))
	for _, r := range old {
		if r.Start < start+length && start < r.end {
			gone = append(gone, r.Region)
			continue
		}
		table = append(table, r)
	}
	if len(gone) > 0 {
		e.regions.Store(&table)
	}
	return gone, nil
}

// Regions returns uffd id's current region table, by start address.
func (p *Pager) Regions(id uint64) ([]Region, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, err := p.entryLocked(id)
	if err != nil {
		return nil, err
	}
	var out []Region
	for _, r := range e.table() {
		out = append(out, r.Region)
	}
	return out, nil
}

func (p *Pager) entryLocked(id uint64) (*uffdEntry, error) {
	if p.closed {
		return nil, fmt.Errorf("%w (uffd %d)", ErrClosed, id)
	}
	e := p.byID[id]
	if e == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownUffd, id)
	}
	return e, nil
}

// Serve starts (on) or stops polling uffd id. Starting wakes every region
// (UFFDIO_WAKE): faults read by a pager that died before resolving them are
// raised again and served here.
func (p *Pager) Serve(id uint64, on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, err := p.entryLocked(id)
	if err != nil {
		return err
	}
	return p.serveLocked(e, on)
}

func (p *Pager) serveLocked(e *uffdEntry, on bool) error {
	if on == e.serving {
		return nil
	}
	if !on {
		e.serving = false
		if err := p.ep.Delete(e.u.FD()); err != nil {
			return fmt.Errorf("pager: stop serving uffd %d: %w", e.id, err)
		}
		p.handOverUnknown(e)
		return nil
	}
	if err := p.ep.Add(e.u.FD(), linux.EPOLLIN|linux.EPOLLET, uffdToken(e.seq)); err != nil {
		return fmt.Errorf("pager: serve uffd %d: %w", e.id, err)
	}
	e.serving = true
	var errs []error
	for _, r := range e.table() {
		if err := e.u.Wake(r.Start, r.Length); err != nil && !errors.Is(err, linux.ESRCH) {
			errs = append(errs, fmt.Errorf("pager: uffd %d: wake region %q at %#x: %w", e.id, r.Dataspace, r.Start, err))
		}
	}
	return errors.Join(errs...)
}

// Resolve resolves the fault at addr of uffd id from its region's content
// (with fault-around), whether or not the Pager serves that uffd: the
// resolver of forwarded faults calls it. A page already present counts as
// success.
func (p *Pager) Resolve(id uint64, addr uintptr) error {
	p.mu.Lock()
	e, err := p.entryLocked(id)
	p.mu.Unlock()
	if err != nil {
		return err
	}
	start := time.Now()
	addr &^= p.ps - 1
	e.use.RLock()
	defer e.use.RUnlock()
	if e.closed {
		return fmt.Errorf("%w: %d (removed)", ErrUnknownUffd, id)
	}
	r := e.find(addr)
	if r == nil {
		p.stats.shared(func(s *dsCounters) { s.errors++ }, 0)
		return fmt.Errorf("%w: %#x on uffd %d", ErrNoRegion, addr, id)
	}
	if r.Content == nil {
		return fmt.Errorf("%w: %#x on uffd %d: dataspace %q has no content here", ErrNoRegion, addr, id, r.Dataspace)
	}
	bp := p.bufPool.Get().(*[]byte)
	// A forwarded fault's access kind is not known here: map real pages
	// (a write to a zero page mapping would fault again).
	pages, err := p.resolve(e, r, addr, *bp, true, false)
	p.bufPool.Put(bp)
	if errors.Is(err, linux.EAGAIN) {
		// The worker's mm is changing: let the fault be raised again.
		err = e.u.Wake(addr, p.ps)
	}
	ns := time.Since(start).Nanoseconds()
	p.stats.shared(func(s *dsCounters) {
		s.faults++
		s.pages += uint64(pages)
		if err != nil {
			s.errors++
		} else {
			s.lat.record(ns)
		}
	}, r.ds)
	if err != nil {
		return fmt.Errorf("pager: resolve %#x on uffd %d (%q): %w", addr, id, r.Dataspace, err)
	}
	return nil
}

// resolve maps the fault-around window of addr (a page address in r) from
// r's content into the worker and wakes the faulting thread. It returns the
// number of pages it mapped. EEXIST is success. The caller holds e.use.
//
// Zero content on a read fault maps the shared zero page (UFFDIO_ZEROPAGE:
// no allocation). On a write fault that would only trade this fault for a
// copy-on-write fault in the kernel, so the pages are copied from a zero
// buffer instead (UFFDIO_COPY allocates them at once). wrote: the fault is
// known to be a write (write alone may be a guess), see resolveWritten.
func (p *Pager) resolve(e *uffdEntry, r *region, addr uintptr, buf []byte, write, wrote bool) (int, error) {
	lo, hi := p.window(r, addr)
	return p.resolveRange(e, r, addr, lo, hi, buf, write, wrote, nil)
}

// resolveRange is resolve of the window [lo, hi) around addr (buf holds
// hi-lo bytes). If tu is not nil (a pager thread's own, set to e.u), the
// time spent in the UFFDIO_COPY/ZEROPAGE/WAKE ioctls is added to tu.ns.
func (p *Pager) resolveRange(e *uffdEntry, r *region, addr, lo, hi uintptr, buf []byte, write, wrote bool, tu *timedUffd) (int, error) {
	if tu != nil {
		if wrote && r.Track {
			return resolveWritten(p, tu, e, r, addr, lo, hi, buf)
		}
		return resolveWith(p, tu, r, addr, lo, hi, buf, write)
	}
	if wrote && r.Track {
		return resolveWritten(p, e.u, e, r, addr, lo, hi, buf)
	}
	return resolveWith(p, e.u, r, addr, lo, hi, buf, write)
}

// uffdOps are the ioctls resolve uses (a timed wrapper records their time).
type uffdOps interface {
	Copy(dst uintptr, src []byte, mode uint64) (int64, error)
	ZeroPage(dst, length uintptr, mode uint64) (int64, error)
	Wake(start, length uintptr) error
}

// timedUffd adds the time of each ioctl to ns. Each pager thread has one,
// reused for every fault (thread.timed): built per fault, it and the
// counter it added to escaped to the heap, two allocations per fault.
type timedUffd struct {
	u  *linux.Uffd
	ns int64
}

func (t *timedUffd) Copy(dst uintptr, src []byte, mode uint64) (int64, error) {
	s := time.Now()
	n, err := t.u.Copy(dst, src, mode)
	t.ns += int64(time.Since(s))
	return n, err
}

func (t *timedUffd) ZeroPage(dst, length uintptr, mode uint64) (int64, error) {
	s := time.Now()
	n, err := t.u.ZeroPage(dst, length, mode)
	t.ns += int64(time.Since(s))
	return n, err
}

func (t *timedUffd) Wake(start, length uintptr) error {
	s := time.Now()
	err := t.u.Wake(start, length)
	t.ns += int64(time.Since(s))
	return err
}

func resolveWith[U uffdOps](p *Pager, u U, r *region, addr, lo, hi uintptr, buf []byte, write bool) (int, error) {
	ps := p.ps
	if r.Content.IsZero() && !write && !r.Track {
		n, err := u.ZeroPage(lo, hi-lo, 0)
		if err == nil || !errors.Is(err, linux.EEXIST) {
			return int(uintptr(n) / ps), err
		}
		if lo+uintptr(n) > addr {
			return int(uintptr(n) / ps), nil // the faulting page was mapped (and woken)
		}
		m, err := u.ZeroPage(addr, ps, 0)
		if errors.Is(err, linux.EEXIST) {
			return int(uintptr(n) / ps), u.Wake(addr, ps)
		}
		return int(uintptr(n+m) / ps), err
	}
	var src []byte
	if r.Content.IsZero() {
		src = p.zero[:hi-lo]
	} else {
		src = buf[:hi-lo]
		if err := r.Content.Fill(src, r.Offset+uint64(lo-r.Start)); err != nil {
			return 0, err
		}
	}
	var cmode uint64
	if r.Track {
		cmode = linux.UFFDIO_COPY_MODE_WP // clean until the worker writes it
	}
	n, err := u.Copy(lo, src, cmode)
	if err == nil || !errors.Is(err, linux.EEXIST) {
		return int(uintptr(n) / ps), err
	}
	if lo+uintptr(n) > addr {
		return int(uintptr(n) / ps), nil
	}
	off := addr - lo
	m, err := u.Copy(addr, src[off:off+ps], cmode)
	if errors.Is(err, linux.EEXIST) {
		return int(uintptr(n) / ps), u.Wake(addr, ps)
	}
	return int(uintptr(n+m) / ps), err
}

// RemoveUffd stops serving uffd id and closes it (after the threads using it
// are done). Its registrations stay: they belong to the worker's mm and
// other holders of the fd.
func (p *Pager) RemoveUffd(id uint64) error {
	p.mu.Lock()
	e := p.byID[id]
	p.mu.Unlock()
	if e == nil {
		return fmt.Errorf("%w: %d", ErrUnknownUffd, id)
	}
	return p.remove(e)
}

// remove drops e from the tables (if it is still there) and closes it.
func (p *Pager) remove(e *uffdEntry) error {
	p.mu.Lock()
	if p.byID[e.id] != e {
		p.mu.Unlock()
		return fmt.Errorf("%w: %d (already removed)", ErrUnknownUffd, e.id)
	}
	delete(p.byID, e.id)
	p.publish()
	if e.serving {
		e.serving = false
		_ = p.ep.Delete(e.u.FD())
	}
	p.unwatchLocked(e)
	p.mu.Unlock()

	e.use.Lock()
	e.closed = true
	err := e.closeFDs()
	e.use.Unlock()
	if err != nil {
		return fmt.Errorf("pager: close uffd %d: %w", e.id, err)
	}
	return nil
}

// Uffds lists the held uffds, sorted by id.
func (p *Pager) Uffds() []UffdInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]UffdInfo, 0, len(p.byID))
	for _, e := range p.byID {
		info := UffdInfo{ID: e.id, Pid: e.pid, Serving: e.serving}
		for _, r := range e.table() {
			info.Regions = append(info.Regions, r.Region)
		}
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b UffdInfo) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Uffd returns a dup of held uffd id, e.g. for core to keep while a vcore
// serves it. The caller owns the returned fd.
func (p *Pager) Uffd(id uint64) (*linux.Uffd, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, err := p.entryLocked(id)
	if err != nil {
		return nil, err
	}
	d, err := e.u.Dup()
	if err != nil {
		return nil, fmt.Errorf("pager: uffd %d: %w", id, err)
	}
	return d, nil
}

// TrackingBytes approximates the memory the Pager uses to track its uffds
// and regions (not the per-thread page buffers and statistics): the
// bench divides it by RegisteredPages.
func (p *Pager) TrackingBytes() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, _ := p.trackingLocked()
	return b
}

// trackingLocked returns the tracking bytes and the registered pages.
func (p *Pager) trackingLocked() (bytes, pages int64) {
	const (
		mapSlot    = 16 // key and pointer in byID / byToken
		entrySize  = int64(unsafe.Sizeof(uffdEntry{})+unsafe.Sizeof(linux.PidWatch{})+unsafe.Sizeof(linux.Uffd{})) + 2*mapSlot
		regionSize = int64(unsafe.Sizeof(region{})) + 8 // + its slot in the table
	)
	for _, e := range p.byID {
		t := e.table()
		bytes += entrySize + int64(len(t))*regionSize
		for _, r := range t {
			pages += int64(r.Length / p.ps)
		}
	}
	return bytes, pages
}

// PeakTracking returns the most tracking memory and registered pages the
// Pager has held at once (TrackingBytes and RegisteredPages at their high
// point): what the bench divides after the workers are gone.
func (p *Pager) PeakTracking() (bytes, pages int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peakBytes, p.peakPages
}

// RegisteredPages is the number of pages in all held regions.
func (p *Pager) RegisteredPages() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, n := p.trackingLocked()
	return n
}

// applyEvent updates e's region table after a non-fault event.
func (p *Pager) applyEvent(e *uffdEntry, m *linux.UffdMsg) {
	switch m.Event {
	case linux.UFFD_EVENT_UNMAP:
		start, end := m.Range()
		p.mu.Lock()
		changed := p.cutLocked(e, start, end, 0, false)
		p.mu.Unlock()
		if changed && p.opts.RegionsChanged != nil {
			p.opts.RegionsChanged(e.id)
		}
	case linux.UFFD_EVENT_REMAP:
		from, to, n := m.Remap()
		p.mu.Lock()
		changed := p.cutLocked(e, from, from+n, to, true)
		p.mu.Unlock()
		if changed && p.opts.RegionsChanged != nil {
			p.opts.RegionsChanged(e.id)
		}
	case linux.UFFD_EVENT_REMOVE:
		// MADV_DONTNEED/REMOVE: the pages are gone but the range stays
		// mapped and registered; the next touch faults and is refilled
		// from the content. Nothing to change in the table.
	case linux.UFFD_EVENT_FORK:
		// Not requested; should one arrive, do not leak the child's fd.
		linux.NewUffd(m.ForkUfd()).Close()
	}
}

// cutLocked removes [start, end) from e's regions; with move, the removed
// parts reappear at to+(their address-start) with the same dataspace
// offsets (mremap).
func (p *Pager) cutLocked(e *uffdEntry, start, end, to uintptr, move bool) (changed bool) {
	old := e.table()
	var table, moved []*region
	for _, r := range old {
		if r.end <= start || r.Start >= end {
			table = append(table, r)
			continue
		}
		changed = true
		if r.Start < start { // part before the cut
			table = append(table, p.subRegion(r, r.Start, start))
		}
		if r.end > end { // part after the cut
			table = append(table, p.subRegion(r, end, r.end))
		}
		if move {
			s, t := max(r.Start, start), min(r.end, end)
			m := p.subRegion(r, s, t)
			m.Start = to + (s - start)
			m.end = m.Start + m.Length
			moved = append(moved, m)
		}
	}
	if !changed {
		return false
	}
	table = append(table, moved...)
	slices.SortFunc(table, func(a, b *region) int { return cmp.Compare(a.Start, b.Start) })
	e.regions.Store(&table)
	return true
}

func (p *Pager) subRegion(r *region, s, t uintptr) *region {
	n := *r
	n.Offset = r.Offset + uint64(s-r.Start)
	n.Start, n.Length, n.end = s, t-s, t
	if n.stream != nil {
		n.stream = new(stream)
	}
	return &n
}

// pidExited handles the exit of the worker behind pid token seq.
func (p *Pager) pidExited(seq uint64) {
	e := p.bySeq(seq)
	if e == nil {
		return
	}
	p.log.Debug("worker exited: dropping its uffd", "uffd", e.id, "pid", e.pid)
	_ = p.remove(e)
}

// forward queues a fault for Options.Forward; a full queue wakes the fault
// so that it is raised again later.
func (p *Pager) forward(e *uffdEntry, r *region, addr uintptr, tid uint32, start time.Time) bool {
	f := Fault{Uffd: e.id, Addr: addr, Dataspace: r.Dataspace, Offset: r.Offset + uint64(addr-r.Start), TID: tid, Start: start}
	if p.opts.TryForward != nil && p.opts.TryForward(f) {
		return true
	}
	select {
	case p.fwd <- fwdItem{f: f, e: e}:
		return true
	default:
		_ = e.u.Wake(addr, p.ps)
		return false
	}
}

// lockThread pins the calling goroutine's OS thread to cpus for good.
func lockThread(cpus hw.CPUSet) error {
	runtime.LockOSThread()
	if cpus.IsEmpty() {
		return nil
	}
	return linux.SetThreadAffinity(cpus)
}
