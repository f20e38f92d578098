package vcore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
	"github.com/vcored/vcored/vcore/replica"
)

// maxRegionsInAdd bounds the regions carried in one UffdAdd; the rest follow
// as RegionAdd messages (a frame's payload is at most wire.MaxPayload).
const maxRegionsInAdd = 64

// fwdKey is a forwarded page: one Forward per page is in flight at a time.
type fwdKey struct{ uffd, addr uint64 }

// pendingForward is a fault forwarded to core and not answered yet.
type pendingForward struct {
	msg  wire.Forward
	sent time.Time
	// gen is VCore.regionGen when the fault was forwarded: a region with
	// a higher gen was attached after it (see staleForward).
	gen uint64
}

// connect dials core, retrying until Options.DialTimeout, and claims the
// partition. While core is not reachable it logs "waiting for core at
// SOCKET" at info level once, then every 30 s.
func (v *VCore) connect(ctx context.Context) (*wire.Conn, wire.ClaimOK, error) {
	const waitLogEvery = 30 * time.Second // how often "waiting for core" is repeated
	start := time.Now()
	deadline := start.Add(v.opts.DialTimeout)
	delay := redialMin
	var lastLog time.Time // when "waiting for core" was last logged
	for {
		conn, err := wire.Dial(ctx, v.cfg.CoreSocket)
		if err == nil {
			grant, err := v.claim(ctx, conn, v.previousStates())
			if err != nil {
				conn.Close()
				return nil, wire.ClaimOK{}, err
			}
			return conn, grant, nil
		}
		if ctx.Err() != nil {
			return nil, wire.ClaimOK{}, fmt.Errorf("vcore: connect to core: %w", ctx.Err())
		}
		// Keep trying until the deadline itself (the last wait is cut short
		// to end there), not until the next backoff would pass it: that gave
		// up as much as a second early.
		left := time.Until(deadline)
		if left <= 0 {
			return nil, wire.ClaimOK{}, fmt.Errorf("vcore: core is not reachable at %s (tried for %v): %w", v.cfg.CoreSocket, v.opts.DialTimeout, err)
		}
		wait := min(delay, left)
		// Said once when the wait starts, then every waitLogEvery: a vcore
		// started before core is not silent until it gives up.
		switch {
		case lastLog.IsZero():
			v.log.Info("waiting for core at "+v.cfg.CoreSocket, "socket", v.cfg.CoreSocket, "err", err, "gives_up_after", v.opts.DialTimeout)
			lastLog = time.Now()
		case time.Since(lastLog) >= waitLogEvery:
			v.log.Info("still waiting for core at "+v.cfg.CoreSocket, "socket", v.cfg.CoreSocket, "err", err,
				"waited", time.Since(start).Round(time.Second), "gives_up_after", v.opts.DialTimeout)
			lastLog = time.Now()
		default:
			v.log.Debug("core not reachable yet; retrying", "socket", v.cfg.CoreSocket, "err", err, "in", wait)
		}
		select {
		case <-ctx.Done():
			return nil, wire.ClaimOK{}, fmt.Errorf("vcore: connect to core: %w", ctx.Err())
		case <-time.After(wait):
		}
		delay = min(2*delay, time.Second)
	}
}

