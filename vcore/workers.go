package vcore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/vcored/vcored/internal/ckpt"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

// uffdState is a worker userfaultfd the vcore holds (the pager owns the fd).
type uffdState struct {
	id      uint64
	pid     int
	sub     *subsystem // nil: a taken-back uffd whose worker's subsystem is unknown
	regions map[uintptr]*regionState
}

// regionState is one registered region of a uffd.
type regionState struct {
	wire    wire.Region // as told to core
	local   bool        // a local dataspace (served here), else core-owned (forwarded)
	charged uint64      // bytes reserved in the subsystem's quota
	gen     uint64      // VCore.regionGen when attached: orders it against forwards
}

// wireRegions lists the regions by start address.
func (u *uffdState) wireRegions() []wire.Region {
	out := make([]wire.Region, 0, len(u.regions))
	for _, r := range u.regions {
		out = append(out, r.wire)
	}
	slices.SortFunc(out, func(a, b wire.Region) int { return cmp.Compare(a.Start, b.Start) })
	return out
}

// sortedUffdsLocked lists the held uffds by id. Called with mu held.
func (v *VCore) sortedUffdsLocked() []*uffdState {
	out := make([]*uffdState, 0, len(v.uffds))
	for _, u := range v.uffds {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *uffdState) int { return cmp.Compare(a.id, b.id) })
	return out
}

// worker is one worker connection.
type worker struct {
	conn  *wire.Conn
	pid   int
	sub   *subsystem
	hello bool
	uffd  uint64 // 0 until the first Attach brought the uffd
}

// serveWorker handles one framed connection on the vcore socket. Only
// processes of this vcore's subsystems may speak; anyone else gets
// Error{denied}. The connection is a control channel: when it ends, the
// worker's uffd and regions stay served until the worker unmaps them or
// exits (the pager watches its pidfd).
//
// What closes the connection (after an Error frame, and a log line): a
// malformed frame header, a payload that does not decode, a first message
// other than Hello, a Hello with the wrong role, pid or version, a second
// Hello, or a message a worker may not send. A refused Attach does not: it
// is answered AttachErr and the connection goes on.
func (v *VCore) serveWorker(ctx context.Context, c *wire.Conn) {
	pid := c.Peer().Pid
	path, err := cgroupOf(v.procfs, pid)
	var sub *subsystem
	if err == nil {
		if name, ok := subsystemOf(path, v.groups); ok {
			sub = v.subByName(name)
		}
	}
	if sub == nil && err == nil {
		sub = v.movedInOf(path) // a subsystem moved here from another node
	}
	if sub == nil && err == nil {
		sub = v.externalOf(path) // a container placed by the NRI plugin
	}
	if sub == nil {
		v.log.Warn("refused a connection: not a process of this vcore's subsystems", "pid", pid, "uid", c.Peer().Uid, "cgroup", path, "err", err)
		_ = c.SendMsg(&wire.Error{Code: wire.CodeDenied,
			Msg: fmt.Sprintf("pid %d (cgroup %q) is not a process of a subsystem of the vcore of node %d", pid, path, v.cfg.Node)})
		return
	}
	if n := sub.conns.Add(1); n > int64(sub.maxConnections()) {
		sub.conns.Add(-1)
		msg := fmt.Sprintf("subsystem %s already has %d worker connections open (max_connections = %d in the vcore's configuration)",
			sub.cfg.Name, n-1, sub.maxConnections())
		if sub.limitLogOK() {
			v.log.Warn("refused a worker connection", "subsystem", sub.cfg.Name, "pid", pid, "reason", msg)
		}
		refuseOverLimit(sub, c, msg)
		return
	}
	defer sub.conns.Add(-1)
	w := &worker{conn: c, pid: pid, sub: sub}
	defer v.workerClosed(w)
	fail := func(code wire.ErrCode, msg string) {
		v.log.Warn("closing a worker connection", "subsystem", sub.cfg.Name, "pid", pid, "code", code, "msg", msg)
		_ = c.SendMsg(&wire.Error{Code: code, Msg: msg})
	}
	for {
		f, err := c.Recv()
		if err != nil {
			if errors.Is(err, wire.ErrProtocol) {
				fail(wire.CodeBadRequest, err.Error())
			} else {
				v.log.Debug("worker connection ended", "subsystem", sub.cfg.Name, "pid", pid, "err", err)
			}
			return
		}
		m, err := wire.Decode(f)
		if err != nil {
			f.CloseFDs()
			fail(wire.CodeBadRequest, err.Error())
			return
		}
		switch x := m.(type) {
		case *wire.Hello:
			switch {
			case w.hello:
				fail(wire.CodeBadRequest, "a second Hello")
				return
			case x.Role != wire.RoleWorker || !v.helloPidOK(w, x.Pid):
				fail(wire.CodeDenied, fmt.Sprintf("Hello as %s pid %d from pid %d", x.Role, x.Pid, pid))
				return
			case x.Version != wire.Version:
				fail(wire.CodeVersion, fmt.Sprintf("protocol version %d, this vcore speaks %d", x.Version, wire.Version))
				return
			}
			w.hello = true
			if err := c.SendMsg(&wire.HelloOK{Server: "vcore", Pid: os.Getpid(), Node: int(v.cfg.Node), Version: wire.Version}); err != nil {
				v.log.Warn("answer a worker's Hello", "pid", pid, "err", err)
				return
			}
		case *wire.Attach:
			if !w.hello {
				f.CloseFDs()
				fail(wire.CodeBadRequest, "Attach before Hello")
				return
			}
			v.attach(w, x, f.FDs)
		case *wire.Detach:
			v.detach(w, x.Addr)
		default:
			f.CloseFDs()
			fail(wire.CodeBadRequest, fmt.Sprintf("unexpected %s from a worker", f.Type))
			return
		}
	}
}

