package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

// session is one connected vcore.
type session struct {
	conn  *wire.Conn
	id    string // VCoreID: the vcore's socket path
	pid   int
	node  hw.Node
	lease Lease
	since time.Time
	log   *slog.Logger

	forwarded, forwardErrors uint64 // under Core.mu
	released                 atomic.Bool
	replicaPages             bool // the Claim asked for ReplicaPage (replica.go)
}

// serveWire handles one framed-protocol connection: a vcore's session.
// Workers never talk to core directly.
func (c *Core) serveWire(ctx context.Context, conn *wire.Conn) {
	peer := conn.Peer()
	log := c.log.With("peer_pid", peer.Pid)
	// Authority by role: the framed protocol claims partitions, hands over
	// uffds and changes state, so only root or core's own uid may speak it.
	// socket_group members get the read-only HTTP status and nothing else.
	if peer.Uid != 0 && peer.Uid != os.Geteuid() {
		log.Warn("refused a framed-protocol peer: only root or core's uid may act as a vcore", "uid", peer.Uid, "gid", peer.Gid)
		c.refuse(conn, wire.CodeDenied, fmt.Sprintf("uid %d may not speak core's framed protocol (socket_group grants read-only HTTP status)", peer.Uid))
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := conn.Recv()
	if err != nil {
		log.Warn("connection closed before Hello", "err", err)
		return
	}
	hello, ok := decode[*wire.Hello](c, conn, f)
	if !ok {
		return
	}
	if hello.Role != wire.RoleVCore {
		c.refuse(conn, wire.CodeDenied, fmt.Sprintf("core talks to vcores only, not to a %q", hello.Role))
		return
	}
	if hello.Version != wire.Version {
		c.refuse(conn, wire.CodeVersion, fmt.Sprintf("protocol version %d, core speaks %d", hello.Version, wire.Version))
		return
	}
	if err := conn.SendMsg(&wire.HelloOK{Server: "core", Pid: osPid, Node: -1, Version: wire.Version}); err != nil {
		return
	}
	f, err = conn.Recv()
	if err != nil {
		return
	}
	claim, ok := decode[*wire.Claim](c, conn, f)
	if !ok {
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	s, err := c.grant(conn, peer.Pid, claim)
	if err != nil {
		c.mu.Lock()
		c.counters.refused++
		c.mu.Unlock()
		code := wire.CodeBadRequest
		switch {
		case errors.Is(err, ErrConflict):
			code = wire.CodeConflict
		case errors.Is(err, ErrLedgerWrite):
			code = wire.CodeInternal
		}
		log.Warn("claim refused", "node", claim.Node, "vcore", claim.VCoreID, "err", err)
		c.refuse(conn, code, err.Error())
		return
	}
	defer c.endSession(s)
	s.log.Info("vcore session up", "cpus", s.lease.CPUs.String(), "memory", s.lease.Memory.String(), "cgroup", s.lease.Cgroup)
	var (
		poll      time.Duration // the adaptive poll window after a Forward
		servedFwd time.Time     // when the last frame, a Forward, was served; zero otherwise
	)
	for {
		if !servedFwd.IsZero() && poll > 0 {
			conn.Poll(poll)
		}
		f, err := conn.Recv()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("vcore connection lost", "err", err)
			}
			return
		}
		if !servedFwd.IsZero() {
			poll = nextPoll(poll, time.Since(servedFwd))
		}
		fwd := f.Type == wire.TypeForward
		if done := c.handle(s, f); done {
			return
		}
		servedFwd = time.Time{}
		if fwd {
			servedFwd = time.Now()
		}
	}
}

var osPid = os.Getpid()

// Polling for the next Forward. Waking core's reader costs a sleeping CPU
// a wake-up, which on a VM whose idle vCPUs halt (haltpoll with
// guest_halt_poll_ns=0, this project's development VMs) takes tens of µs:
// several times the work of serving the fault, and half of a forwarded
// fault's time. While a vcore streams forwarded faults (a worker scanning a
// core-owned dataspace) the next Forward follows the answer to the previous
// one within tens of µs, so after serving a Forward the reader polls its
// connection for a short window (wire.Conn.Poll) instead of sleeping. The
// window adapts as the kernel's halt polling does: it grows while the next
// message comes just after the window would have ended, and shrinks to
// nothing when messages are farther apart than the longest window, so
// isolated forwards cost no polling. The CPU polled is core's own
// (reserved_cpus), busy at most pollMax per Forward served.
const (
	pollMax   = 200 * time.Microsecond // the longest poll after a Forward
	pollStart = 25 * time.Microsecond  // the first window once streaming is seen
)

