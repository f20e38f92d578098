package vcore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/ckpt"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

// Persistent dataspaces (docs/CHECKPOINT.md). A local dataspace with
// persistent = true keeps its memory in a checkpoint image under
// <state_dir>/images/<subsystem>/<dataspace>. Its content source is the
// image (over the configured content): attaching it restores the last
// checkpoint lazily, page by page, through the pager. Its region is
// registered for async write tracking (pager.Region.Track), and
// `vcored checkpoint` (POST /v1/subsystems/NAME/checkpoint) freezes the
// subsystem's cgroup, collects the pages written since the last checkpoint
// (PAGEMAP_SCAN, re-protecting them), copies them out of the worker
// (process_vm_readv), thaws, and then writes and commits them as a new
// layer.

const (
	// maxLayers: past this many layers a checkpoint compacts the image
	// down to compactTo.
	maxLayers = 8
	compactTo = 4
	// freezeTimeout bounds freezing and thawing a subsystem.
	freezeTimeout = 30 * time.Second
)

// persistentDS is a persistent dataspace: its image and the content source
// its regions are served from (the newest reader of the image).
type persistentDS struct {
	sub  string
	name string
	dir  string
	size uint64
	base content.Source // the configured content, below the image

	im *ckpt.Image
	// prefetch: restore_prefetch = true (map the image's pages in the
	// last run's first-touch order on attach).
	prefetch bool
	log      *slog.Logger

	mu sync.RWMutex // Fill holds it shared; reopen exclusively
	rd *ckpt.Reader
	// order (under mu): the image's touch order, as read at open or
	// written by the last checkpoint, for the next attach's prefetch.
	order []uint64

	// ckptMu serializes checkpoints of this dataspace.
	ckptMu sync.Mutex
	// attMu guards att. A persistent dataspace is attached by one region
	// at a time: its memory is one process's.
	attMu sync.Mutex
	att   *attachment
}

// attachment is the region a persistent dataspace is attached as, and its
// write tracker.
type attachment struct {
	uffd   uint64
	region ckpt.Region

	mu       sync.Mutex // held while the tracker is used
	tr       ckpt.Tracker
	rescan   bool // the dirty set was lost: store every present page next time
	detached bool

	// order is the touch order the restore prefetch followed (nil: no
	// prefetch), pf the prefetch. The pages it mapped raise no fault, so
	// this run's own record misses them: the order written at a
	// checkpoint is this run's faults, then order (ckpt.MergeTouchOrder).
	order []uint64
	pf    *pager.OrderPrefetch
}

// openPersistent opens (or creates) the image of dataspace d of subsystem
// sub, over base.
func (v *VCore) openPersistent(sub string, d config.Dataspace, base content.Source) (*persistentDS, error) {
	dir := filepath.Join(v.cfg.StateDir, "images", sub, d.Name)
	ps := linux.PageSize()
	size := (uint64(d.Size) + uint64(ps) - 1) / uint64(ps) * uint64(ps)
	im, err := ckpt.Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		im, err = ckpt.Create(dir, size, ps)
	}
	if err != nil {
		return nil, err
	}
	if im.Size() != size || im.PageSize() != ps {
		return nil, fmt.Errorf("image %s is of %d bytes in pages of %d, the dataspace %d in pages of %d (remove the image to start over)",
			dir, im.Size(), im.PageSize(), size, ps)
	}
	rd, err := ckpt.OpenReaderOver(dir, base)
	if err != nil {
		return nil, err
	}
	p := &persistentDS{sub: sub, name: d.Name, dir: dir, size: size, base: base, im: im, rd: rd,
		prefetch: d.RestorePrefetch, log: v.log}
	if p.prefetch {
		p.order = p.restoreOrder()
	}
	return p, nil
}

// Fill, IsZero, Size and String make a persistentDS the content.Source of
// its regions: the newest reader of the image.
func (p *persistentDS) Fill(dst []byte, off uint64) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.rd.Fill(dst, off)
}

func (p *persistentDS) IsZero() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.rd.IsZero()
}

func (p *persistentDS) Size() uint64   { return p.size }
func (p *persistentDS) String() string { return "persistent(" + p.dir + ")" }

// reopen switches to a reader of the image as committed now.
func (p *persistentDS) reopen() error {
	rd, err := ckpt.OpenReaderOver(p.dir, p.base)
	if err != nil {
		return err
	}
	p.mu.Lock()
	old := p.rd
	p.rd = rd
	p.mu.Unlock()
	return old.Close()
}