// errNotUffd is returned when a worker sends a descriptor that is not a
// userfaultfd.
var errNotUffd = errors.New("the descriptor is not a userfaultfd")

// attach registers a worker's region and answers AttachOK or AttachErr.
//
// The first Attach of a connection carries the process's userfaultfd; it is
// kept whatever becomes of the attach (the uffd is the process's, sent once
// per connection: a failed Attach does not give it back). A uffd the vcore
// already holds for the process (a worker reconnecting) is recognised and
// the held one goes on; an Attach of a region already registered with the
// same dataspace and length is answered AttachOK again (idempotent).
func (v *VCore) attach(w *worker, a *wire.Attach, fds []int) {
	refuse := func(code wire.ErrCode, format string, args ...any) {
		linux.CloseFDs(fds)
		msg := fmt.Sprintf(format, args...)
		v.log.Info("refused an attach", "subsystem", w.sub.cfg.Name, "pid", w.pid, "dataspace", a.Name, "code", code, "msg", msg)
		if err := w.conn.SendMsg(&wire.AttachErr{Name: a.Name, Addr: a.Addr, Code: code, Msg: msg}); err != nil {
			v.log.Warn("answer an attach", "pid", w.pid, "err", err)
		}
	}
	switch {
	case len(fds) > 0 && w.uffd != 0:
		refuse(wire.CodeBadRequest, "the userfaultfd was already sent with the first Attach")
		return
	case len(fds) == 0 && w.uffd == 0:
		refuse(wire.CodeBadRequest, "the first Attach must carry the worker's userfaultfd")
		return
	}
	if len(fds) > 0 {
		err := v.takeUffd(w, fds[0])
		fds = nil // takeUffd owns it
		if err != nil {
			code := wire.CodeInternal
			switch {
			case errors.Is(err, errNotUffd):
				code = wire.CodeBadRequest
			case errors.Is(err, linux.ErrNotSupported):
				code = wire.CodeUnsupported
			}
			refuse(code, "take the userfaultfd: %v", err)
			return
		}
	}

	ps := uint64(linux.PageSize())
	if a.Addr%ps != 0 || a.Length%ps != 0 {
		refuse(wire.CodeBadRequest, "range %#x+%#x is not page-aligned", a.Addr, a.Length)
		return
	}

	// What backs the range. The region names the dataspace (and, for a
	// local one, the subsystem that declares it), never a file.
	region := wire.Region{Start: a.Addr, Length: a.Length, Dataspace: a.Name}
	var (
		src      content.Source
		size     uint64
		local    bool
		prefetch bool
		kind     wire.ContentKind
		seed     uint64
	)
	v.mu.Lock()
	info, offered := v.core[a.Name]
	v.mu.Unlock()
	if d, ok := w.sub.localDataspace(a.Name); ok {
		local, size, src = true, uint64(d.Size), w.sub.sources[a.Name]
		prefetch = d.Prefetch == config.PrefetchSequential
		region.Subsystem = w.sub.cfg.Name
		kind, seed = wire.ContentKind(d.Content), d.Seed
	} else if slices.Contains(w.sub.cfg.Dataspaces, a.Name) {
		if !offered {
			refuse(wire.CodeNotFound, "core-owned dataspace %q is not offered by core", a.Name)
			return
		}
		size = info.Size
		region.Forward = true
		switch {
		case info.Content != "":
			kind, seed = info.Content, info.Seed
		case a.Content != "":
			// core's catalogue does not say; the worker's hint does.
			kind, seed = a.Content, a.Seed
		default:
			kind = wire.ContentZero
		}
	} else if owner := v.dataspaceOwner(a.Name, offered); owner != "" {
		refuse(wire.CodeDenied, "dataspace %q (%s) is not one subsystem %s may use (local: %s; core-owned: %s)",
			a.Name, owner, w.sub.cfg.Name, localNames(w.sub), listOrNone(w.sub.cfg.Dataspaces))
		return
	} else {
		refuse(wire.CodeNotFound, "no dataspace %q: neither subsystem %s (local: %s; core-owned: %s) nor any other subsystem or core defines it",
			a.Name, w.sub.cfg.Name, localNames(w.sub), listOrNone(w.sub.cfg.Dataspaces))
		return
	}
	if a.Content != "" && (a.Content != kind || (a.Content == wire.ContentPattern && a.Seed != seed)) {
		refuse(wire.CodeBadRequest, "dataspace %q holds %s, the Attach asked for %s", a.Name, kindString(kind, seed), kindString(a.Content, a.Seed))
		return
	}
	if a.Length > size {
		refuse(wire.CodeBadRequest, "length %s exceeds dataspace %q's size %s", hw.Bytes(a.Length), a.Name, hw.Bytes(size))
		return
	}
	ok := &wire.AttachOK{Name: a.Name, Addr: a.Addr, Node: int(v.cfg.Node), Size: size,
		Content: kind, Seed: seed, Bind: local && a.Bind}

	// The same region again (a worker re-sending its regions after a
	// reconnect): nothing to do but answer.
	v.mu.Lock()
	if st := v.uffds[w.uffd]; st != nil {
		if r := st.regions[uintptr(a.Addr)]; r != nil && r.wire.Length == a.Length && r.wire.Dataspace == a.Name &&
			v.pgr.HasRegion(st.id, uintptr(a.Addr), uintptr(a.Length), a.Name) {
			v.mu.Unlock()
			v.log.Debug("attach of a region already held", "pid", w.pid, "dataspace", a.Name, "addr", fmt.Sprintf("%#x", a.Addr))
			v.answer(w, ok)
			return
		}
	}
	v.mu.Unlock()

	var charged uint64
	if local {
		if err := w.sub.quota.Reserve(int64(a.Length)); err != nil {
			refuse(wire.CodeDenied, "%v", err)
			return
		}
		charged = a.Length
	}

	v.mu.Lock()
	if v.stopping {
		v.mu.Unlock()
		w.sub.quota.Release(int64(charged))
		refuse(wire.CodeInternal, "%v", errStopping)
		return
	}
	st := v.uffds[w.uffd]
	if st == nil {
		// The pager dropped it (worker exiting) and the reaper forgot it.
		v.mu.Unlock()
		w.sub.quota.Release(int64(charged))
		refuse(wire.CodeNotFound, "the worker's userfaultfd is no longer held")
		return
	}
	if n := v.regionsLocked(w.sub); n >= w.sub.maxRegions() {
		v.mu.Unlock()
		w.sub.quota.Release(int64(charged))
		refuse(wire.CodeLimit, "subsystem %s already has %d regions registered (max_regions = %d in the vcore's configuration); detach some first",
			w.sub.cfg.Name, n, w.sub.maxRegions())
		return
	}
	persist := persistentOf(w.sub, a.Name)
	if !local {
		persist = nil
	}
	if persist != nil {
		if async, _ := v.pgr.WriteTracking(st.id); !async && v.grant.Pager == wire.PagerCentral {
			// core's pager serves this uffd and would not record the
			// write-protect faults of sync tracking.
			v.mu.Unlock()
			w.sub.quota.Release(int64(charged))
			refuse(wire.CodeUnsupported, "persistent dataspace %q in central pager mode needs async write tracking (Linux 6.7)", a.Name)
			return
		}
	}
	pr := pager.Region{Start: uintptr(a.Addr), Length: uintptr(a.Length), Dataspace: a.Name, Content: src, Forward: !local, Track: persist != nil,
		Prefetch: prefetch, Replicate: !local}
	err := v.pgr.AddRegion(st.id, pr)
	if errors.Is(err, pager.ErrOverlap) && v.staleOverlap(w.pid, a) && v.dropStaleLocked(st, region) {
		err = v.pgr.AddRegion(st.id, pr)
	}
	if err != nil {
		v.mu.Unlock()
		w.sub.quota.Release(int64(charged))
		code := wire.CodeInternal
		if errors.Is(err, pager.ErrOverlap) || errors.Is(err, pager.ErrBadRegion) {
			code = wire.CodeBadRequest
		}
		refuse(code, "register %#x+%#x: %v", a.Addr, a.Length, err)
		return
	}
	if persist != nil {
		// One region at a time (a stale one was dropped above). A holder
		// that has exited (a restarted worker attaching before the pager's
		// exit notice reached the reaper) is forgotten first.
		err := persist.reserve()
		if err != nil && v.forgetExitedLocked(persist.holderPid()) {
			err = persist.reserve()
		}
		if err != nil {
			_ = v.pgr.RemoveRegion(st.id, uintptr(a.Addr))
			v.mu.Unlock()
			w.sub.quota.Release(int64(charged))
			refuse(wire.CodeDenied, "%v", err)
			return
		}
		if err := persist.start(v.pgr, st.id, ckpt.Region{Pid: w.pid, Addr: uintptr(a.Addr), Size: a.Length}); err != nil {
			_ = v.pgr.RemoveRegion(st.id, uintptr(a.Addr))
			v.mu.Unlock()
			w.sub.quota.Release(int64(charged))
			refuse(wire.CodeInternal, "start write tracking of persistent dataspace %q: %v", a.Name, err)
			return
		}
	}
	if old := st.regions[uintptr(a.Addr)]; old != nil && st.sub != nil {
		// A region the worker unmapped without Detach, mapped anew.
		st.sub.quota.Release(int64(old.charged))
	}
	st.regions[uintptr(a.Addr)] = &regionState{wire: region, local: local, charged: charged, gen: v.regionGen.Add(1)}
	if local && v.conn != nil {
		if err := v.declareLocked(v.conn, w.sub, a.Name); err != nil {
			v.log.Warn("declare a dataspace to core", "dataspace", a.Name, "err", err)
		}
	}
	v.sendLocked(&wire.RegionAdd{UffdID: st.id, Region: region})
	v.mu.Unlock()
	v.answer(w, ok)
}

