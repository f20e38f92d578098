package core

import (
	"context"
	"errors"
	"fmt"
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
}

// serveWire handles one framed-protocol connection: a vcore's session.
// Workers never talk to core directly.
func (c *Core) serveWire(ctx context.Context, conn *wire.Conn) {
	peer := conn.Peer()
	log := c.log.With("peer_pid", peer.Pid)
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
	for {
		f, err := conn.Recv()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("vcore connection lost", "err", err)
			}
			return
		}
		if done := c.handle(s, f); done {
			return
		}
	}
}

var osPid = os.Getpid()

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
	s := &session{conn: conn, id: cl.VCoreID, pid: pid, node: node, lease: le, since: time.Now(),
		log: c.log.With("vcore", cl.VCoreID, "node", node, "vcore_pid", pid)}
	ok2 := &wire.ClaimOK{
		Node: int(node), CPUs: le.CPUs, Mems: le.Mems, Memory: uint64(le.Memory), Cgroup: le.Cgroup,
		Pager: c.mode, FaultAround: max(c.cfg.FaultAround, 1),
	}
	for _, d := range c.cfg.Dataspaces {
		ok2.Dataspaces = append(ok2.Dataspaces, wire.DataspaceInfo{Name: d.Name, Size: uint64(d.Size), Source: d.Source,
			Content: wire.ContentKind(c.dataspaces[d.Name].kind()), Seed: d.Seed})
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
		c.mu.Lock()
		regions := append([]wire.Region(nil), c.regions[id]...)
		c.mu.Unlock()
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
	case *wire.RegionAdd:
		if err := c.addRegion(s, m.UffdID, m.Region); err != nil {
			s.log.Warn("region add", "uffd", m.UffdID, "err", err)
			c.refuse(s.conn, wire.CodeNotFound, err.Error())
		}
	case *wire.UffdRemove:
		c.removeUffd(s, m.UffdID)
	case *wire.Forward:
		c.forward(s, m)
	case *wire.Release:
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

func (c *Core) addUffd(s *session, m *wire.UffdAdd, fd int) {
	u := linux.NewUffd(fd)
	c.mu.Lock()
	failover := c.failover[s.id]
	c.mu.Unlock()
	serve := m.Serve || failover
	if err := c.pg.AddUffd(m.UffdID, u, m.WorkerPid, serve); err != nil {
		if errors.Is(err, pager.ErrDuplicateUffd) {
			return // re-sent after a reconnect: core still holds it
		}
		s.log.Warn("uffd add", "uffd", m.UffdID, "worker", m.WorkerPid, "err", err)
		c.refuse(s.conn, wire.CodeInternal, err.Error())
		return
	}
	c.mu.Lock()
	if c.held[s.id] == nil {
		c.held[s.id] = map[uint64]bool{}
	}
	c.held[s.id][m.UffdID] = serve
	c.mu.Unlock()
	for _, r := range m.Regions {
		if err := c.addRegion(s, m.UffdID, r); err != nil {
			s.log.Warn("uffd add: region", "uffd", m.UffdID, "err", err)
		}
	}
}

// addRegion records a region of a held uffd with the content core serves it
// from: the core-owned dataspace's content for forwarded regions, or the
// region's own (zero, pattern, file) for a vcore's local dataspaces.
func (c *Core) addRegion(s *session, id uint64, wr wire.Region) error {
	r := pager.Region{Start: uintptr(wr.Start), Length: uintptr(wr.Length), Dataspace: wr.Dataspace, Offset: wr.Offset}
	if wr.Forward {
		ds, ok := c.dataspaces[wr.Dataspace]
		if !ok {
			return fmt.Errorf("core owns no dataspace %q", wr.Dataspace)
		}
		r.Content = ds.src
	} else {
		src, err := regionContent(wr)
		if err != nil {
			return err
		}
		r.Content = src
	}
	err := c.pg.AddRegion(id, r)
	if errors.Is(err, pager.ErrOverlap) {
		return nil // re-sent after a reconnect
	}
	if err == nil {
		c.mu.Lock()
		c.regions[id] = append(c.regions[id], wr)
		c.mu.Unlock()
	}
	return err
}

// regionContent builds the content source a wire region names.
func regionContent(wr wire.Region) (content.Source, error) {
	switch wr.Content {
	case wire.ContentZero, "":
		return content.Zero(), nil
	case wire.ContentPattern:
		return content.Pattern(wr.Seed), nil
	case wire.ContentFile:
		src, _, err := content.File(wr.Path)
		return src, err
	}
	return nil, fmt.Errorf("region %q: unknown content %q", wr.Dataspace, wr.Content)
}

func (c *Core) removeUffd(s *session, id uint64) {
	c.mu.Lock()
	delete(c.held[s.id], id)
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
	c.mu.Unlock()
	for id := range ids {
		_ = c.pg.RemoveUffd(id)
		c.mu.Lock()
		delete(c.regions, id)
		c.mu.Unlock()
	}
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