// Close closes the reader.
func (p *persistentDS) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rd.Close()
}

// persistentOf returns the persistent dataspace name of s, or nil.
// persistentsOf are s's persistent dataspaces, sorted by name (the order
// their locks are taken in).
func persistentsOf(s *subsystem) []*persistentDS {
	var out []*persistentDS
	for _, d := range s.cfg.Local {
		if p := persistentOf(s, d.Name); p != nil {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *persistentDS) int { return cmp.Compare(a.name, b.name) })
	return out
}

// hold takes pds' checkpoint locks (in order) and holds each attached,
// tracked region (atts[i], nil where there is none) for one checkpoint;
// release lets them all go.
func hold(pds []*persistentDS) (atts []*attachment, release func()) {
	var unlock []func()
	for _, p := range pds {
		p.ckptMu.Lock()
		unlock = append(unlock, p.ckptMu.Unlock)
	}
	atts = make([]*attachment, len(pds))
	for i, p := range pds {
		p.attMu.Lock()
		a := p.att
		p.attMu.Unlock()
		if a == nil || a.tr == nil {
			continue
		}
		a.mu.Lock()
		if a.detached {
			a.mu.Unlock()
			continue
		}
		unlock = append(unlock, a.mu.Unlock)
		atts[i] = a
	}
	return atts, func() {
		for i := len(unlock) - 1; i >= 0; i-- {
			unlock[i]()
		}
	}
}

func persistentOf(s *subsystem, name string) *persistentDS {
	if s == nil {
		return nil
	}
	p, _ := s.sources[name].(*persistentDS)
	return p
}

// trackingMode is how the attached region's writes are tracked: "async",
// "sync", or "" (p is nil or not attached).
func (p *persistentDS) trackingMode() string {
	if p == nil {
		return ""
	}
	p.attMu.Lock()
	defer p.attMu.Unlock()
	switch {
	case p.att == nil || p.att.tr == nil:
		return ""
	case isPagerTracker(p.att.tr):
		return "sync"
	}
	return "async"
}

func isPagerTracker(tr ckpt.Tracker) bool {
	_, ok := tr.(*pagerTracker)
	return ok
}

// reserve claims p for one region; a second attach is refused.
func (p *persistentDS) reserve() error {
	p.attMu.Lock()
	defer p.attMu.Unlock()
	if p.att != nil {
		return fmt.Errorf("persistent dataspace %q is attached already (at %#x by pid %d): its memory is one process's",
			p.name, p.att.region.Addr, p.att.region.Pid)
	}
	p.att = &attachment{} // placeholder until start
	return nil
}

// holderPid is the pid of the process whose region holds p, or 0.
func (p *persistentDS) holderPid() int {
	p.attMu.Lock()
	defer p.attMu.Unlock()
	if p.att == nil {
		return 0
	}
	return p.att.region.Pid
}

// unreserve undoes reserve after a failed attach.
func (p *persistentDS) unreserve() {
	p.attMu.Lock()
	p.att = nil
	p.attMu.Unlock()
}

// start begins write tracking of the region just registered on uffd:
// async (PAGEMAP_SCAN) where the pager negotiated it, else the pager's
// sync tracking.
func (p *persistentDS) start(pgr *pager.Pager, uffd uint64, r ckpt.Region) error {
	async, err := pgr.WriteTracking(uffd)
	var tr ckpt.Tracker
	if err == nil && async {
		tr, err = ckpt.NewAsyncTracker(r)
	} else if err == nil {
		tr = &pagerTracker{pgr: pgr, uffd: uffd, r: r}
	}
	if err != nil {
		p.unreserve()
		return err
	}
	a := &attachment{uffd: uffd, region: r, tr: tr}
	if p.prefetch {
		a.order, a.pf = p.startPrefetch(pgr, uffd, r)
	}
	p.attMu.Lock()
	p.att = a
	p.attMu.Unlock()
	return nil
}

// restoreOrder is the image's touch order for a restore prefetch: nil
// when there is none, or when it is damaged (refused whole, logged: the
// restore stays lazy).
func (p *persistentDS) restoreOrder() []uint64 {
	order, err := p.im.TouchOrder()
	if err != nil {
		p.log.Warn("restore prefetch: touch order refused, restoring lazily", "subsystem", p.sub, "dataspace", p.name, "image", p.dir, "err", err)
		return nil
	}
	return order
}