// claim says Hello and claims the partition on a fresh connection. subs is
// the state of the running subsystems when re-registering.
func (v *VCore) claim(ctx context.Context, conn *wire.Conn, subs []wire.SubsystemState) (wire.ClaimOK, error) {
	fail := func(err error) (wire.ClaimOK, error) {
		var we *wire.Error
		if errors.As(err, &we) {
			return wire.ClaimOK{}, fmt.Errorf("%w: %s", ErrClaimRefused, we.Msg)
		}
		return wire.ClaimOK{}, err
	}
	hello := &wire.Hello{Role: wire.RoleVCore, Pid: os.Getpid(), Node: int(v.cfg.Node), Version: wire.Version}
	if err := conn.SendMsg(hello); err != nil {
		return fail(fmt.Errorf("vcore: hello to core: %w", err))
	}
	if _, err := expect[*wire.HelloOK](ctx, conn); err != nil {
		return fail(fmt.Errorf("vcore: hello to core: %w", err))
	}
	c := &wire.Claim{
		Node:       int(v.cfg.Node),
		CPUs:       v.cfg.CPUs,
		Memory:     uint64(v.cfg.Memory),
		VCoreID:    v.cfg.Socket,
		Socket:     v.cfg.Socket,
		Subsystems: subs,
		// Replicas of read-only file dataspaces need core's bytes.
		ReplicaPages: v.cfg.ReplicaBudget > 0,
	}
	if err := conn.SendMsg(c); err != nil {
		return fail(fmt.Errorf("vcore: claim: %w", err))
	}
	ok, err := expect[*wire.ClaimOK](ctx, conn)
	if err != nil {
		return fail(fmt.Errorf("vcore: claim node %d: %w", v.cfg.Node, err))
	}
	if ok.CPUs.IsEmpty() || ok.Cgroup == "" {
		return wire.ClaimOK{}, fmt.Errorf("vcore: core granted an unusable partition (cpus %q, cgroup %q)", ok.CPUs, ok.Cgroup)
	}
	if ok.Mems.IsEmpty() {
		ok.Mems = hw.NewSet(v.cfg.Node)
	}
	return *ok, nil
}

// expect reads the next message, which must be a T or an Error (returned as
// the error).
func expect[T wire.Message](ctx context.Context, conn *wire.Conn) (T, error) {
	var zero T
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	f, err := conn.RecvContext(ctx)
	if err != nil {
		return zero, err
	}
	f.CloseFDs()
	m, err := wire.Decode(f)
	if err != nil {
		return zero, err
	}
	switch x := m.(type) {
	case T:
		return x, nil
	case *wire.Error:
		return zero, x
	}
	return zero, fmt.Errorf("%w: got %s", wire.ErrProtocol, f.Type)
}

// coreLoop reads core's messages; when the connection is lost it redials
// and re-registers until ctx ends.
func (v *VCore) coreLoop(ctx context.Context, conn *wire.Conn) {
	for {
		err := v.readCore(conn)
		v.mu.Lock()
		stopping := v.stopping
		if v.conn == conn {
			v.conn = nil
		}
		v.mu.Unlock()
		conn.Close()
		if stopping || ctx.Err() != nil {
			return
		}
		v.log.Warn("lost the connection to core; serving every uffd here and redialing", "err", err)
		v.serveAll(true)
		if conn = v.redial(ctx); conn == nil {
			return
		}
	}
}

// readCore handles core's messages on conn until it fails.
func (v *VCore) readCore(conn *wire.Conn) error {
	for {
		f, err := conn.Recv()
		if err != nil {
			return err
		}
		switch f.Type {
		case wire.TypeForwardDone:
			var d wire.ForwardDone
			if err := d.Unmarshal(f.Payload); err != nil {
				v.log.Warn("bad ForwardDone from core", "err", err)
				continue
			}
			v.forwardDone(d)
			continue
		case wire.TypeReplicaPage:
			var rp wire.ReplicaPage
			if err := rp.Unmarshal(f.Payload); err != nil {
				v.log.Warn("bad ReplicaPage from core", "err", err)
				continue
			}
			v.replicaPage(&rp)
			continue
		}
		m, err := wire.Decode(f)
		if err != nil {
			f.CloseFDs()
			v.log.Warn("bad message from core", "type", f.Type, "err", err)
			continue
		}
		switch x := m.(type) {
		case *wire.TakeBack:
			v.takeBack(x, f.FDs[0])
		case *wire.RegionAdd:
			v.takeBackRegion(x.UffdID, x.Region)
		case *wire.Ack:
			if x.Of == wire.TypeRelease {
				v.mu.Lock()
				if v.releaseOK != nil {
					close(v.releaseOK)
					v.releaseOK = nil
				}
				v.mu.Unlock()
			}
		case *wire.Error:
			v.log.Warn("core reports an error", "code", x.Code, "msg", x.Msg)
		default:
			f.CloseFDs()
			v.log.Warn("unexpected message from core", "type", f.Type)
		}
	}
}