// nextPoll adapts the poll window after a Forward: gap is how long the next
// message took to arrive after the Forward was served.
func nextPoll(cur, gap time.Duration) time.Duration {
	switch {
	case gap <= cur:
		return cur // the poll caught it
	case gap <= pollMax:
		return min(max(2*cur, pollStart), pollMax) // a longer poll would have
	default:
		if cur /= 2; cur < pollStart {
			return 0
		}
		return cur
	}
}

// decode unmarshals a frame of the expected message type, or answers with
// an Error and reports false.
func decode[M wire.Message](c *Core, conn *wire.Conn, f wire.Frame) (M, bool) {
	var zero M
	m, err := wire.Decode(f)
	if err != nil {
		f.CloseFDs()
		c.refuse(conn, wire.CodeBadRequest, err.Error())
		return zero, false
	}
	mm, ok := m.(M)
	if !ok {
		f.CloseFDs()
		c.refuse(conn, wire.CodeBadRequest, fmt.Sprintf("unexpected %s", f.Type))
		return zero, false
	}
	return mm, true
}

func (c *Core) refuse(conn *wire.Conn, code wire.ErrCode, msg string) {
	_ = conn.SendMsg(&wire.Error{Code: code, Msg: msg})
}

// grant checks and records a claim, creates the partition's cgroup and
// answers ClaimOK, then hands back uffds core held for this vcore.
func (c *Core) grant(conn *wire.Conn, pid int, cl *wire.Claim) (*session, error) {
	node := hw.Node(cl.Node)
	part, ok := c.plan.Partition(node)
	if !ok {
		return nil, fmt.Errorf("node %d is not in core's partition plan (nodes %s)", cl.Node, c.m.NodeIDs())
	}
	cpus := cl.CPUs
	if cpus.IsEmpty() {
		cpus = part.CPUs
	}
	if !cpus.IsSubsetOf(part.CPUs) {
		return nil, fmt.Errorf("cpus %s are not all in node %d's partition %s (core keeps %s)", cpus, node, part.CPUs, c.cfg.ReservedCPUs)
	}
	mem := hw.Bytes(cl.Memory)
	if mem == 0 {
		mem = part.Memory
	}
	if mem > part.Memory {
		return nil, fmt.Errorf("memory %s exceeds node %d's partition memory %s", mem, node, part.Memory)
	}
	if cl.VCoreID == "" {
		return nil, errors.New("claim without vcore_id")
	}
	c.mu.Lock()
	if old, live := c.sessions[cl.VCoreID]; live {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %s is already connected (pid %d)", ErrConflict, cl.VCoreID, old.pid)
	}
	c.mu.Unlock()
	cg := c.partitionCgroup(node, cpus, cpus.Equal(part.CPUs))
	le, reclaimed, err := c.ledger.Grant(Claim{Node: node, CPUs: cpus, Memory: mem, Holder: cl.VCoreID, Pid: pid, Socket: cl.Socket, Cgroup: cg})
	if err != nil {
		return nil, err
	}
	if err := CgroupUnder(c.cfg.CgroupParent, le.Cgroup); err != nil {
		if !reclaimed {
			_, _ = c.ledger.Release(cl.VCoreID)
		}
		return nil, err
	}
	// The partition's cgroup: created on a new grant, re-opened on a re-claim.
	if _, err := c.cg.Create(le.Cgroup, cgroups.Resources{CPUs: le.CPUs, Mems: le.Mems}); err != nil {
		if !reclaimed {
			_, _ = c.ledger.Release(cl.VCoreID)
		}
		return nil, fmt.Errorf("create partition cgroup %s: %w", le.Cgroup, err)
	}
	s := &session{conn: conn, id: cl.VCoreID, pid: pid, node: node, lease: le, since: time.Now(), replicaPages: cl.ReplicaPages,
		log: c.log.With("vcore", cl.VCoreID, "node", node, "vcore_pid", pid)}
	ok2 := &wire.ClaimOK{
		Node: int(node), CPUs: le.CPUs, Mems: le.Mems, Memory: uint64(le.Memory), Cgroup: le.Cgroup,
		Pager: c.mode, FaultAround: max(c.cfg.FaultAround, 1),
	}
	ok2.MovedOut, ok2.MovedIn = c.ledger.movesFor(cl.VCoreID)
	for _, d := range c.cfg.Dataspaces {
		info := wire.DataspaceInfo{Name: d.Name, Size: uint64(d.Size), Content: c.dataspaces[d.Name].kind(), Writable: d.Writable}
		if info.Content == wire.ContentPattern {
			info.Seed = d.Seed
		}
		ok2.Dataspaces = append(ok2.Dataspaces, info)
	}
	if err := conn.SendMsg(ok2); err != nil {
		c.ledger.Orphan(cl.VCoreID)
		return nil, fmt.Errorf("send ClaimOK: %w", err)
	}
	c.mu.Lock()
	c.sessions[cl.VCoreID] = s
	c.counters.claims++
	wasFailover := c.failover[cl.VCoreID]
	delete(c.failover, cl.VCoreID)
	c.mu.Unlock()
	if reclaimed {
		s.log.Info("vcore re-claimed its partition", "subsystems", len(cl.Subsystems), "was_failover", wasFailover)
		c.takeBack(s)
	}
	return s, nil
}