// startPrefetch starts the restore prefetch of the region r just attached
// on uffd (restore_prefetch); its end is logged. It returns the order it
// follows and the prefetch, or nils. No file is read here (the caller
// holds the vcore's lock): the order was read at open or written by the
// last checkpoint.
func (p *persistentDS) startPrefetch(pgr *pager.Pager, uffd uint64, r ckpt.Region) ([]uint64, *pager.OrderPrefetch) {
	p.mu.RLock()
	order := p.order
	p.mu.RUnlock()
	if len(order) == 0 {
		return nil, nil
	}
	start := time.Now()
	pf, err := pgr.PrefetchOrder(uffd, r.Addr, order)
	if err != nil {
		p.log.Warn("restore prefetch not started", "subsystem", p.sub, "dataspace", p.name, "err", err)
		return nil, nil
	}
	p.log.Info("restore prefetch started", "subsystem", p.sub, "dataspace", p.name, "pid", r.Pid, "pages", pf.Pages, "beyond_region", pf.Dropped)
	go func() {
		<-pf.Done()
		res := pf.Result()
		lvl := slog.LevelInfo
		if res.Err != nil {
			lvl = slog.LevelWarn
		}
		p.log.Log(context.Background(), lvl, "restore prefetch done", "subsystem", p.sub, "dataspace", p.name, "pid", r.Pid,
			"mapped", res.Mapped, "present", res.Present, "pages", pf.Pages, "stopped", res.Ended, "took", time.Since(start), "err", res.Err)
	}()
	return order, pf
}

// pagerTracker is a ckpt.Tracker over the pager's sync write tracking.
type pagerTracker struct {
	pgr  *pager.Pager
	uffd uint64
	r    ckpt.Region
}

func (t *pagerTracker) Dirty() ([]uint64, error) {
	return t.pgr.TakeWritten(t.uffd, t.r.Addr, uintptr(t.r.Size))
}

func (t *pagerTracker) Close() error { return nil }

// syncWriteTracking: VCORED_SYNC_WRITE_TRACKING=1 makes the pager track
// writes to persistent dataspaces synchronously even where the kernel has
// async tracking — what a kernel before 6.7 gets (for tests).
func syncWriteTracking() bool { return os.Getenv("VCORED_SYNC_WRITE_TRACKING") == "1" }

// detached forgets the attachment of uffd at addr (0: any address). The
// tracker is closed once no checkpoint uses it, without blocking.
func (p *persistentDS) detached(uffd uint64, addr uintptr) {
	p.attMu.Lock()
	a := p.att
	if a == nil || a.uffd != uffd || (addr != 0 && a.region.Addr != addr) {
		p.attMu.Unlock()
		return
	}
	p.att = nil
	p.attMu.Unlock()
	if a.pf != nil {
		a.pf.Stop()
	}
	go func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.detached = true
		if a.tr != nil {
			a.tr.Close()
		}
	}()
}

// untrackLocked forgets the persistent attachments of st's region at addr
// (0: all of st's regions). Called with v.mu held; it does not block.
func (v *VCore) untrackLocked(st *uffdState, addr uintptr) {
	for a, r := range st.regions {
		if addr != 0 && a != addr {
			continue
		}
		if p := persistentOf(st.sub, r.wire.Dataspace); p != nil {
			p.detached(st.id, a)
		}
	}
}

