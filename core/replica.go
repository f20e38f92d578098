package core

import (
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
)

// Node-local replicas of file content. A vcore whose Claim had
// ReplicaPages keeps replicas of core-owned read-only dataspaces; for zero
// and pattern content it builds the pages itself from DataspaceInfo, but a
// file only core opens (no path on the wire). So for a forwarded fault of
// a read-only file dataspace core also sends the page it mapped
// (ReplicaPage, right before the ForwardDone): read from core's own
// source, never from the worker, which may already have written its
// private copy.

// sendReplicaPage sends s the page of m's dataspace at m's offset if the
// session wants replica pages and the dataspace is read-only file content.
// Called after the forward was resolved, before its ForwardDone.
func (c *Core) sendReplicaPage(s *session, m *wire.Forward) {
	if !s.replicaPages {
		return
	}
	d := c.dataspaces[m.Dataspace]
	if d == nil || d.cfg.Writable || d.kind() != content.KindFile {
		return
	}
	ps := uint64(linux.PageSize())
	off := m.Offset &^ (ps - 1)
	page := make([]byte, ps)
	if err := d.src.Fill(page, off); err != nil {
		s.log.Warn("read a page for the vcore's replica", "dataspace", m.Dataspace, "offset", off, "err", err)
		return
	}
	if err := s.conn.SendMsg(&wire.ReplicaPage{SeqNo: m.SeqNo, Offset: off, Dataspace: m.Dataspace, Page: page}); err != nil {
		s.log.Warn("send ReplicaPage", "err", err)
	}
}