// staleOverlap reports whether the regions a new Attach overlaps may be
// replaced: the worker's newest Attach describes its address space, and what
// the vcore holds there belongs to a mapping that is gone (its Detach or
// UNMAP event was lost with a killed daemon; a taken-back region may even
// have registered the worker's new mapping before its Attach arrived). That
// is so when the range is not registered with a userfaultfd (a fresh
// mapping) or when the worker has no page of it yet (nothing served there
// can be lost or mixed). A registered range whose pages the worker has
// touched is a live region attached again in part: an overlap error, never
// a silent replacement.
func (v *VCore) staleOverlap(pid int, a *wire.Attach) bool {
	start, length := uintptr(a.Addr), uintptr(a.Length)
	live, err := linux.UffdRegisteredIn(pid, start, length)
	if err == nil && live {
		live, err = linux.AnyPresentIn(pid, start, length)
	}
	if err != nil {
		v.log.Warn("cannot tell a stale region from a live one; refusing the overlapping attach", "pid", pid, "err", err)
		return false
	}
	return !live
}

func (v *VCore) answer(w *worker, ok *wire.AttachOK) {
	if err := w.conn.SendMsg(ok); err != nil {
		v.log.Warn("answer an attach", "pid", w.pid, "err", err)
	}
}

// dataspaceOwner says who defines dataspace name when the asking subsystem
// does not list it: another subsystem of this vcore, or core (offered). ""
// means nobody.
func (v *VCore) dataspaceOwner(name string, offered bool) string {
	if offered {
		return "offered by core"
	}
	for _, s := range v.subs {
		if _, ok := s.localDataspace(name); ok {
			return "local to subsystem " + s.cfg.Name
		}
	}
	return ""
}