// redial reconnects to core with backoff and re-registers: Hello, Claim with
// the subsystems' state, UffdAdd and RegionAdds for every held uffd, then the
// forwards still pending. It returns nil when ctx ends first.
func (v *VCore) redial(ctx context.Context) *wire.Conn {
	delay := redialMin
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, redialMax)
		conn, err := wire.Dial(ctx, v.cfg.CoreSocket)
		if err != nil {
			v.log.Debug("redial core", "err", err)
			continue
		}
		grant, err := v.claim(ctx, conn, v.subsystemStates())
		if err != nil {
			conn.Close()
			v.log.Warn("re-registering with core failed; retrying", "err", err)
			continue
		}
		if err := v.resync(conn, grant); err != nil {
			conn.Close()
			v.log.Warn("re-registering with core failed; retrying", "err", err)
			continue
		}
		v.log.Info("re-registered with core", "pager", grant.Pager)
		return conn
	}
}

// resync makes conn the session and replays the uffds and pending forwards.
func (v *VCore) resync(conn *wire.Conn, grant wire.ClaimOK) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.stopping {
		return errors.New("vcore stopping")
	}
	if !grant.CPUs.Equal(v.grant.CPUs) || grant.Cgroup != v.grant.Cgroup {
		v.log.Warn("core granted a different partition than before; keeping the running one", "cpus", grant.CPUs, "cgroup", grant.Cgroup)
	}
	v.grant.Pager = grant.Pager
	v.grant.Dataspaces = grant.Dataspaces
	for _, u := range v.sortedUffdsLocked() {
		if err := v.sendUffdLocked(conn, u); err != nil {
			return err
		}
	}
	v.fwdMu.Lock()
	var fwds []wire.Forward
	for _, p := range v.pending {
		fwds = append(fwds, p.msg)
	}
	v.fwdMu.Unlock()
	for i := range fwds {
		if err := conn.SendMsg(&fwds[i]); err != nil {
			return err
		}
	}
	v.conn = conn
	// In central mode core polls again; local mode: keep serving here.
	central := grant.Pager == wire.PagerCentral
	for _, u := range v.uffds {
		if err := v.pgr.Serve(u.id, !central); err != nil && !errors.Is(err, pager.ErrUnknownUffd) {
			v.log.Warn("switch serving of uffd", "uffd", u.id, "err", err)
		}
	}
	return nil
}

// serveAll starts (or stops) serving every held uffd here.
func (v *VCore) serveAll(on bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, u := range v.uffds {
		if err := v.pgr.Serve(u.id, on); err != nil && !errors.Is(err, pager.ErrUnknownUffd) {
			v.log.Warn("serve uffd", "uffd", u.id, "on", on, "err", err)
		}
	}
}

// sendUffdLocked sends UffdAdd (with a dup of the fd) and the RegionAdds
// that did not fit, after declaring the local dataspaces they name. Called
// with mu held.
func (v *VCore) sendUffdLocked(conn *wire.Conn, u *uffdState) error {
	dup, err := v.pgr.Uffd(u.id)
	if err != nil {
		return err
	}
	defer dup.Close()
	regions := u.wireRegions()
	for _, r := range regions {
		if r.Forward {
			continue
		}
		if sub := v.regionSub(u, r); sub != nil {
			if err := v.declareLocked(conn, sub, r.Dataspace); err != nil {
				return err
			}
		}
	}
	first := regions[:min(len(regions), maxRegionsInAdd)]
	add := &wire.UffdAdd{UffdID: u.id, WorkerPid: u.pid, Serve: v.grant.Pager == wire.PagerCentral, Regions: first}
	if err := conn.SendMsg(add, dup.FD()); err != nil {
		return fmt.Errorf("vcore: UffdAdd %d: %w", u.id, err)
	}
	for _, r := range regions[len(first):] {
		if err := conn.SendMsg(&wire.RegionAdd{UffdID: u.id, Region: r}); err != nil {
			return fmt.Errorf("vcore: RegionAdd %d: %w", u.id, err)
		}
	}
	return nil
}

