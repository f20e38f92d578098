// Package policytest builds literal machine shapes for tests of code that
// takes a *topology.Machine (policy, config), the way kubelet's cpumanager
// tests build topoDualSocketHT: policy does no I/O, so its tests need no
// sysfs. The shapes mirror the fixture trees under topology/testdata.
package policytest

import (
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// Shape describes a regular machine: sockets × nodesPerSocket NUMA nodes,
// each with llcsPerNode last-level-cache groups of coresPerLLC cores with
// `threads` SMT threads each. CPUs are numbered as Linux does on x86: the
// first thread of every core first, then the second threads (so on a
// 16-core SMT2 machine CPU 3's sibling is CPU 19).
type Shape struct {
	Sockets, NodesPerSocket, LLCsPerNode, CoresPerLLC, Threads int
	MemPerNode                                                 hw.Bytes
	FarDistance                                                int // between sockets (same socket: 12; local: 10)
}

// Build returns the machine, every CPU and node online and allowed.
func (s Shape) Build() *topology.Machine {
	nodes := s.Sockets * s.NodesPerSocket
	coresPerNode := s.LLCsPerNode * s.CoresPerLLC
	totalCores := nodes * coresPerNode
	m := &topology.Machine{}
	nodeCPUs := make([][]hw.CPU, nodes)
	llcs := map[int][]hw.CPU{}
	for t := 0; t < s.Threads; t++ {
		for k := 0; k < totalCores; k++ {
			id := hw.CPU(t*totalCores + k)
			node := k / coresPerNode
			nodeCPUs[node] = append(nodeCPUs[node], id)
			llcs[k/s.CoresPerLLC] = append(llcs[k/s.CoresPerLLC], id)
		}
	}
	for t := 0; t < s.Threads; t++ {
		for k := 0; k < totalCores; k++ {
			var sib []hw.CPU
			for u := 0; u < s.Threads; u++ {
				sib = append(sib, hw.CPU(u*totalCores+k))
			}
			node := k / coresPerNode
			m.CPUs = append(m.CPUs, topology.CPU{
				ID: hw.CPU(t*totalCores + k), Online: true, Node: hw.Node(node),
				Package: node / s.NodesPerSocket, Core: k % (coresPerNode * s.NodesPerSocket),
				Siblings: hw.NewSet(sib...), LLC: hw.NewSet(llcs[k/s.CoresPerLLC]...),
			})
		}
	}
	sortCPUs(m.CPUs)
	for n := 0; n < nodes; n++ {
		dist := make([]int, nodes)
		for o := range dist {
			switch {
			case o == n:
				dist[o] = 10
			case o/s.NodesPerSocket == n/s.NodesPerSocket:
				dist[o] = 12
			default:
				dist[o] = s.FarDistance
			}
		}
		m.Nodes = append(m.Nodes, topology.Node{ID: hw.Node(n), CPUs: hw.NewSet(nodeCPUs[n]...),
			MemTotal: s.MemPerNode, MemFree: s.MemPerNode / 2, Distances: dist})
	}
	for g := 0; g < len(llcs); g++ {
		m.LLCGroups = append(m.LLCGroups, hw.NewSet(llcs[g]...))
	}
	m.AllowedCPUs = m.OnlineCPUs()
	m.AllowedNodes = m.NodeIDs()
	return m
}

func sortCPUs(cpus []topology.CPU) {
	for i := 1; i < len(cpus); i++ {
		for j := i; j > 0 && cpus[j].ID < cpus[j-1].ID; j-- {
			cpus[j], cpus[j-1] = cpus[j-1], cpus[j]
		}
	}
}

// SingleNode2CPU is the dev machine: one node, CPUs 0-1, no SMT, one LLC.
func SingleNode2CPU() *topology.Machine {
	return Shape{Sockets: 1, NodesPerSocket: 1, LLCsPerNode: 1, CoresPerLLC: 2, Threads: 1, MemPerNode: 6 * hw.GiB, FarDistance: 21}.Build()
}

// TwoSocketSMT2: 2 sockets = 2 nodes, 2 LLC groups per socket of 2 cores,
// SMT2; 16 CPUs. Node 0: 0-3,8-11; node 1: 4-7,12-15. LLCs: {0,1,8,9},
// {2,3,10,11}, {4,5,12,13}, {6,7,14,15}. Siblings: n and n+8.
func TwoSocketSMT2() *topology.Machine {
	return Shape{Sockets: 2, NodesPerSocket: 1, LLCsPerNode: 2, CoresPerLLC: 2, Threads: 2, MemPerNode: 16 * hw.GiB, FarDistance: 21}.Build()
}

// EPYC8Node: 2 sockets × 4 nodes (NPS4), 2 CCX (LLC) per node of 2 cores,
// SMT2; 64 CPUs. Node n: cores 4n..4n+3, i.e. CPUs 4n-4n+3 and 32+4n-32+4n+3.
func EPYC8Node() *topology.Machine {
	return Shape{Sockets: 2, NodesPerSocket: 4, LLCsPerNode: 2, CoresPerLLC: 2, Threads: 2, MemPerNode: 8 * hw.GiB, FarDistance: 32}.Build()
}

// WithCPULessNode adds a memory-only node (id after the last) at distance 20+.
func WithCPULessNode(m *topology.Machine, mem hw.Bytes) *topology.Machine {
	id := hw.Node(len(m.Nodes))
	for i := range m.Nodes {
		m.Nodes[i].Distances = append(m.Nodes[i].Distances, 24)
	}
	dist := make([]int, len(m.Nodes)+1)
	for i := range dist {
		dist[i] = 24
	}
	dist[len(dist)-1] = 10
	m.Nodes = append(m.Nodes, topology.Node{ID: id, MemTotal: mem, MemFree: mem, Distances: dist, CPULess: true})
	m.AllowedNodes = m.NodeIDs()
	return m
}
