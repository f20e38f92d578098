// Package topology discovers the machine: NUMA nodes, their CPUs, memory and
// distances, CPU packages, cores, SMT siblings and last-level-cache groups,
// and the CPUs and nodes this process may use.
//
// Every reader takes its root as an fs.FS (the real one is os.DirFS("/sys")),
// so tests run on fixture trees under testdata/ and no read can slip past
// them. Parsing sysfs is this package's own; nothing here writes anything.
package topology

import "github.com/vcored/vcored/internal/hw"

// Machine is a snapshot of the host's topology. It is a plain value: policy
// code takes it as input and never does I/O.
type Machine struct {
	// Nodes are the online NUMA nodes in ascending id order. Ids may have holes.
	Nodes []Node
	// CPUs are all possible CPUs in ascending id order, online or not.
	CPUs []CPU
	// LLCGroups are the distinct last-level-cache groups of online CPUs,
	// ordered by their lowest CPU. Where sysfs describes no last-level
	// cache, a group is a package within a node, or a node (see Notes).
	LLCGroups []hw.CPUSet
	// AllowedCPUs and AllowedNodes are what this process may use (its
	// affinity / cpuset). Nothing outside them is ever handed out.
	AllowedCPUs  hw.CPUSet
	AllowedNodes hw.NodeSet
	// Model is the CPU model name, when known ("" otherwise).
	Model string
	// MHz is the CPU's nominal frequency in MHz, when known (0 otherwise).
	MHz float64
	// Notes say what Discover inferred because sysfs did not say it (a
	// missing file, an LLC group taken from the package, CPUs in no node),
	// one sentence each; empty when sysfs said everything.
	Notes []string

	// memUnknown is set when the one node stands for a machine without
	// NUMA sysfs and its memory could not be read from sysfs.
	memUnknown bool
}

// Node is one NUMA node.
type Node struct {
	ID hw.Node
	// CPUs are the node's online CPUs.
	CPUs hw.CPUSet
	// MemTotal and MemFree come from the node's meminfo.
	MemTotal, MemFree hw.Bytes
	// Distances holds the SLIT distance to every node of Machine.Nodes, in
	// the same order (Distances[i] is the distance to Machine.Nodes[i]).
	Distances []int
	// HugePages maps a huge page size to its counts on this node.
	HugePages map[hw.Bytes]HugePages
	// CPULess is true for a node with memory but no CPUs (CXL, memory-only).
	CPULess bool
}

// HugePages are the counts for one huge page size on one node.
type HugePages struct {
	Total, Free int
}

// CPU is one logical CPU.
type CPU struct {
	ID     hw.CPU
	Online bool
	// The fields below are meaningful only for online CPUs; Discover sets
	// Node, Package and Core to -1 for offline ones, and Package and Core
	// to -1 where sysfs does not tell them (see Machine.Notes), Node to -1
	// for an online CPU no node lists (it is not in AllowedCPUs).
	Node     hw.Node
	Package  int       // physical_package_id
	Core     int       // core_id (unique only within a package)
	Siblings hw.CPUSet // SMT siblings, including the CPU itself
	LLC      hw.CPUSet // CPUs sharing this CPU's last-level cache, including itself
}

// NodeByID returns the node with the given id.
func (m *Machine) NodeByID(id hw.Node) (*Node, bool) {
	for i := range m.Nodes {
		if m.Nodes[i].ID == id {
			return &m.Nodes[i], true
		}
	}
	return nil, false
}

// CPUByID returns the CPU with the given id.
func (m *Machine) CPUByID(id hw.CPU) (*CPU, bool) {
	for i := range m.CPUs {
		if m.CPUs[i].ID == id {
			return &m.CPUs[i], true
		}
	}
	return nil, false
}

// NodeIDs returns the set of online node ids.
func (m *Machine) NodeIDs() hw.NodeSet {
	ids := make([]hw.Node, len(m.Nodes))
	for i, n := range m.Nodes {
		ids[i] = n.ID
	}
	return hw.NewSet(ids...)
}

// OnlineCPUs returns the set of online CPUs.
func (m *Machine) OnlineCPUs() hw.CPUSet {
	var ids []hw.CPU
	for _, c := range m.CPUs {
		if c.Online {
			ids = append(ids, c.ID)
		}
	}
	return hw.NewSet(ids...)
}

// Distance returns the SLIT distance from node a to node b, or -1 when
// either node is unknown.
func (m *Machine) Distance(a, b hw.Node) int {
	na, ok := m.NodeByID(a)
	if !ok {
		return -1
	}
	for i, n := range m.Nodes {
		if n.ID == b && i < len(na.Distances) {
			return na.Distances[i]
		}
	}
	return -1
}