// regionSub is the subsystem whose local dataspace r names.
func (v *VCore) regionSub(u *uffdState, r wire.Region) *subsystem {
	if u.sub != nil && (r.Subsystem == "" || r.Subsystem == u.sub.cfg.Name) {
		return u.sub
	}
	return v.subByName(r.Subsystem)
}

// dsKey names a local dataspace: its subsystem and name.
type dsKey struct{ sub, name string }

// declaredSet is what core was told on one connection (DataspaceAdd is
// sent once per dataspace and session).
type declaredSet struct {
	conn *wire.Conn
	set  map[dsKey]bool
}

// declareLocked sends DataspaceAdd for sub's local dataspace name on conn
// unless it was sent there already. File content travels as the vcore's
// open read-only descriptor. A dataspace this vcore has no source for (a
// taken-back region of a subsystem it does not run) is not declared: core
// keeps what the previous vcore declared. Called with mu held.
func (v *VCore) declareLocked(conn *wire.Conn, sub *subsystem, name string) error {
	if v.declared.conn != conn {
		v.declared = declaredSet{conn: conn, set: map[dsKey]bool{}}
	}
	key := dsKey{sub.cfg.Name, name}
	if v.declared.set[key] {
		return nil
	}
	d, ok := sub.localDataspace(name)
	src := sub.source(name)
	if !ok || src == nil {
		return nil
	}
	m := &wire.DataspaceAdd{Subsystem: sub.cfg.Name, Name: name, Content: content.KindOf(src), Size: uint64(d.Size)}
	if m.Content == wire.ContentPattern {
		m.Seed = d.Seed
	}
	f, isFile := content.FileOf(src)
	if conn == v.conn {
		// The live session: queue it (no I/O under mu) ahead of the
		// RegionAdd that names it; the outbox owns (and closes) a dup of
		// the file's descriptor.
		var dup *linux.Uffd
		if isFile {
			d, err := linux.NewUffd(int(f.Fd())).Dup()
			if err != nil {
				return fmt.Errorf("vcore: DataspaceAdd %s/%s: dup the file descriptor: %w", sub.cfg.Name, name, err)
			}
			dup = d
		}
		v.queueLocked(m, dup)
	} else {
		// A resync on a new connection, before it becomes v.conn: the
		// writes have the connection's deadline.
		var fds []int
		if isFile {
			fds = append(fds, int(f.Fd()))
		}
		if err := conn.SendMsg(m, fds...); err != nil {
			return fmt.Errorf("vcore: DataspaceAdd %s/%s: %w", sub.cfg.Name, name, err)
		}
	}
	v.declared.set[key] = true
	return nil
}

// sendLocked queues m for core if connected; a lost message is replayed by
// the next resync. Called with mu held; it does no I/O (the outbox writes).
func (v *VCore) sendLocked(m wire.Message) {
	v.queueLocked(m, nil)
}

// forward is the pager's Forward callback: a fault in a core-owned dataspace
// goes to core. It only records the fault and queues the Forward behind the
// registrations made before it: it never waits for core.
func (v *VCore) forward(f pager.Fault) {
	msg := v.recordForward(f)
	if msg == nil {
		return
	}
	v.mu.Lock()
	v.queueLocked(msg, nil)
	v.mu.Unlock()
}

