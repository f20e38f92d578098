package topology

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/sysinfo"
)

// ReadAllowed returns the CPUs and memory nodes this process may use, from
// the Cpus_allowed_list and Mems_allowed_list lines of self/status in a
// procfs root (os.DirFS("/proc") for the real one). Both already reflect the
// process's affinity and its cgroup's effective cpuset.
func ReadAllowed(procfs fs.FS) (hw.CPUSet, hw.NodeSet, error) {
	const name = "self/status"
	b, err := fs.ReadFile(procfs, name)
	if err != nil {
		return hw.CPUSet{}, hw.NodeSet{}, fmt.Errorf("topology: %w", err)
	}
	var cpuList, memList string
	var haveCPUs, haveMems bool
	for line := range strings.Lines(string(b)) {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch key {
		case "Cpus_allowed_list":
			cpuList, haveCPUs = val, true
		case "Mems_allowed_list":
			memList, haveMems = val, true
		}
	}
	if !haveCPUs || !haveMems {
		return hw.CPUSet{}, hw.NodeSet{}, fmt.Errorf("topology: %s: %w: no Cpus_allowed_list or Mems_allowed_list line", name, ErrMalformed)
	}
	cpus, err := hw.ParseCPUSet(cpuList)
	if err != nil {
		return hw.CPUSet{}, hw.NodeSet{}, malformed(name, "Cpus_allowed_list:"+cpuList, err)
	}
	nodes, err := hw.ParseNodeSet(memList)
	if err != nil {
		return hw.CPUSet{}, hw.NodeSet{}, malformed(name, "Mems_allowed_list:"+memList, err)
	}
	return cpus, nodes, nil
}

// Host discovers the machine this process runs on: /sys, restricted to what
// /proc/self/status allows, with the CPU model name filled in when the host
// reports one.
func Host() (*Machine, error) {
	cpus, nodes, err := ReadAllowed(os.DirFS("/proc"))
	if err != nil {
		return nil, err
	}
	m, err := Discover(os.DirFS("/sys"), WithAllowed(cpus, nodes))
	if err != nil {
		return nil, err
	}
	if m.memUnknown {
		// No NUMA sysfs: the one node is the whole machine.
		if err := fillFromMeminfo(os.DirFS("/proc"), &m.Nodes[0]); err != nil {
			return nil, err
		}
		m.Notes = append(m.Notes, "node 0 size and free memory are the machine's, from /proc/meminfo")
	}
	// The model is description only: a host that does not report it is fine.
	if info, err := sysinfo.CPU(context.Background()); err == nil {
		m.Model, m.MHz = info.Model, info.MHz
	}
	return m, nil
}

// fillFromMeminfo sets a node's MemTotal and MemFree from the meminfo file
// of a procfs root ("MemTotal:       16318540 kB").
func fillFromMeminfo(procfs fs.FS, n *Node) error {
	const name = "meminfo"
	b, err := fs.ReadFile(procfs, name)
	if err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	var haveTotal, haveFree bool
	for line := range strings.Lines(clean(string(b))) {
		f := strings.Fields(line)
		var dst *hw.Bytes
		switch {
		case len(f) == 0:
			continue
		case f[0] == "MemTotal:":
			dst, haveTotal = &n.MemTotal, true
		case f[0] == "MemFree:":
			dst, haveFree = &n.MemFree, true
		default:
			continue
		}
		if len(f) != 3 || f[2] != "kB" {
			return malformed(name, line, errors.New(`want "Key: <number> kB"`))
		}
		kb, perr := strconv.ParseUint(f[1], 10, 64)
		if perr != nil || kb > uint64(^hw.Bytes(0)/hw.KiB) {
			return malformed(name, line, errors.New(`want "Key: <number> kB"`))
		}
		*dst = hw.Bytes(kb) * hw.KiB
	}
	if !haveTotal || !haveFree {
		return malformed(name, string(b), errors.New("no MemTotal: and MemFree: lines"))
	}
	return nil
}
