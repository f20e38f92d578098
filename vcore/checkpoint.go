package vcore

import (
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
// (PAGEMAP_SCAN), reads them out of the worker (process_vm_readv), commits
// them as a new layer, and thaws.

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
func persistentOf(s *subsystem, name string) *persistentDS {
	if s == nil {
		return nil
	}
	p, _ := s.sources[name].(*persistentDS)
	return p
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
// dataspace of subsystem name, with the subsystem frozen meanwhile.
func (v *VCore) Checkpoint(ctx context.Context, name string) (api.CheckpointResult, error) {
	res := api.CheckpointResult{Subsystem: name, Dataspaces: []api.CheckpointDataspace{}}
	s := v.subByName(name)
	if s == nil {
		return res, fmt.Errorf("%w: no subsystem %q", errNotFound, name)
	}
	var pds []*persistentDS
	for _, d := range s.cfg.Local {
		if p := persistentOf(s, d.Name); p != nil {
			pds = append(pds, p)
		}
	}
	if len(pds) == 0 {
		return res, fmt.Errorf("%w: subsystem %s has no persistent dataspace", errBadRequest, name)
	}
	if s.group == nil {
		return res, fmt.Errorf("%w: subsystem %s is not running", errConflict, name)
	}
	slices.SortFunc(pds, func(a, b *persistentDS) int { return cmpString(a.name, b.name) })
	for _, p := range pds {
		p.ckptMu.Lock()
		defer p.ckptMu.Unlock()
	}
	// The attachments to write, each held for the checkpoint.
	atts := make([]*attachment, len(pds))
	for i, p := range pds {
		p.attMu.Lock()
		a := p.att
		p.attMu.Unlock()
		if a != nil && a.tr != nil {
			a.mu.Lock()
			if a.detached {
				a.mu.Unlock()
				continue
			}
			defer a.mu.Unlock()
			atts[i] = a
		}
	}

	fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	defer cancel()
	start := time.Now()
	if err := s.group.Freeze(fctx); err != nil {
		return res, fmt.Errorf("freeze subsystem %s: %w", name, err)
	}
	var errs []error
	for i, p := range pds {
		d := api.CheckpointDataspace{Name: p.name, Image: p.dir, Layers: p.im.Layers()}
		if a := atts[i]; a != nil {
			d.Attached = true
			info, rescan, err := writeAttachment(p, a)
			d.Rescan = rescan
			if err != nil {
				errs = append(errs, fmt.Errorf("dataspace %s: %w", p.name, err))
			} else {
				d.Pages, d.DataPages, d.Bytes, d.Layers = info.Pages, info.DataPages, info.Bytes, info.Layers
				res.Pages += info.Pages
				res.Bytes += info.Bytes
			}
		}
		res.Dataspaces = append(res.Dataspaces, d)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), freezeTimeout)
	defer tcancel()
	if err := s.group.Thaw(tctx); err != nil {
		errs = append(errs, fmt.Errorf("thaw subsystem %s: %w", name, err))
	}
	res.FrozenNS = time.Since(start).Nanoseconds()
	// Unfrozen again: compact long chains, serve new attaches from the new
	// chain.
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
			if err == nil && len(order) > 0 {
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
	v.log.Info("checkpoint", "subsystem", name, "frozen", time.Duration(res.FrozenNS), "pages", res.Pages, "bytes", res.Bytes, "err", errors.Join(errs...))
	return res, errors.Join(errs...)
}

// writeAttachment writes the pages of a written since the last checkpoint
// as a new layer. The subsystem is frozen. If writing fails after the
// tracker handed out (and re-protected) the dirty pages, the next
// checkpoint stores every present page instead (rescan).
func writeAttachment(p *persistentDS, a *attachment) (ckpt.LayerInfo, bool, error) {
	rescan := a.rescan
	pages, err := a.tr.Dirty()
	if err != nil {
		return ckpt.LayerInfo{}, rescan, err
	}
	if rescan {
		if pages, err = ckpt.PresentPages(a.region); err != nil {
			return ckpt.LayerInfo{}, rescan, err
		}
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

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
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