// Checkpoint writes a layer to the image of every attached persistent
// dataspace of subsystem name, the dataspace as it was at one instant
// (docs/CHECKPOINT.md, "In the vcore"): the pages written since the last
// checkpoint are collected (write-protected again) and copied while the
// worker runs (pre-copy); the subsystem is frozen while the pages written
// since are collected and copied (their copies replace the pre-copies);
// thawed; then the layers are written, fsynced and committed. It returns
// once every new layer is durable (its manifest renamed, the directory
// fsynced). A write the worker makes after the thaw belongs to the next
// checkpoint: its page was write-protected again before the thaw.
func (v *VCore) Checkpoint(ctx context.Context, name string) (api.CheckpointResult, error) {
	res := api.CheckpointResult{Subsystem: name, Dataspaces: []api.CheckpointDataspace{}}
	s := v.subByName(name)
	if s == nil {
		return res, fmt.Errorf("%w: no subsystem %q", errNotFound, name)
	}
	pds := persistentsOf(s)
	if len(pds) == 0 {
		return res, fmt.Errorf("%w: subsystem %s has no persistent dataspace", errBadRequest, name)
	}
	if s.group == nil {
		return res, fmt.Errorf("%w: subsystem %s is not running", errConflict, name)
	}
	atts, release := hold(pds)
	defer release()

	start := time.Now()
	// Pre-copy, while the worker runs: collect the pages written so far
	// (which write-protects them again) and copy them. A page written
	// after that is collected again while frozen and copied again: the
	// frozen copy wins. So the freeze copies only what is written during
	// the checkpoint.
	var errs []error
	pend := make([]*pendingLayer, len(pds))
	budget := checkpointBuffer
	for i, p := range pds {
		if a := atts[i]; a != nil {
			pend[i] = preCopy(p, a, &budget)
		}
	}
	if h := checkpointPreCopiedHook; h != nil {
		h()
	}
	fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	defer cancel()
	freezing := time.Now()
	began, err := s.group.FreezeStart(fctx)
	if err != nil {
		// The pre-copied pages were handed out by their trackers: the
		// next checkpoint stores every present page.
		for i, pl := range pend {
			if pl != nil {
				pl.drop(atts[i])
			}
		}
		return res, fmt.Errorf("freeze subsystem %s: %w", name, err)
	}
	frozen := time.Now()
	// Frozen: collect the pages written since the pre-copy and copy them
	// out. Up to checkpointBuffer bytes of pages in all are copied into
	// memory; a dataspace whose pages do not fit is written to its layer
	// file now instead (fsync and commit after the thaw either way).
	for i, p := range pds {
		d := api.CheckpointDataspace{Name: p.name, Image: p.dir, Layers: p.im.Layers()}
		if a := atts[i]; a != nil {
			d.Attached = true
			pl := pend[i]
			err := pl.take(p, a, &budget)
			d.Rescan, d.WrittenFrozen, d.CopiedFrozen = pl.rescan, pl.staged != nil, pl.copiedFrozen
			if err != nil {
				errs = append(errs, fmt.Errorf("dataspace %s: %w", p.name, err))
			}
		}
		res.Dataspaces = append(res.Dataspaces, d)
	}
	copied := time.Now()
	tctx, tcancel := context.WithTimeout(context.Background(), freezeTimeout)
	defer tcancel()
	if err := s.group.Thaw(tctx); err != nil {
		errs = append(errs, fmt.Errorf("thaw subsystem %s: %w", name, err))
	}
	thawed := time.Now()
	res.FrozenNS = thawed.Sub(began).Nanoseconds()
	if h := checkpointThawedHook; h != nil {
		h()
	}
	// Running again: write what was copied, commit every layer.
	for i, p := range pds {
		pl := pend[i]
		if pl == nil {
			continue
		}
		info, err := pl.commit(p, atts[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("dataspace %s: %w", p.name, err))
			continue
		}
		if pl.committed {
			d := &res.Dataspaces[i]
			d.Pages, d.DataPages, d.Bytes, d.Layers = info.Pages, info.DataPages, info.Bytes, info.Layers
			res.Pages += info.Pages
			res.Bytes += info.Bytes
		}
	}
	committed := time.Now()
	// Compact long chains, serve new attaches from the new chain.
	for i, p := range pds {
		if !res.Dataspaces[i].Attached {
			continue
		}
		// The order the worker first touched its pages, for a restore's
		// prefetch (a hint: a failure is reported, nothing else).
		if a := atts[i]; a != nil {
			order, err := v.pgr.TouchOrder(a.uffd, a.region.Addr, uintptr(a.region.Size))
			if err == nil && a.order != nil {
				order = ckpt.MergeTouchOrder(order, a.order)
			}
			p.mu.Lock()
			same := slices.Equal(order, p.order)
			p.mu.Unlock()
			// Unchanged since the last checkpoint (no new first touch):
			// not rewritten, so an incremental checkpoint's cost follows
			// the pages written, not the dataspace's size.
			if err == nil && len(order) > 0 && !same {
				if err = p.im.WriteTouchOrder(order); err == nil {
					p.mu.Lock()
					p.order = order
					p.mu.Unlock()
				}
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("dataspace %s: touch order: %w", p.name, err))
			}
			res.Dataspaces[i].TouchPages = len(order)
		}
		if p.im.Layers() > maxLayers {
			if merged, info, err := p.im.Compact(compactTo); err != nil {
				errs = append(errs, fmt.Errorf("dataspace %s: compact: %w", p.name, err))
			} else if merged {
				res.Dataspaces[i].Compacted, res.Dataspaces[i].Layers = true, info.Layers
			}
		}
		if err := p.reopen(); err != nil {
			errs = append(errs, fmt.Errorf("dataspace %s: reopen image: %w", p.name, err))
		}
	}
	res.TotalNS = time.Since(start).Nanoseconds()
	v.log.Info("checkpoint", "subsystem", name, "frozen", time.Duration(res.FrozenNS), "total", time.Duration(res.TotalNS),
		"precopy", freezing.Sub(start), "freeze", frozen.Sub(freezing), "freezer_move", began.Sub(freezing), "copy", copied.Sub(frozen),
		"thaw", thawed.Sub(copied), "commit", committed.Sub(thawed),
		"pages", res.Pages, "bytes", res.Bytes, "err", errors.Join(errs...))
	return res, errors.Join(errs...)
}