// tryForward is the pager's TryForward callback, run on the pager thread
// that read the fault: the fast path of forward. When the connection is
// idle (nothing queued, nobody writing) the thread writes the Forward
// itself, without waiting, instead of handing it to the forwarder and the
// outbox goroutines. It must not block (the thread holds the uffd's
// locks, which a registration holding v.mu may wait for), so it only
// tries v.mu: false when it is busy — a registration may be under way,
// whose messages must reach core first — and the pager queues the fault
// for forward.
func (v *VCore) tryForward(f pager.Fault) bool {
	if !v.mu.TryLock() {
		return false
	}
	msg := v.recordForward(f)
	conn := v.conn
	direct := msg != nil && conn != nil && v.out.claimIdle()
	if msg != nil && !direct {
		v.queueLocked(msg, nil)
	}
	v.mu.Unlock()
	if direct {
		v.writeNow(conn, msg)
	}
	return true
}

// recordForward records f as pending (a resync replays it until core
// answers) and returns its Forward; nil when the same page is already on
// its way to core.
func (v *VCore) recordForward(f pager.Fault) *wire.Forward {
	v.fwdMu.Lock()
	defer v.fwdMu.Unlock()
	key := fwdKey{uffd: f.Uffd, addr: uint64(f.Addr)}
	if _, dup := v.fwdInflight[key]; dup {
		// The same page is already on its way to core (a thread woken by
		// a signal faults again): core's answer wakes every waiter.
		return nil
	}
	if v.fwdInflight == nil {
		v.fwdInflight = map[fwdKey]uint64{}
	}
	v.fwdSeq++
	v.fwdInflight[key] = v.fwdSeq
	msg := &wire.Forward{UffdID: f.Uffd, Addr: uint64(f.Addr), Dataspace: f.Dataspace, Offset: f.Offset, TID: f.TID, SeqNo: v.fwdSeq}
	start := f.Start
	if start.IsZero() {
		start = time.Now()
	}
	v.pending[msg.SeqNo] = pendingForward{msg: *msg, sent: start, gen: v.regionGen.Load()}
	return msg
}

// forwardDone records the round trip of an answered forward and, once core
// mapped the page, keeps a replica of it (replica.go).
func (v *VCore) forwardDone(d wire.ForwardDone) {
	msg, ok := v.forwardAnswered(d)
	if !ok || d.Errno != 0 || v.replicas == nil {
		return
	}
	v.mu.Lock()
	info, known := v.core[msg.Dataspace]
	v.mu.Unlock()
	if !known {
		return
	}
	if src, ok := replica.Replicable(info); ok {
		if err := v.replicas.Fill(msg.Dataspace, msg.Offset, src); err != nil {
			v.log.Warn("keep a replica page", "dataspace", msg.Dataspace, "offset", msg.Offset, "err", err)
		}
	}
}

// forwardAnswered is forwardDone's bookkeeping; it returns the forward
// answered (ok false: none pending, e.g. answered twice). A refused forward
// fails the faulting thread (SIGBUS), outside fwdMu: a pager thread takes
// fwdMu holding the uffd's lock, which Fail takes too.
func (v *VCore) forwardAnswered(d wire.ForwardDone) (wire.Forward, bool) {
	p, ok := v.answered(d)
	if ok && d.Errno != 0 && v.staleForward(p) {
		// The worker detached the region since (and may have mapped new
		// memory there): core, told first, no longer serves it. Failing
		// the address now would signal a thread that is elsewhere or
		// poison a page of the new mapping. A thread still waiting there
		// is woken: it faults again and the new fault is served, or
		// failed, on its own terms.
		v.log.Info("core refused a forward for a region detached since; not failing the address", "uffd", p.msg.UffdID,
			"dataspace", p.msg.Dataspace, "addr", fmt.Sprintf("%#x", p.msg.Addr), "errno", d.Errno)
		if u, err := v.pgr.Uffd(p.msg.UffdID); err == nil {
			_ = u.Wake(uintptr(p.msg.Addr)&^uintptr(linux.PageSize()-1), uintptr(linux.PageSize()))
		}
		return p.msg, ok
	}
	if ok && d.Errno != 0 {
		// Core cannot back the page: the faulting thread gets SIGBUS
		// rather than waiting forever.
		v.log.Warn("core could not resolve a forwarded fault", "uffd", p.msg.UffdID, "dataspace", p.msg.Dataspace,
			"addr", fmt.Sprintf("%#x", p.msg.Addr), "offset", p.msg.Offset, "errno", d.Errno)
		if err := v.pgr.Fail(p.msg.UffdID, uintptr(p.msg.Addr), p.msg.TID, "core could not resolve a forwarded fault"); err != nil && !errors.Is(err, pager.ErrUnknownUffd) {
			v.log.Warn("fail a forwarded fault", "uffd", p.msg.UffdID, "err", err)
		}
	}
	return p.msg, ok
}

