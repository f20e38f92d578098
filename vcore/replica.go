package vcore

import (
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/vcore/replica"
)

// replicaPage keeps the page core sent for a forwarded fault of a
// read-only file dataspace (ReplicaPage, just before that fault's
// ForwardDone) in the node's replica store. The page must answer a forward
// of this vcore still in flight, for the same dataspace and page: anything
// else is dropped with a warning and changes nothing.
func (v *VCore) replicaPage(m *wire.ReplicaPage) {
	if v.replicas == nil {
		return
	}
	ps := uint64(linux.PageSize())
	v.fwdMu.Lock()
	p, ok := v.pending[m.SeqNo]
	v.fwdMu.Unlock()
	if !ok || p.msg.Dataspace != m.Dataspace || p.msg.Offset&^(ps-1) != m.Offset || uint64(len(m.Page)) != ps {
		v.log.Warn("ReplicaPage from core for no forward in flight: dropped", "seqno", m.SeqNo, "dataspace", m.Dataspace,
			"offset", m.Offset, "bytes", len(m.Page))
		return
	}
	v.mu.Lock()
	info, known := v.core[m.Dataspace]
	v.mu.Unlock()
	if !known || !replica.FromCore(info) {
		v.log.Warn("ReplicaPage from core for a dataspace not replicated from core's bytes: dropped", "dataspace", m.Dataspace)
		return
	}
	if err := v.replicas.FillBytes(m.Dataspace, m.Offset, m.Page); err != nil {
		v.log.Warn("keep a replica page", "dataspace", m.Dataspace, "offset", m.Offset, "err", err)
	}
}