func kindString(k wire.ContentKind, seed uint64) string {
	if k == wire.ContentPattern {
		return fmt.Sprintf("pattern (seed %d)", seed)
	}
	return string(k)
}

// takeUffd adopts the userfaultfd a worker sent with its first Attach of a
// connection: checked to be one, recognised when the vcore already holds it
// (the worker reconnected, or core handed it back after a restart), else
// added to the pager (serving it unless core does, in central mode) with a
// dup queued for core. fd is owned by takeUffd, even on error.
func (v *VCore) takeUffd(w *worker, fd int) error {
	if ok, err := linux.IsUffd(fd); err != nil || !ok {
		linux.CloseFDs([]int{fd})
		if err != nil {
			return fmt.Errorf("%w: %v", errNotUffd, err)
		}
		return errNotUffd
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stopping {
		linux.CloseFDs([]int{fd})
		return errStopping
	}
	if st := v.heldUffdLocked(w.pid, fd); st != nil {
		linux.CloseFDs([]int{fd})
		if st.sub == nil {
			st.sub = w.sub
		}
		w.uffd = st.id
		// The worker reconnected: its mappings follow right away, so a
		// fault still outside every region gets the usual grace from now
		// (no longer a taken-back uffd's ReconnectGrace).
		if err := v.pgr.HoldUnknown(st.id, time.Now().Add(pager.DefaultUnknownGrace)); err != nil {
			v.log.Warn("hold unknown faults", "uffd", st.id, "err", err)
		}
		v.log.Info("a worker re-sent the userfaultfd the vcore holds; serving on", "pid", w.pid, "uffd", st.id, "regions", len(st.regions))
		return nil
	}
	id := v.newIDLocked(w.pid)
	serve := v.grant.Pager == wire.PagerLocal || v.conn == nil
	if err := v.pgr.AddUffd(id, linux.NewUffd(fd), w.pid, serve); err != nil {
		return err
	}
	st := &uffdState{id: id, pid: w.pid, sub: w.sub, regions: map[uintptr]*regionState{}}
	v.uffds[id] = st
	w.uffd = id
	if v.conn != nil {
		dup, err := v.pgr.Uffd(id)
		if err != nil {
			v.log.Warn("hand the uffd to core", "uffd", id, "err", err)
		} else {
			v.queueLocked(&wire.UffdAdd{UffdID: id, WorkerPid: w.pid, Serve: v.grant.Pager == wire.PagerCentral}, dup)
		}
	}
	return nil
}

// heldUffdLocked returns the held uffd of process pid that fd refers to
// (the same userfaultfd, received again), or nil. Called with mu held.
func (v *VCore) heldUffdLocked(pid int, fd int) *uffdState {
	for _, st := range v.sortedUffdsLocked() {
		if st.pid != pid {
			continue
		}
		d, err := v.pgr.Uffd(st.id)
		if err != nil {
			continue
		}
		same, err := linux.SameFile(d.FD(), fd)
		d.Close()
		if err != nil {
			v.log.Warn("compare userfaultfds", "uffd", st.id, "err", err)
			continue
		}
		if same {
			return st
		}
	}
	return nil
}

// newIDLocked allocates a uffd id: the worker's pid in the high half, this
// process's sequence in the low half, skipping ids already held (taken back
// from a previous vcore). Called with mu held.
func (v *VCore) newIDLocked(pid int) uint64 {
	if v.seq == 0 {
		// Start somewhere a predecessor (whose ids core may still hold and
		// hand back) most likely did not use.
		v.seq = uint64(time.Now().UnixNano()) >> 8 & 0x7fffffff
	}
	for {
		v.seq++
		id := uint64(pid)<<32 | v.seq&0xffffffff
		if _, taken := v.uffds[id]; !taken && v.seq&0xffffffff != 0 {
			return id
		}
	}
}

// detach unregisters the region at addr and returns its quota.
func (v *VCore) detach(w *worker, addr uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.uffds[w.uffd]
	if st == nil {
		return
	}
	r := st.regions[uintptr(addr)]
	if r == nil {
		v.log.Debug("Detach of an unknown region", "pid", w.pid, "addr", addr)
		return
	}
	// ErrNoRegion: the worker unmapped first and the pager saw the UNMAP.
	if err := v.pgr.RemoveRegion(st.id, uintptr(addr)); err != nil && !errors.Is(err, pager.ErrUnknownUffd) && !errors.Is(err, pager.ErrNoRegion) {
		v.log.Warn("remove region", "uffd", st.id, "addr", addr, "err", err)
	}
	v.untrackLocked(st, uintptr(addr))
	delete(st.regions, uintptr(addr))
	if st.sub != nil {
		st.sub.quota.Release(int64(r.charged))
	}
	// Core's view of the regions is the vcore's: it must not serve this
	// range from the detached dataspace after a failover.
	v.sendLocked(&wire.RegionRemove{UffdID: st.id, Start: r.wire.Start, Length: r.wire.Length})
}

// workerClosed runs when a worker's connection ends. Its uffd and regions
// stay: the connection is only a control channel, the uffd and the process
// are the lifetime (the pager drops the uffd when the worker exits, and the
// reaper forgets it then). A worker that reconnects sends the same uffd again
// and goes on.
func (v *VCore) workerClosed(w *worker) {
	if w.uffd == 0 {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if st := v.uffds[w.uffd]; st != nil {
		v.log.Debug("worker connection closed; its regions stay served", "pid", w.pid, "uffd", st.id, "regions", len(st.regions))
	}
}

// forgetExitedLocked drops the uffds of pid when that process has exited,
// as the reaper would on its next round, and reports whether it dropped
// any. Called with mu held.
func (v *VCore) forgetExitedLocked(pid int) bool {
	if pid <= 0 || linux.ProcessLive(pid) {
		return false
	}
	dropped := false
	for _, st := range v.uffds {
		if st.pid == pid {
			v.log.Debug("worker gone: forgetting its uffd", "uffd", st.id, "pid", pid)
			v.dropUffdLocked(st, true)
			dropped = true
		}
	}
	return dropped
}

// dropUffdLocked forgets a uffd: the pager closes it (remove), its quota is
// returned and core drops its dup. Called with mu held.
func (v *VCore) dropUffdLocked(st *uffdState, remove bool) {
	delete(v.uffds, st.id)
	v.untrackLocked(st, 0)
	if remove {
		if err := v.pgr.RemoveUffd(st.id); err != nil && !errors.Is(err, pager.ErrUnknownUffd) {
			v.log.Warn("remove uffd", "uffd", st.id, "err", err)
		}
	}
	if st.sub != nil {
		for _, r := range st.regions {
			st.sub.quota.Release(int64(r.charged))
		}
	}
	v.sendLocked(&wire.UffdRemove{UffdID: st.id})
}

func localNames(s *subsystem) string {
	var n []string
	for _, d := range s.cfg.Local {
		n = append(n, d.Name)
	}
	return listOrNone(n)
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return fmt.Sprint(s)
}