// staleForward reports whether the region p's fault was forwarded in is
// gone: no region of its uffd holds the address any more, or the one that
// does names another dataspace or was attached after the forward (a
// region the worker detached and attached anew). Core answers such a
// forward with an error (it drops a region on RegionRemove, which reaches
// it before a late Forward: a fault raised twice, the second read after
// the first was served and the worker moved on).
func (v *VCore) staleForward(p pendingForward) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.uffds[p.msg.UffdID]
	if st == nil {
		return true
	}
	for _, rs := range st.regions {
		if p.msg.Addr >= rs.wire.Start && p.msg.Addr-rs.wire.Start < rs.wire.Length {
			return rs.wire.Dataspace != p.msg.Dataspace || rs.gen > p.gen
		}
	}
	return true
}

// answered removes the pending forward d answers and records its round trip.
func (v *VCore) answered(d wire.ForwardDone) (pendingForward, bool) {
	v.fwdMu.Lock()
	defer v.fwdMu.Unlock()
	p, ok := v.pending[d.SeqNo]
	if !ok {
		return pendingForward{}, false // answered twice (replayed after a reconnect)
	}
	delete(v.pending, d.SeqNo)
	if key := (fwdKey{uffd: p.msg.UffdID, addr: p.msg.Addr}); v.fwdInflight[key] == d.SeqNo {
		delete(v.fwdInflight, key)
	}
	h := v.fwdLat[p.msg.Dataspace]
	if h == nil {
		h = hist.New()
		v.fwdLat[p.msg.Dataspace] = h
	}
	h.Record(int64(time.Since(p.sent)))
	return p, true
}

// forwardLatency returns a copy of the forwarded-fault round trips of ds.
func (v *VCore) forwardLatency(ds string) *hist.Histogram {
	v.fwdMu.Lock()
	defer v.fwdMu.Unlock()
	h := v.fwdLat[ds]
	if h == nil {
		return nil
	}
	c := hist.New()
	c.Merge(h)
	return c
}