// takeBackBatch is how many regions ride in one TakeBack frame (a region
// is at most ~400 bytes of JSON with a 255-byte name).
const takeBackBatch = 128

// takeBack hands every uffd core holds for s's vcore to the new vcore, and
// stops serving them here (in local mode; in central mode core serves on).
func (c *Core) takeBack(s *session) {
	c.mu.Lock()
	ids := c.held[s.id]
	c.mu.Unlock()
	infos := map[uint64]pager.UffdInfo{}
	for _, in := range c.pg.Uffds() {
		infos[in.ID] = in
	}
	for id := range ids {
		in, ok := infos[id]
		if !ok {
			continue
		}
		u, err := c.pg.Uffd(id)
		if err != nil {
			s.log.Warn("take back: dup uffd", "uffd", id, "err", err)
			continue
		}
		// From here the new vcore serves it (or, central mode, core on):
		// the worker gets ReconnectGrace to re-send what core lacks.
		if err := c.pg.HoldUnknown(id, time.Now().Add(pager.ReconnectGrace)); err != nil {
			s.log.Warn("take back: hold unknown faults", "uffd", id, "err", err)
		}
		regions := c.currentRegions(id, in.Regions)
		// A frame holds at most wire.MaxPayload bytes: the first regions
		// ride with the TakeBack, the rest follow as RegionAdds.
		first := min(len(regions), takeBackBatch)
		err = s.conn.SendMsg(&wire.TakeBack{UffdID: id, WorkerPid: in.Pid, Regions: regions[:first]}, u.FD())
		u.Close()
		for _, r := range regions[first:] {
			if err != nil {
				break
			}
			err = s.conn.SendMsg(&wire.RegionAdd{UffdID: id, Region: r})
		}
		if err != nil {
			s.log.Warn("take back: send", "uffd", id, "err", err)
			return
		}
		if c.mode == wire.PagerLocal {
			if err := c.pg.Serve(id, false); err != nil {
				s.log.Warn("take back: stop serving", "uffd", id, "err", err)
			}
			c.mu.Lock()
			if c.held[s.id] != nil {
				c.held[s.id][id] = false
			}
			c.mu.Unlock()
		}
	}
}

