package config

import (
	"errors"
	"fmt"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy"
	"github.com/vcored/vcored/topology"
)

// problems collects Validate's findings for one file.
type problems struct {
	file  string
	lines map[string]int
	errs  Errors
}

func (p *problems) add(key string, cause error, format string, a ...any) {
	err := ErrConflict
	if cause != nil {
		err = fmt.Errorf("%w: %w", ErrConflict, cause)
	}
	p.errs = append(p.errs, &Error{File: p.file, Line: lineOf(p.lines, key), Key: key, Msg: fmt.Sprintf(format, a...), Err: err})
}

// Validate checks the core file against machine m: the reserved CPUs exist,
// are online and usable by this process, and leave at least one CPU to
// partition. The error is an Errors listing every problem.
func (c *Core) Validate(m *topology.Machine) error {
	p := &problems{file: c.File, lines: c.lines}
	online := m.OnlineCPUs()
	for _, id := range c.ReservedCPUs.Slice() {
		switch {
		case !online.Contains(id):
			p.add("reserved_cpus", nil, "CPU %d is not an online CPU of this machine (online: %s)", id, online)
		case !m.AllowedCPUs.Contains(id):
			p.add("reserved_cpus", nil, "CPU %d is outside the CPUs this process may use (%s)", id, m.AllowedCPUs)
		}
	}
	if len(p.errs) == 0 {
		if _, err := policy.MakePlan(m, c.ReservedCPUs, c.ReservedMemory); err != nil {
			p.add("reserved_cpus", err, "%s", trimPolicy(err))
		}
	}
	return p.errs.asError()
}

// Validate checks the vcore file against machine m and, when core is not
// nil, against the core file it registers with (without one, core's
// reservations are unknown: CPUs and memory are checked against the whole
// node, and dataspace references are not checked; core checks the rest when
// it grants the claim). It checks that the node exists, may be used and has CPUs left
// after core's reservation; that cpus lies on the node, in the allowed CPUs
// and outside core's reserved CPUs; that memory fits the node after the
// reserve; that each subsystem's cpus fit the vcore's partition; that
// referenced dataspaces are declared by core; and that the sockets agree.
// The error is an Errors listing every problem.
func (v *VCore) Validate(m *topology.Machine, core *Core) error {
	p := &problems{file: v.File, lines: v.lines}
	knownCore := core != nil
	if core == nil {
		core = unknownCore()
	}
	if knownCore {
		if v.CoreSocket != core.Socket {
			p.add("core_socket", nil, "%q is not the socket of core (%s has socket = %q)", v.CoreSocket, core.File, core.Socket)
		}
		if v.Socket == core.Socket {
			p.add("socket", nil, "%q is core's own socket", v.Socket)
		}
	}
	node, ok := m.NodeByID(v.Node)
	switch {
	case !ok:
		p.add("node", nil, "node %d does not exist (online nodes: %s)", v.Node, m.NodeIDs())
		return p.errs.asError()
	case !m.AllowedNodes.Contains(v.Node):
		p.add("node", nil, "node %d is outside the nodes this process may use (%s)", v.Node, m.AllowedNodes)
		return p.errs.asError()
	case node.CPULess || node.CPUs.IsEmpty():
		p.add("node", nil, "node %d has no CPUs (a memory-only node cannot run a vcore)", v.Node)
		return p.errs.asError()
	}
	part := policy.NodePartition(m, v.Node, core.ReservedCPUs, core.ReservedMemory)
	cpus := part.CPUs
	if !v.CPUs.IsEmpty() {
		for _, id := range v.CPUs.Slice() {
			switch {
			case !node.CPUs.Contains(id):
				p.add("cpus", nil, "CPU %d is not an online CPU of node %d (its CPUs: %s)", id, v.Node, node.CPUs)
			case !m.AllowedCPUs.Contains(id):
				p.add("cpus", nil, "CPU %d is outside the CPUs this process may use (%s)", id, m.AllowedCPUs)
			case core.ReservedCPUs.Contains(id):
				p.add("cpus", nil, "CPU %d is reserved by core (reserved_cpus = %q in %s)", id, core.ReservedCPUs, coreName(core, knownCore))
			}
		}
		cpus = v.CPUs.Intersect(part.CPUs)
	} else if cpus.IsEmpty() {
		p.add("node", nil, "node %d has no CPUs left after core's reserved_cpus %q (%s)", v.Node, core.ReservedCPUs, coreName(core, knownCore))
	}
	if v.Memory > part.Memory {
		p.add("memory", nil, "%s is more than node %d offers: %s (MemTotal %s minus reserved_memory %s)",
			v.Memory, v.Node, part.Memory, node.MemTotal, core.ReservedMemory)
	}
	if cpus.IsEmpty() {
		return p.errs.asError() // subsystem CPUs cannot be judged without a partition
	}
	reqs := make([]policy.Request, len(v.Subsystems))
	for i, s := range v.Subsystems {
		key := indexPath("subsystem", i)
		reqs[i] = policy.Request{Count: s.CPUs.Count, List: s.CPUs.List}
		if err := policy.CheckRequest(cpus, reqs[i]); err != nil {
			p.add(keyPath(key, "cpus"), err, "%s", trimPolicy(err))
		}
		if knownCore {
			for j, name := range s.Dataspaces {
				if _, ok := core.Dataspace(name); !ok {
					p.add(indexPath(keyPath(key, "dataspaces"), j), nil, "dataspace %q is not declared in %s", name, core.File)
				}
			}
		}
	}
	if len(p.errs) == 0 {
		if _, err := policy.AssignSubsystems(m, cpus, reqs); err != nil {
			p.add("subsystem", err, "%s", trimPolicy(err)) // not expected after CheckRequest
		}
	}
	return p.errs.asError()
}

