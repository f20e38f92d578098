package policy

import (
	"fmt"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// Partition is what one node offers to vcores: its CPUs minus core's
// reserved ones, its memory minus the per-node reserve.
type Partition struct {
	Node hw.Node
	// CPUs are the node's online CPUs that this process may use, minus the
	// reserved CPUs. Empty for a memory-only partition.
	CPUs hw.CPUSet
	// Memory is the node's MemTotal minus the reserve (0 when the reserve
	// is larger).
	Memory hw.Bytes
}

// MemoryOnly reports whether the partition has memory but no CPUs (a
// CPU-less node, or a node whose CPUs are all reserved): no vcore runs there,
// but its memory can back dataspaces.
func (p Partition) MemoryOnly() bool { return p.CPUs.IsEmpty() }

// Plan is the partition of every node this process may use, in node order.
type Plan struct {
	Partitions []Partition
}

// Partition returns the partition of node n.
func (p Plan) Partition(n hw.Node) (Partition, bool) {
	for _, part := range p.Partitions {
		if part.Node == n {
			return part, true
		}
	}
	return Partition{}, false
}

// CPUs returns the union of every partition's CPUs.
func (p Plan) CPUs() hw.CPUSet {
	var all hw.CPUSet
	for _, part := range p.Partitions {
		all = all.Union(part.CPUs)
	}
	return all
}

// MakePlan splits machine m into per-node partitions, keeping the reserved
// CPUs and reservedMem bytes of every node for core. Nodes outside
// m.AllowedNodes are left out, and CPUs outside m.AllowedCPUs are never
// handed out. Every reserved CPU must be online (ErrUnknownCPU), and at least
// one CPU must be left to partition (ErrNothingToPartition).
//
// MakePlan is pure: the same inputs always give the same plan.
func MakePlan(m *topology.Machine, reserved hw.CPUSet, reservedMem hw.Bytes) (Plan, error) {
	if bad := reserved.Difference(m.OnlineCPUs()); !bad.IsEmpty() {
		return Plan{}, fmt.Errorf("%w: reserved CPUs %s (online: %s)", ErrUnknownCPU, bad, m.OnlineCPUs())
	}
	var plan Plan
	for _, n := range m.Nodes {
		if !m.AllowedNodes.Contains(n.ID) {
			continue
		}
		plan.Partitions = append(plan.Partitions, NodePartition(m, n.ID, reserved, reservedMem))
	}
	if plan.CPUs().IsEmpty() {
		return plan, fmt.Errorf("%w: reserved CPUs %s leave none of the usable CPUs %s",
			ErrNothingToPartition, reserved, m.AllowedCPUs.Intersect(m.OnlineCPUs()))
	}
	return plan, nil
}

// NodePartition is one node's share of MakePlan: node's CPUs ∩ allowed −
// reserved, and MemTotal − reservedMem (never below zero). An unknown node
// gives an empty partition.
func NodePartition(m *topology.Machine, node hw.Node, reserved hw.CPUSet, reservedMem hw.Bytes) Partition {
	p := Partition{Node: node}
	n, ok := m.NodeByID(node)
	if !ok {
		return p
	}
	p.CPUs = n.CPUs.Intersect(m.AllowedCPUs).Difference(reserved)
	if n.MemTotal > reservedMem {
		p.Memory = n.MemTotal - reservedMem
	}
	return p
}