// endSession runs when a vcore's connection ends. A vcore that released its
// lease is gone for good; otherwise the lease is orphaned and core serves
// the vcore's faults until a vcore re-claims the partition.
func (c *Core) endSession(s *session) {
	c.mu.Lock()
	if c.sessions[s.id] == s {
		delete(c.sessions, s.id)
	}
	ids := c.held[s.id]
	c.mu.Unlock()
	if s.released.Load() {
		return
	}
	_, ok, err := c.ledger.Orphan(s.id)
	if err != nil {
		s.log.Error("vcore gone but the ledger cannot be written: the lease stays live until the orphaning is written (retried)", "err", err)
	}
	if !ok {
		return
	}
	c.mu.Lock()
	c.failover[s.id] = true
	c.mu.Unlock()
	s.log.Warn("partition orphaned: core serves its faults until a vcore re-claims it", "uffds", len(ids), "grace", c.cfg.OrphanGrace)
	for id := range ids {
		if err := c.pg.Serve(id, true); err != nil && !errors.Is(err, pager.ErrUnknownUffd) {
			s.log.Warn("failover: serve uffd", "uffd", id, "err", err)
		}
		// A fault outside every region core knows (a RegionAdd that died
		// with the vcore) waits for the next vcore and the worker's
		// re-sent mappings — until the orphan grace ends at the latest —
		// instead of killing a live worker after the usual 2 s.
		if err := c.pg.HoldUnknown(id, time.Now().Add(c.cfg.OrphanGrace)); err != nil && !errors.Is(err, pager.ErrUnknownUffd) {
			s.log.Warn("failover: hold unknown faults", "uffd", id, "err", err)
		}
		c.mu.Lock()
		if c.held[s.id] != nil {
			c.held[s.id][id] = true
		}
		c.mu.Unlock()
	}
}

// handle processes one message of a live session; done ends the session.
func (c *Core) handle(s *session, f wire.Frame) (done bool) {
	m, err := wire.Decode(f)
	if err != nil {
		f.CloseFDs()
		s.log.Warn("bad message from vcore", "err", err)
		c.refuse(s.conn, wire.CodeBadRequest, err.Error())
		return false
	}
	switch m := m.(type) {
	case *wire.UffdAdd:
		c.addUffd(s, m, f.FDs[0])
	case *wire.DataspaceAdd:
		if err := c.declare(s, m, f.FDs); err != nil {
			s.log.Warn("dataspace add", "subsystem", m.Subsystem, "dataspace", m.Name, "err", err)
			c.refuse(s.conn, wire.CodeBadRequest, err.Error())
		}
	case *wire.RegionAdd:
		if !c.owns(s, m.UffdID) {
			c.refuseForeign(s, f.Type, m.UffdID)
			return false
		}
		if err := c.addRegion(s, m.UffdID, m.Region); err != nil {
			s.log.Warn("region add", "uffd", m.UffdID, "err", err)
			c.refuse(s.conn, wire.CodeNotFound, err.Error())
		}
	case *wire.RegionRemove:
		if !c.owns(s, m.UffdID) {
			c.refuseForeign(s, f.Type, m.UffdID)
			return false
		}
		c.removeRegions(s, m.UffdID, m.Start, m.Length)
	case *wire.UffdRemove:
		if !c.owns(s, m.UffdID) {
			c.refuseForeign(s, f.Type, m.UffdID)
			return false
		}
		c.removeUffd(s, m.UffdID)
	case *wire.Forward:
		if !c.owns(s, m.UffdID) {
			s.log.Warn("refused a Forward for a uffd this vcore does not own", "uffd", m.UffdID)
			_ = s.conn.SendMsg(&wire.ForwardDone{SeqNo: m.SeqNo, Errno: int32(syscall.EPERM)})
			return false
		}
		c.forward(s, m)
	case *wire.Release:
		// A partition is never released while its processes run: the vcore
		// stops its subsystems first (or core does, reclaiming an orphan).
		if pids := c.partitionProcs(s.lease.Cgroup); len(pids) > 0 {
			s.log.Warn("refused Release: the partition still runs processes", "cgroup", s.lease.Cgroup, "pids", pids)
			c.refuse(s.conn, wire.CodeConflict, fmt.Sprintf("partition %s still runs processes %v: stop its subsystems first", s.lease.Cgroup, pids))
			return false
		}
		s.released.Store(true)
		le, err := c.ledger.Release(s.id)
		if errors.Is(err, ErrLedgerWrite) {
			// Recorded: the lease is freed on disk as soon as the ledger can be written.
			s.log.Error("release: the ledger cannot be written; freeing the lease is pending (retried)", "err", err)
		} else if err != nil {
			c.refuse(s.conn, wire.CodeNotFound, err.Error())
			return true
		}
		c.dropUffds(s.id)
		if err := CgroupUnder(c.cfg.CgroupParent, le.Cgroup); err != nil {
			s.log.Error("release: partition cgroup outside cgroup_parent left alone", "err", err)
		} else if g, err := c.cg.Load(le.Cgroup); err == nil {
			if err := g.Delete(); err != nil {
				s.log.Warn("release: partition cgroup not removed", "cgroup", le.Cgroup, "err", err)
			}
		}
		s.log.Info("lease released", "reason", m.Reason)
		_ = s.conn.SendMsg(&wire.Ack{Of: wire.TypeRelease})
		return true
	default:
		f.CloseFDs()
		c.refuse(s.conn, wire.CodeBadRequest, fmt.Sprintf("unexpected %s from a vcore", f.Type))
	}
	return false
}