// checkpointBuffer bounds the memory a checkpoint copies pages into while
// the subsystem is frozen, for all its dataspaces together: 32 MiB, the
// pages of a 1 % write to a 3 GiB dataspace. A dataspace whose written
// pages do not fit (a first checkpoint, a large write) has them written to
// its layer file while frozen, through a bounded buffer of 1 MiB (only the
// fsync and the manifest's rename wait for the thaw): its frozen time then
// follows its pages, as the write to the page cache does. A variable for
// tests.
var checkpointBuffer int64 = 32 << 20

// checkpointPreCopiedHook and checkpointThawedHook, when set (tests),
// run after the pre-copy (before the freeze) and after the thaw (before
// the layers are written and committed).
var checkpointPreCopiedHook, checkpointThawedHook func()

// pendingLayer is the layer of one dataspace during a checkpoint: the
// pages collected before the freeze and their copies (pre), then the
// pages copied while frozen (snap), or, when they did not fit in the
// buffer, all of them in the layer file already (staged); nothing after
// an error.
type pendingLayer struct {
	prePages []uint64       // collected before the freeze (handed out by the tracker)
	pre      *ckpt.Snapshot // their copies, if they fit in the buffer

	rescan       bool // every present page (the dirty set had been lost)
	snap         *ckpt.Snapshot
	staged       *ckpt.LayerWriter
	copiedFrozen int // pages read out of the worker while frozen
	committed    bool
}

// preCopy collects the pages of a written since the last checkpoint,
// starting the next epoch, and copies them if they fit in *budget (which
// they then use up) — while the worker runs. Nothing is collected when
// the dirty set was lost (rescan: the frozen part stores every present
// page). A failure makes the frozen part rescan.
func preCopy(p *persistentDS, a *attachment, budget *int64) *pendingLayer {
	pl := &pendingLayer{}
	if a.rescan {
		return pl
	}
	pages, err := a.tr.Dirty()
	if err != nil {
		a.rescan = true
		return pl
	}
	pl.prePages = pages
	if size := int64(len(pages)) * int64(p.im.PageSize()); size <= *budget {
		if pl.pre, err = ckpt.Snap(a.region, pages); err != nil {
			a.rescan = true
			return pl
		}
		*budget -= size
	}
	return pl
}

// drop gives up the pre-copy: its pages are lost to the tracker, so the
// next checkpoint stores every present page.
func (pl *pendingLayer) drop(a *attachment) {
	if pl.pre != nil {
		pl.pre.Release()
		pl.pre = nil
	}
	if pl.prePages != nil {
		a.rescan = true
	}
}

