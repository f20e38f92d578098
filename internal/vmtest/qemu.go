package vmtest

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/vcored/vcored/internal/hw"
)

// Distances the guest's SLIT reports: LocalDistance to a node itself,
// RemoteDistance to every other node.
const (
	LocalDistance  = 10
	RemoteDistance = 21
)

// KernelCmdline is what the guest kernel boots with. tsc=reliable keeps the
// guest from marking the TSC unstable under TCG (it would fall back to a
// clock about 2× slower); panic=-1 with qemu's -no-reboot turns a guest panic
// into a qemu exit.
const KernelCmdline = "console=ttyS0 quiet panic=-1 tsc=reliable"

// ErrBadTopology is returned for a guest shape qemu cannot boot.
var ErrBadTopology = errors.New("vmtest: bad guest topology")

// Topology is the guest's shape: Nodes NUMA nodes of CPUsPerNode CPUs and
// MemPerNode RAM each. CPUs are numbered node by node: node i holds CPUs
// i*CPUsPerNode .. (i+1)*CPUsPerNode-1.
type Topology struct {
	Nodes       int
	CPUsPerNode int
	MemPerNode  hw.Bytes
}

// Validate reports a shape that qemu cannot boot or that would not fit a
// small host.
func (t Topology) Validate() error {
	switch {
	case t.Nodes < 1 || t.Nodes > 64:
		return fmt.Errorf("%w: %d nodes (want 1..64)", ErrBadTopology, t.Nodes)
	case t.CPUsPerNode < 1 || t.Nodes*t.CPUsPerNode > 255:
		return fmt.Errorf("%w: %d CPUs per node × %d nodes (want 1..255 CPUs)", ErrBadTopology, t.CPUsPerNode, t.Nodes)
	case t.MemPerNode < 128*hw.MiB || t.MemPerNode%hw.MiB != 0:
		return fmt.Errorf("%w: %s per node (want a whole number of MiB, at least 128MiB)", ErrBadTopology, t.MemPerNode)
	}
	return nil
}

// CPUs returns the CPUs qemu assigns to node n.
func (t Topology) CPUs(n int) hw.CPUSet {
	ids := make([]hw.CPU, t.CPUsPerNode)
	for i := range ids {
		ids[i] = hw.CPU(n*t.CPUsPerNode + i)
	}
	return hw.NewSet(ids...)
}

// String is the shape in one word, e.g. "2x2cpu-512MiB".
func (t Topology) String() string {
	return fmt.Sprintf("%dx%dcpu-%s", t.Nodes, t.CPUsPerNode, t.MemPerNode)
}

// QemuArgs returns the qemu-system-x86_64 arguments that boot kernel with
// initrd in a guest of shape t: TCG with one host thread per vCPU, one RAM
// backend and one -numa node per node, the SLIT distances, the serial
// console on stdio and no network, display or reboot.
func QemuArgs(t Topology, kernel, initrd string) ([]string, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	mib := strconv.FormatInt(int64(t.MemPerNode/hw.MiB), 10)
	total := strconv.FormatInt(int64(t.MemPerNode/hw.MiB)*int64(t.Nodes), 10)
	args := []string{
		"-accel", "tcg,thread=multi",
		"-m", total + "M",
		"-smp", fmt.Sprintf("%d,sockets=%d,cores=%d,threads=1", t.Nodes*t.CPUsPerNode, t.Nodes, t.CPUsPerNode),
	}
	for n := 0; n < t.Nodes; n++ {
		args = append(args,
			"-object", fmt.Sprintf("memory-backend-ram,id=m%d,size=%sM", n, mib),
			"-numa", fmt.Sprintf("node,nodeid=%d,cpus=%d-%d,memdev=m%d", n, n*t.CPUsPerNode, (n+1)*t.CPUsPerNode-1, n),
		)
	}
	// qemu fills in the local distance (10) and mirrors src→dst to dst→src,
	// but listing every ordered pair leaves nothing implicit.
	for a := 0; a < t.Nodes; a++ {
		for b := 0; b < t.Nodes; b++ {
			if a != b {
				args = append(args, "-numa", fmt.Sprintf("dist,src=%d,dst=%d,val=%d", a, b, RemoteDistance))
			}
		}
	}
	args = append(args,
		"-kernel", kernel,
		"-initrd", initrd,
		"-append", KernelCmdline,
		"-nographic", "-no-reboot", "-nic", "none",
	)
	return args, nil
}