// partitionProcs lists the processes left in a partition's cgroup tree
// (nil when it is gone or cannot be read).
func (c *Core) partitionProcs(cgroup string) []int {
	if cgroup == "" || !c.cg.Exists(cgroup) {
		return nil
	}
	g, err := c.cg.Load(cgroup)
	if err != nil {
		return nil
	}
	pids, _ := g.Procs()
	return pids
}

// owns reports whether uffd id was added by s's vcore (this session or an
// earlier one of the same holder).
func (c *Core) owns(s *session, id uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.owner[id] == s.id
}

func (c *Core) refuseForeign(s *session, t wire.Type, id uint64) {
	s.log.Warn("refused a message about a uffd this vcore does not own", "type", t, "uffd", id)
	c.refuse(s.conn, wire.CodeDenied, fmt.Sprintf("%s: uffd %d is not one of this vcore's", t, id))
}

func (c *Core) addUffd(s *session, m *wire.UffdAdd, fd int) {
	u := linux.NewUffd(fd)
	c.mu.Lock()
	holder, known := c.owner[m.UffdID]
	failover := c.failover[s.id]
	c.mu.Unlock()
	switch {
	case known && holder != s.id:
		u.Close()
		s.log.Warn("refused UffdAdd: the id belongs to another vcore", "uffd", m.UffdID, "holder", holder)
		c.refuse(s.conn, wire.CodeConflict, fmt.Sprintf("uffd id %d is held for another vcore", m.UffdID))
		return
	case known:
		// Re-sent after a reconnect: core still holds it; the regions the
		// vcore lists now are the truth.
		u.Close()
	default:
		serve := m.Serve || failover
		if err := c.pg.AddUffd(m.UffdID, u, m.WorkerPid, serve); err != nil {
			s.log.Warn("uffd add", "uffd", m.UffdID, "worker", m.WorkerPid, "err", err)
			code := wire.CodeInternal
			if errors.Is(err, pager.ErrDuplicateUffd) {
				code = wire.CodeConflict
			}
			c.refuse(s.conn, code, err.Error())
			return
		}
		c.mu.Lock()
		if c.held[s.id] == nil {
			c.held[s.id] = map[uint64]bool{}
		}
		c.held[s.id][m.UffdID] = serve
		c.owner[m.UffdID] = s.id
		c.mu.Unlock()
	}
	for _, r := range m.Regions {
		if err := c.addRegion(s, m.UffdID, r); err != nil {
			s.log.Warn("uffd add: region", "uffd", m.UffdID, "err", err)
		}
	}
}

// localKey names a vcore's local dataspace: subsystem and dataspace name.
type localKey struct{ sub, name string }

// localDS is a local dataspace a vcore declared, and its content.
type localDS struct {
	spec   wire.DataspaceAdd
	src    content.Source
	closer io.Closer // the file of file content, else nil
}

// holderContent is what one vcore (by VCoreID) declared. Replaced file
// sources are closed with the holder's lease (a region may still use them).
type holderContent struct {
	ds      map[localKey]*localDS
	retired []io.Closer
}

