package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// runTopology implements `vcored topology [--sysfs DIR] [--json]`: it shows
// the NUMA nodes, their CPUs, memory and distances, the LLC groups and what
// this process may use, in the spirit of `numactl -H`, and what had to be
// inferred because sysfs did not say it.
func runTopology(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "topology", "[--sysfs DIR] [--json]")
	sysfs := fs.String("sysfs", "", "read this sysfs tree (e.g. a fixture) instead of the host's /sys; everything online is then allowed")
	asJSON := fs.Bool("json", false, "print JSON instead of text")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}

	var m *topology.Machine
	var err error
	if *sysfs != "" {
		if m, err = topology.Discover(os.DirFS(*sysfs)); err != nil {
			return fmt.Errorf("sysfs tree %s: %w", *sysfs, err)
		}
	} else if m, err = topology.Host(); err != nil {
		return err
	}

	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(machineJSON(m))
	}
	return printTopology(e.stdout, m)
}

// topologyJSON is the --json document. Sets are Linux list strings
// ("0-3,8"), sizes are bytes.
type topologyJSON struct {
	Model        string      `json:"model"`
	MHz          float64     `json:"mhz,omitempty"`
	Nodes        []nodeJSON  `json:"nodes"`
	LLCGroups    []hw.CPUSet `json:"llc_groups"`
	AllowedCPUs  hw.CPUSet   `json:"allowed_cpus"`
	AllowedNodes hw.NodeSet  `json:"allowed_nodes"`
	CPUs         []cpuJSON   `json:"cpus"`
	// Notes say what was inferred because sysfs did not say it (a
	// missing file, an LLC group taken from the package); [] when nothing.
	Notes []string `json:"notes"`
}

type nodeJSON struct {
	ID               hw.Node        `json:"id"`
	CPUs             hw.CPUSet      `json:"cpus"`
	MemoryTotalBytes uint64         `json:"memory_total_bytes"`
	MemoryFreeBytes  uint64         `json:"memory_free_bytes"`
	Distances        []int          `json:"distances"` // to each node of "nodes", in that order
	CPULess          bool           `json:"cpuless"`
	HugePages        []hugePageJSON `json:"hugepages"` // by ascending size
}

type hugePageJSON struct {
	SizeBytes uint64 `json:"size_bytes"`
	Total     int    `json:"total"`
	Free      int    `json:"free"`
}

// cpuJSON describes one possible CPU; an offline CPU has only id and online.
type cpuJSON struct {
	ID       hw.CPU     `json:"id"`
	Online   bool       `json:"online"`
	Node     *hw.Node   `json:"node,omitempty"`
	Package  *int       `json:"package,omitempty"`
	Core     *int       `json:"core,omitempty"`
	Siblings *hw.CPUSet `json:"siblings,omitempty"`
	LLC      *hw.CPUSet `json:"llc,omitempty"`
}

func machineJSON(m *topology.Machine) topologyJSON {
	out := topologyJSON{
		Model:        m.Model,
		MHz:          m.MHz,
		Nodes:        []nodeJSON{},
		LLCGroups:    append([]hw.CPUSet{}, m.LLCGroups...),
		AllowedCPUs:  m.AllowedCPUs,
		AllowedNodes: m.AllowedNodes,
		CPUs:         []cpuJSON{},
		Notes:        append([]string{}, m.Notes...),
	}
	for _, n := range m.Nodes {
		nj := nodeJSON{
			ID:               n.ID,
			CPUs:             n.CPUs,
			MemoryTotalBytes: uint64(n.MemTotal),
			MemoryFreeBytes:  uint64(n.MemFree),
			Distances:        n.Distances,
			CPULess:          n.CPULess,
			HugePages:        []hugePageJSON{},
		}
		for _, size := range slices.Sorted(maps.Keys(n.HugePages)) {
			hp := n.HugePages[size]
			nj.HugePages = append(nj.HugePages, hugePageJSON{SizeBytes: uint64(size), Total: hp.Total, Free: hp.Free})
		}
		out.Nodes = append(out.Nodes, nj)
	}
	for _, c := range m.CPUs {
		cj := cpuJSON{ID: c.ID, Online: c.Online}
		if c.Online { // c is per iteration, so its fields can be pointed at
			cj.Node, cj.Package, cj.Core, cj.Siblings, cj.LLC = &c.Node, &c.Package, &c.Core, &c.Siblings, &c.LLC
		}
		out.CPUs = append(out.CPUs, cj)
	}
	return out
}