// take collects the pages of a written since the pre-copy (and starts the
// next epoch) and copies them out of the frozen worker: into memory if the
// pre-copy fit and they fit in *budget, else all the layer's pages (those
// of the pre-copy too) into a new layer file of p, uncommitted. If the
// dirty set is lost on the way, the next checkpoint stores every present
// page instead (rescan).
func (pl *pendingLayer) take(p *persistentDS, a *attachment, budget *int64) error {
	pages, rescan, err := dirtyPages(a)
	pl.rescan = rescan
	if err != nil {
		pl.drop(a)
		return err
	}
	if rescan {
		// Every present page, read now: the pre-copy (if any) is moot.
		if pl.pre != nil {
			pl.pre.Release()
			pl.pre = nil
		}
		pl.prePages = nil
	}
	size := int64(len(pages)) * int64(p.im.PageSize())
	if (pl.pre != nil || pl.prePages == nil) && size <= *budget {
		if pl.snap, err = ckpt.Snap(a.region, pages); err != nil {
			pl.drop(a)
			a.rescan = true
			return err
		}
		*budget -= size
		pl.copiedFrozen = len(pages)
		return nil
	}
	// Too many for the buffer: the pre-collected pages and the new ones
	// go to the layer file, read now.
	all := ckpt.Union(pl.prePages, pages)
	if pl.pre != nil {
		pl.pre.Release()
		pl.pre = nil
	}
	if pl.staged, err = ckpt.StageLayer(p.im, a.region, all, false); err != nil {
		a.rescan = true
		return err
	}
	pl.copiedFrozen = len(all)
	return nil
}

// commit writes and commits the layer of p taken from a: durable when it
// returns. A failure makes the next checkpoint store every present page.
func (pl *pendingLayer) commit(p *persistentDS, a *attachment) (ckpt.LayerInfo, error) {
	var info ckpt.LayerInfo
	var err error
	switch {
	case pl.snap != nil:
		// The frozen copies over the pre-copies: the region at the freeze.
		if pl.pre != nil {
			info, err = ckpt.WriteSnapshots(p.im, false, pl.pre, pl.snap)
			pl.pre.Release()
			pl.pre = nil
		} else {
			info, err = ckpt.WriteSnapshot(p.im, pl.snap, false)
		}
		pl.snap.Release()
		pl.snap = nil
	case pl.staged != nil:
		info, err = pl.staged.Commit()
		pl.staged = nil
	default:
		return info, nil // nothing taken (an error reported already)
	}
	if err != nil {
		a.rescan = true
		return info, err
	}
	a.rescan = false
	pl.committed = true
	return info, nil
}

// dirtyPages collects the pages of a written since the last checkpoint
// and starts the next epoch (the tracker write-protects them again): all
// present pages when an earlier checkpoint lost its dirty set (rescan, as
// does a failure here).
func dirtyPages(a *attachment) ([]uint64, bool, error) {
	rescan := a.rescan
	pages, err := a.tr.Dirty()
	if err != nil {
		a.rescan = true
		return nil, rescan, err
	}
	if rescan {
		if pages, err = ckpt.PresentPages(a.region); err != nil {
			return nil, rescan, err
		}
	}
	return pages, rescan, nil
}

// writeAttachment writes the pages of a written since the last checkpoint
// as a new layer, committed before it returns. The subsystem is frozen
// throughout (a move's final checkpoint: the worker is killed frozen). If
// writing fails after the tracker handed out (and re-protected) the dirty
// pages, the next checkpoint stores every present page instead (rescan).
func writeAttachment(p *persistentDS, a *attachment) (ckpt.LayerInfo, bool, error) {
	pages, rescan, err := dirtyPages(a)
	if err != nil {
		return ckpt.LayerInfo{}, rescan, err
	}
	// Incremental either way: pages never touched since the attach are
	// still served from the older layers.
	info, err := ckpt.WriteLayer(p.im, a.region, pages, false)
	if err != nil {
		a.rescan = true
		return info, rescan, err
	}
	a.rescan = false
	return info, rescan, nil
}

// HTTP errors of the checkpoint handler.
var (
	errNotFound   = errors.New("not found")
	errBadRequest = errors.New("bad request")
	errConflict   = errors.New("conflict")
)

// handleCheckpoint serves POST /v1/subsystems/{name}/checkpoint: root only.
func (v *VCore) handleCheckpoint(w http.ResponseWriter, r *http.Request) {
	cred, ok := wire.PeerFromContext(r.Context())
	if !ok || cred.Uid != 0 {
		http.Error(w, "checkpoint: only root may checkpoint a subsystem", http.StatusForbidden)
		return
	}
	res, err := v.Checkpoint(r.Context(), r.PathValue("name"))
	// A checkpoint may outlast the server's write timeout (set when the
	// request was read): the answer gets a deadline of its own.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, errNotFound):
			code = http.StatusNotFound
		case errors.Is(err, errBadRequest):
			code = http.StatusBadRequest
		case errors.Is(err, errConflict):
			code = http.StatusConflict
		}
		http.Error(w, "checkpoint: "+err.Error(), code)
		return
	}
	api.WriteJSON(w, res)
}