// takeBack adopts a uffd core served while this partition had no vcore.
func (v *VCore) takeBack(tb *wire.TakeBack, fd int) {
	u := linux.NewUffd(fd)
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, dup := v.uffds[tb.UffdID]; dup {
		u.Close()
		v.log.Warn("TakeBack of a uffd already held", "uffd", tb.UffdID)
		return
	}
	if st := v.heldUffdLocked(tb.WorkerPid, fd); st != nil {
		// The worker re-sent it first (it reconnected before core handed
		// it back): keep the one held, add what only core knew, and let
		// core drop its second copy.
		u.Close()
		for _, r := range tb.Regions {
			if st.regions[uintptr(r.Start)] == nil {
				v.addTakenRegionLocked(st, r)
			}
		}
		v.sendLocked(&wire.UffdRemove{UffdID: tb.UffdID})
		v.log.Info("core handed back a uffd the worker already re-sent", "uffd", st.id, "core_uffd", tb.UffdID, "pid", tb.WorkerPid)
		return
	}
	st := &uffdState{id: tb.UffdID, pid: tb.WorkerPid, regions: map[uintptr]*regionState{}}
	if p, err := cgroupOf(v.procfs, tb.WorkerPid); err == nil {
		if name, ok := subsystemOf(p, v.groups); ok {
			st.sub = v.subByName(name)
		} else {
			st.sub = v.movedInOf(p) // handed over by a live move
		}
	}
	serve := v.grant.Pager == wire.PagerLocal
	if err := v.pgr.AddUffd(tb.UffdID, u, tb.WorkerPid, serve); err != nil {
		v.log.Error("take back uffd", "uffd", tb.UffdID, "pid", tb.WorkerPid, "err", err)
		return
	}
	// Core's table may lack a region the worker uses (its RegionAdd died
	// with the previous vcore): a fault there waits for the worker's
	// client to reconnect and re-send its mappings (it redials with a
	// backoff of up to 2 s), not only the usual grace — bounded.
	if err := v.pgr.HoldUnknown(tb.UffdID, time.Now().Add(pager.ReconnectGrace)); err != nil {
		v.log.Warn("hold the taken-back uffd's unknown faults", "uffd", tb.UffdID, "err", err)
	}
	v.uffds[tb.UffdID] = st
	for _, r := range tb.Regions {
		v.addTakenRegionLocked(st, r)
	}
	v.log.Info("took back a uffd from core", "uffd", tb.UffdID, "pid", tb.WorkerPid, "regions", len(tb.Regions), "hold", pager.ReconnectGrace)
}

// takeBackRegion adds a region core sent after a TakeBack.
func (v *VCore) takeBackRegion(id uint64, r wire.Region) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.uffds[id]
	if st == nil {
		v.log.Warn("RegionAdd from core for an unknown uffd", "uffd", id)
		return
	}
	v.addTakenRegionLocked(st, r)
}

// addTakenRegionLocked registers a region of a taken-back uffd and reserves
// its quota (a local region of a known subsystem). A local region of a
// dataspace this vcore has no source for is forwarded: core serves it from
// what the previous vcore declared. Called with mu held.
func (v *VCore) addTakenRegionLocked(st *uffdState, r wire.Region) {
	pr := pager.Region{Start: uintptr(r.Start), Length: uintptr(r.Length), Dataspace: r.Dataspace, Offset: r.Offset, Forward: r.Forward,
		Replicate: r.Forward}
	local := false
	if !r.Forward {
		if sub := v.regionSub(st, r); sub != nil {
			pr.Content = sub.source(r.Dataspace)
			d, _ := sub.localDataspace(r.Dataspace)
			pr.Prefetch = d.Prefetch == config.PrefetchSequential
		}
		if pr.Content == nil {
			pr.Forward = true
			v.log.Warn("taken-back region of a dataspace this vcore does not have: core serves it", "uffd", st.id,
				"subsystem", r.Subsystem, "dataspace", r.Dataspace)
		} else {
			local = true
		}
	}
	if err := v.pgr.AddRegion(st.id, pr); err != nil {
		v.log.Error("take back region", "uffd", st.id, "dataspace", r.Dataspace, "err", err)
		return
	}
	rs := &regionState{wire: r, local: local, gen: v.regionGen.Add(1)}
	if local && st.sub != nil {
		st.sub.quota.Force(int64(r.Length))
		rs.charged = r.Length
	}
	st.regions[uintptr(r.Start)] = rs
}