// printTopology writes the human form: numactl -H's lines first (so the
// two can be compared by eye), then what numactl does not show.
func printTopology(w io.Writer, m *topology.Machine) error {
	var b strings.Builder
	if m.Model != "" {
		fmt.Fprintf(&b, "model: %s", m.Model)
		if m.MHz > 0 {
			fmt.Fprintf(&b, " (%.0f MHz)", m.MHz)
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "available: %d nodes (%s)\n", len(m.Nodes), m.NodeIDs())
	for _, n := range m.Nodes {
		cpus := n.CPUs.String()
		if n.CPULess {
			cpus = "(none: memory-only node)"
		}
		fmt.Fprintf(&b, "node %d cpus: %s\n", n.ID, cpus)
		fmt.Fprintf(&b, "node %d size: %d MB\n", n.ID, n.MemTotal/hw.MiB)
		fmt.Fprintf(&b, "node %d free: %d MB\n", n.ID, n.MemFree/hw.MiB)
		if len(n.HugePages) > 0 {
			var parts []string
			for _, size := range slices.Sorted(maps.Keys(n.HugePages)) {
				hp := n.HugePages[size]
				parts = append(parts, fmt.Sprintf("%s %d (%d free)", size, hp.Total, hp.Free))
			}
			fmt.Fprintf(&b, "node %d hugepages: %s\n", n.ID, strings.Join(parts, ", "))
		}
	}
	b.WriteString("node distances:\nnode")
	for _, n := range m.Nodes {
		fmt.Fprintf(&b, " %3d", n.ID)
	}
	b.WriteByte('\n')
	for _, n := range m.Nodes {
		fmt.Fprintf(&b, "%3d:", n.ID)
		for _, d := range n.Distances {
			fmt.Fprintf(&b, " %3d", d)
		}
		b.WriteByte('\n')
	}

	groups := make([]string, len(m.LLCGroups))
	for i, g := range m.LLCGroups {
		groups[i] = g.String()
	}
	fmt.Fprintf(&b, "llc groups: %s\n", strings.Join(groups, " "))
	if online := m.OnlineCPUs(); len(m.CPUs) > online.Len() {
		var ids []hw.CPU
		for _, c := range m.CPUs {
			if !c.Online {
				ids = append(ids, c.ID)
			}
		}
		fmt.Fprintf(&b, "offline cpus: %s\n", hw.NewSet(ids...))
	}
	fmt.Fprintf(&b, "allowed cpus: %s\n", orNone(m.AllowedCPUs.String()))
	fmt.Fprintf(&b, "allowed nodes: %s\n", orNone(m.AllowedNodes.String()))
	if len(m.Notes) > 0 {
		b.WriteString("notes (inferred; sysfs did not say):\n")
		for _, n := range m.Notes {
			fmt.Fprintf(&b, "  - %s\n", n)
		}
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}

	// Per-CPU table, online CPUs only.
	fmt.Fprintln(w, "cpus:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  cpu\tnode\tpackage\tcore\tsiblings\tllc")
	for _, c := range m.CPUs {
		if c.Online {
			fmt.Fprintf(tw, "  %d\t%d\t%d\t%d\t%s\t%s\n", c.ID, c.Node, c.Package, c.Core, c.Siblings, c.LLC)
		}
	}
	return tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