// declare records a local dataspace of s's vcore. File content arrives as
// the frame's descriptor: core never opens a path a peer names. A repeated
// identical declaration (a reconnect) keeps the source already held.
func (c *Core) declare(s *session, m *wire.DataspaceAdd, fds []int) error {
	var f *os.File
	switch {
	case m.Content == wire.ContentFile && len(fds) == 1:
		f = os.NewFile(uintptr(fds[0]), fmt.Sprintf("dataspace %s/%s of %s", m.Subsystem, m.Name, s.id))
	case m.Content == wire.ContentFile:
		return fmt.Errorf("dataspace %q: file content must carry its open file", m.Name)
	case len(fds) > 0:
		linux.CloseFDs(fds)
		return fmt.Errorf("dataspace %q: %s content carries no descriptor", m.Name, m.Content)
	}
	src, closer, err := content.Open(m.Content, m.Seed, f)
	if err != nil {
		return fmt.Errorf("dataspace %q: %w", m.Name, err)
	}
	key := localKey{m.Subsystem, m.Name}
	c.mu.Lock()
	defer c.mu.Unlock()
	hc := c.locals[s.id]
	if hc == nil {
		hc = &holderContent{ds: map[localKey]*localDS{}}
		c.locals[s.id] = hc
	}
	if old := hc.ds[key]; old != nil {
		if old.spec == *m && sameContent(old.src, src) {
			if closer != nil {
				closer.Close()
			}
			return nil
		}
		s.log.Info("local dataspace re-declared with other content", "subsystem", m.Subsystem, "dataspace", m.Name,
			"was", old.spec.Content, "now", m.Content)
		if old.closer != nil {
			hc.retired = append(hc.retired, old.closer)
		}
	}
	hc.ds[key] = &localDS{spec: *m, src: src, closer: closer}
	return nil
}

// sameContent: equal sources, or two descriptors of the same file.
func sameContent(a, b content.Source) bool {
	fa, oka := content.FileOf(a)
	fb, okb := content.FileOf(b)
	if !oka || !okb {
		return a == b
	}
	sa, err1 := fa.Stat()
	sb, err2 := fb.Stat()
	return err1 == nil && err2 == nil && os.SameFile(sa, sb) && sa.Size() == sb.Size()
}

// dropLocalsLocked closes what a holder declared. Called with mu held,
// after its uffds are gone.
func (c *Core) dropLocalsLocked(holder string) {
	hc := c.locals[holder]
	if hc == nil {
		return
	}
	for _, d := range hc.ds {
		if d.closer != nil {
			d.closer.Close()
		}
	}
	for _, cl := range hc.retired {
		cl.Close()
	}
	delete(c.locals, holder)
}

// addRegion records a region of a held uffd with the content core serves it
// from: the core-owned dataspace's (core's configuration) for forwarded
// regions, the vcore's declared local dataspace otherwise. A region naming
// neither is refused. The vcore is the authority: a region identical to one
// core has is a re-send (nothing changes); a different one overlapping
// regions core has replaces them.
func (c *Core) addRegion(s *session, id uint64, wr wire.Region) error {
	r := pager.Region{Start: uintptr(wr.Start), Length: uintptr(wr.Length), Dataspace: wr.Dataspace, Offset: wr.Offset}
	if wr.Forward {
		ds, ok := c.dataspaces[wr.Dataspace]
		if !ok {
			return fmt.Errorf("core owns no dataspace %q", wr.Dataspace)
		}
		r.Content = ds.src
	} else {
		c.mu.Lock()
		var d *localDS
		if hc := c.locals[s.id]; hc != nil {
			d = hc.ds[localKey{wr.Subsystem, wr.Dataspace}]
		}
		c.mu.Unlock()
		if d == nil {
			return fmt.Errorf("region %#x+%#x: dataspace %q of subsystem %q was not declared by this vcore", wr.Start, wr.Length, wr.Dataspace, wr.Subsystem)
		}
		r.Content = d.src
	}
	cur, err := c.pg.Regions(id)
	if err != nil {
		return err
	}
	for _, o := range cur {
		if o == r {
			c.recordRegion(id, wr)
			return nil // re-sent after a reconnect
		}
	}
	gone, err := c.pg.ForgetRange(id, r.Start, r.Length)
	if err != nil {
		return err
	}
	for _, g := range gone {
		s.log.Info("region replaced: the vcore's view wins", "uffd", id, "old_start", fmt.Sprintf("%#x", g.Start),
			"old_length", g.Length, "old_dataspace", g.Dataspace, "new_start", fmt.Sprintf("%#x", wr.Start), "new_dataspace", wr.Dataspace)
	}
	if err := c.pg.AddRegion(id, r); err != nil {
		c.forgetRegions(id, wr.Start, wr.Length)
		return err
	}
	c.recordRegion(id, wr)
	return nil
}