// unknownCore stands for a core whose file was not given: it reserves
// nothing, so a vcore is only held to what the node has. Assuming the
// default reservations instead would refuse a vcore that its real core (with
// a smaller reserve) accepts.
func unknownCore() *Core {
	c := DefaultCore()
	c.ReservedCPUs = hw.CPUSet{}
	c.ReservedMemory = 0
	return c
}

// ValidateVCores checks vcore files that will run together under core (which
// may be nil, as in VCore.Validate): vcores on the same node must lease
// disjoint CPUs and together no more memory than the node offers, and no two
// may share a socket or state directory. Each file's own checks are
// VCore.Validate's.
func ValidateVCores(m *topology.Machine, core *Core, vcores []*VCore) error {
	if core == nil {
		core = unknownCore()
	}
	var errs Errors
	add := func(v *VCore, key, format string, a ...any) {
		errs = append(errs, &Error{File: v.File, Line: lineOf(v.lines, key), Key: key, Msg: fmt.Sprintf(format, a...), Err: ErrConflict})
	}
	memory := map[hw.Node]hw.Bytes{}
	for i, v := range vcores {
		part := policy.NodePartition(m, v.Node, core.ReservedCPUs, core.ReservedMemory)
		memory[v.Node] += v.Memory
		if memory[v.Node] > part.Memory && v.Memory <= part.Memory {
			add(v, "memory", "the vcores of node %d lease %s together, more than the node offers (%s)", v.Node, memory[v.Node], part.Memory)
		}
		for _, o := range vcores[:i] {
			if o.Socket == v.Socket {
				add(v, "socket", "%q is also the socket of %s", v.Socket, o.File)
			}
			if o.StateDir == v.StateDir {
				add(v, "state_dir", "%q is also the state_dir of %s", v.StateDir, o.File)
			}
			if o.Node != v.Node {
				continue
			}
			mine, theirs := leased(v, part), leased(o, part)
			if both := mine.Intersect(theirs); !both.IsEmpty() {
				add(v, "cpus", "CPUs %s of node %d are also leased by %s", both, v.Node, o.File)
			}
		}
	}
	return errs.asError()
}

// leased is the CPU set a vcore asks core for: its list or the whole partition.
func leased(v *VCore, part policy.Partition) hw.CPUSet {
	if v.CPUs.IsEmpty() {
		return part.CPUs
	}
	return v.CPUs
}

func coreName(c *Core, known bool) string {
	if known {
		return c.File
	}
	return "the default core configuration"
}

// trimPolicy gives the message of a policy error without its class prefix.
func trimPolicy(err error) string {
	for _, class := range []error{policy.ErrUnknownCPU, policy.ErrNothingToPartition, policy.ErrNotEnoughCPUs, policy.ErrOutsidePartition, policy.ErrBadRequest} {
		if errors.Is(err, class) {
			msg := err.Error()
			if prefix := class.Error() + ": "; len(msg) > len(prefix) && msg[:len(prefix)] == prefix {
				return msg[len(prefix):]
			}
		}
	}
	return err.Error()
}