// dropStaleLocked forgets the regions of st that overlap r, a range the
// worker just mapped and attached: whatever was registered there belongs
// to a mapping that is gone (its Detach or UNMAP event was lost with a dead
// vcore). Core is told (RegionRemove). It reports whether it dropped any.
// Called with mu held.
func (v *VCore) dropStaleLocked(st *uffdState, r wire.Region) bool {
	dropped := false
	for start, rs := range st.regions {
		if !rs.wire.Overlaps(r) {
			continue
		}
		if err := v.pgr.RemoveRegion(st.id, start); err != nil && !errors.Is(err, pager.ErrNoRegion) {
			v.log.Warn("remove a stale region", "uffd", st.id, "start", fmt.Sprintf("%#x", start), "err", err)
		}
		v.untrackLocked(st, start)
		delete(st.regions, start)
		if st.sub != nil {
			st.sub.quota.Release(int64(rs.charged))
		}
		v.sendLocked(&wire.RegionRemove{UffdID: st.id, Start: rs.wire.Start, Length: rs.wire.Length})
		v.log.Info("dropped a stale region under a new attach", "uffd", st.id, "start", fmt.Sprintf("%#x", rs.wire.Start),
			"dataspace", rs.wire.Dataspace, "new_dataspace", r.Dataspace)
		dropped = true
	}
	// A region the pager cut (an UNMAP it read) may start elsewhere.
	if cur, err := v.pgr.Regions(st.id); err == nil {
		for _, pr := range cur {
			if pr.Start < uintptr(r.Start+r.Length) && uintptr(r.Start) < pr.End() {
				_ = v.pgr.RemoveRegion(st.id, pr.Start)
				dropped = true
			}
		}
	}
	return dropped
}

// regionsChanged brings the vcore's region records, and core's, in line
// with the pager's table after the worker unmapped or moved registered
// memory without a Detach (the pager read the UNMAP/REMAP event): a
// region that is gone or was cut is removed (RegionRemove), the pieces
// that remain or moved are added (RegionAdd), and the quota follows.
func (v *VCore) regionsChanged(id uint64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.uffds[id]
	if st == nil {
		return
	}
	cur, err := v.pgr.Regions(id)
	if err != nil {
		return
	}
	have := map[uintptr]pager.Region{}
	for _, pr := range cur {
		have[pr.Start] = pr
	}
	var gone []*regionState
	for start, rs := range st.regions {
		if pr, ok := have[start]; ok && uint64(pr.Length) == rs.wire.Length && pr.Offset == rs.wire.Offset {
			delete(have, start) // unchanged
			continue
		}
		gone = append(gone, rs)
		v.untrackLocked(st, start) // a persistent region cut or moved is no longer checkpointed
		delete(st.regions, start)
		if st.sub != nil {
			st.sub.quota.Release(int64(rs.charged))
		}
		v.sendLocked(&wire.RegionRemove{UffdID: id, Start: rs.wire.Start, Length: rs.wire.Length})
	}
	for _, pr := range have { // pieces of cut or moved regions
		var parent *regionState
		for _, g := range gone {
			if g.wire.Dataspace == pr.Dataspace {
				parent = g
				break
			}
		}
		if parent == nil {
			continue
		}
		w := parent.wire
		w.Start, w.Length, w.Offset = uint64(pr.Start), uint64(pr.Length), pr.Offset
		rs := &regionState{wire: w, local: parent.local, gen: parent.gen} // a piece of the same mapping
		if parent.charged > 0 && st.sub != nil {
			st.sub.quota.Force(int64(w.Length))
			rs.charged = w.Length
		}
		st.regions[pr.Start] = rs
		if sub := v.regionSub(st, w); rs.local && sub != nil && v.conn != nil {
			if err := v.declareLocked(v.conn, sub, w.Dataspace); err != nil {
				v.log.Warn("declare a dataspace to core", "dataspace", w.Dataspace, "err", err)
			}
		}
		v.sendLocked(&wire.RegionAdd{UffdID: id, Region: w})
	}
	if len(gone) > 0 {
		v.log.Debug("regions changed by the worker's unmap", "uffd", id, "removed", len(gone), "regions", len(st.regions))
	}
}