// recordRegion sets wr in the description of uffd id, replacing what it
// overlaps.
func (c *Core) recordRegion(id uint64, wr wire.Region) {
	c.mu.Lock()
	defer c.mu.Unlock()
	rs := c.regions[id][:0:0]
	for _, o := range c.regions[id] {
		if !o.Overlaps(wr) {
			rs = append(rs, o)
		}
	}
	c.regions[id] = append(rs, wr)
}

// forgetRegions drops the described regions of uffd id overlapping
// [start, start+length).
func (c *Core) forgetRegions(id, start, length uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	probe := wire.Region{Start: start, Length: length}
	rs := c.regions[id][:0:0]
	for _, o := range c.regions[id] {
		if !o.Overlaps(probe) {
			rs = append(rs, o)
		}
	}
	c.regions[id] = rs
}

// removeRegions forgets the regions the vcore detached (RegionRemove). The
// vcore unregistered them; core only drops them from its table, so a region
// the vcore registered there meanwhile stays registered.
func (c *Core) removeRegions(s *session, id, start, length uint64) {
	if _, err := c.pg.ForgetRange(id, uintptr(start), uintptr(length)); err != nil && !errors.Is(err, pager.ErrUnknownUffd) {
		s.log.Warn("region remove", "uffd", id, "err", err)
	}
	c.forgetRegions(id, start, length)
}

// currentRegions describes uffd id's regions as core's pager has them now
// (the worker may have unmapped some while core served it), with the
// subsystem the vcore named for each dataspace.
func (c *Core) currentRegions(id uint64, table []pager.Region) []wire.Region {
	c.mu.Lock()
	desc := append([]wire.Region(nil), c.regions[id]...)
	c.mu.Unlock()
	var out []wire.Region
	for _, pr := range table {
		var parent *wire.Region
		for i := range desc {
			d := &desc[i]
			if d.Dataspace != pr.Dataspace {
				continue
			}
			if parent == nil || (pr.Offset >= d.Offset && pr.Offset < d.Offset+d.Length) {
				parent = d
			}
		}
		if parent == nil {
			continue
		}
		out = append(out, wire.Region{Start: uint64(pr.Start), Length: uint64(pr.Length), Dataspace: pr.Dataspace,
			Offset: pr.Offset, Subsystem: parent.Subsystem, Forward: parent.Forward})
	}
	return out
}

func (c *Core) removeUffd(s *session, id uint64) {
	c.mu.Lock()
	delete(c.held[s.id], id)
	delete(c.owner, id)
	delete(c.regions, id)
	c.mu.Unlock()
	if err := c.pg.RemoveUffd(id); err != nil && !errors.Is(err, pager.ErrUnknownUffd) {
		s.log.Warn("uffd remove", "uffd", id, "err", err)
	}
}

func (c *Core) dropUffds(holder string) {
	c.mu.Lock()
	ids := c.held[holder]
	delete(c.held, holder)
	delete(c.failover, holder)
	for id := range ids {
		delete(c.owner, id)
	}
	c.mu.Unlock()
	for id := range ids {
		_ = c.pg.RemoveUffd(id)
		c.mu.Lock()
		delete(c.regions, id)
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.dropLocalsLocked(holder)
	c.mu.Unlock()
}

// forward resolves a fault a vcore could not: core's dup of the worker's
// uffd maps the page from the core-owned dataspace and wakes the worker.
func (c *Core) forward(s *session, m *wire.Forward) {
	start := time.Now()
	err := c.pg.Resolve(m.UffdID, uintptr(m.Addr))
	done := &wire.ForwardDone{SeqNo: m.SeqNo, ServeNanos: time.Since(start).Nanoseconds()}
	c.mu.Lock()
	s.forwarded++
	c.counters.forwarded++
	if err != nil {
		s.forwardErrors++
		c.counters.forwardErrors++
	}
	c.mu.Unlock()
	if err != nil {
		done.Errno = errnoOf(err)
		s.log.Warn("forwarded fault failed", "uffd", m.UffdID, "addr", fmt.Sprintf("%#x", m.Addr), "dataspace", m.Dataspace, "err", err)
	} else {
		c.sendReplicaPage(s, m)
	}
	if err := s.conn.SendMsg(done); err != nil {
		s.log.Warn("send ForwardDone", "err", err)
	}
}

func errnoOf(err error) int32 {
	var en syscall.Errno
	if errors.As(err, &en) {
		return int32(en)
	}
	return int32(syscall.EIO)
}
