package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// Names of the dataspaces the bench declares.
const (
	// LocalDataspace is each worker subsystem's own dataspace, served by
	// its vcore's pagers (local mode) or by core's single pager (central).
	LocalDataspace = "bench"
	// SharedDataspace is core-owned: its faults are forwarded to core.
	SharedDataspace = "shared"
	// CoreDataspace is the core-owned read-only dataspace the forwarded
	// and replicated modes' workers touch (and nothing else).
	CoreDataspace = "core_ro"
)

// ErrMachine is wrapped when the machine cannot host the bench (e.g. one CPU).
var ErrMachine = errors.New("bench: machine cannot host the daemons")

// Partition is what the bench gives one vcore: a node and its CPUs.
type Partition struct {
	Node hw.Node
	CPUs hw.CPUSet
}

// Layout splits a machine as the bench runs it: core keeps its lowest
// allowed CPU as housekeeping (where the central pager runs); the rest of
// each node's allowed CPUs go to that node's vcore. Nodes left without CPUs
// get no vcore.
type Layout struct {
	CoreCPU    hw.CPU
	Partitions []Partition
}

// PlanLayout computes the Layout of m.
func PlanLayout(m *topology.Machine) (Layout, error) {
	allowed := m.AllowedCPUs.Intersect(m.OnlineCPUs())
	if allowed.IsEmpty() {
		return Layout{}, fmt.Errorf("%w: no allowed online CPU", ErrMachine)
	}
	coreCPU, _ := allowed.Min()
	l := Layout{CoreCPU: coreCPU}
	for _, n := range m.Nodes {
		if !m.AllowedNodes.IsEmpty() && !m.AllowedNodes.Contains(n.ID) {
			continue
		}
		cpus := n.CPUs.Intersect(allowed).Difference(hw.NewSet(l.CoreCPU))
		if cpus.IsEmpty() {
			continue
		}
		l.Partitions = append(l.Partitions, Partition{Node: n.ID, CPUs: cpus})
	}
	if len(l.Partitions) == 0 {
		return Layout{}, fmt.Errorf("%w: no CPU left for a vcore besides core's CPU %d (need at least 2 CPUs)", ErrMachine, l.CoreCPU)
	}
	return l, nil
}

// DaemonRun describes one local or central run: what the daemons' config
// files say. Paths are inside Dir.
type DaemonRun struct {
	Dir          string
	Exe          string // the vcored binary the subsystems run
	CgroupParent string
	Pager        config.PagerMode
	FaultAround  int
	Layout       Layout
	// Workers per vcore; each is one subsystem running one worker.
	Workers int
	Pages   int
	Pattern Pattern
	Stride  int
	Seed    uint64 // content seed of every dataspace (pattern content)
	// Shared adds the core-owned dataspace to every worker (forwarded faults).
	Shared bool
	// Zero makes the workers' own dataspaces zero-filled instead of
	// patterned (Seed), as the kernel's first touch is.
	Zero bool
	// Prefetch sets prefetch = "sequential" on the workers' own dataspace.
	Prefetch bool
	// CoreOnly: the workers touch only CoreDataspace, core-owned and
	// read-only (their faults are forwarded to core, or served from the
	// vcore's replica).
	CoreOnly bool
	// Warm: before the measured workers touch, a warm-up worker per vcore
	// touches CoreDataspace (its first faults fill the vcore's replica);
	// its result is not measured.
	Warm bool
}

// WarmResultPath is where the warm-up worker of partition i writes.
func (r *DaemonRun) WarmResultPath(i int) string {
	return filepath.Join(r.Dir, "results", fmt.Sprintf("warm-n%d.json", r.Layout.Partitions[i].Node))
}

// verify is what the workers check their own dataspace against.
func (r *DaemonRun) verify() Verify {
	if r.Zero {
		return Verify{Kind: "zero"}
	}
	return Verify{Kind: "pattern", Seed: r.Seed}
}

// localContent is the TOML content lines of the workers' own dataspace.
func (r *DaemonRun) localContent() string {
	pf := ""
	if r.Prefetch {
		pf = "prefetch = \"sequential\"\n"
	}
	if r.Zero {
		return "content = \"zero\"\n" + pf
	}
	return fmt.Sprintf("content = \"pattern\"\nseed = %d\n", r.Seed) + pf
}

// CoreSocket is core's socket path.
func (r *DaemonRun) CoreSocket() string { return filepath.Join(r.Dir, "core.sock") }

// VCoreSocket is the socket of the vcore of partition i.
func (r *DaemonRun) VCoreSocket(i int) string {
	return filepath.Join(r.Dir, fmt.Sprintf("vcore%d.sock", r.Layout.Partitions[i].Node))
}

// CoreConfigPath and VCoreConfigPath are where the config files go.
func (r *DaemonRun) CoreConfigPath() string { return filepath.Join(r.Dir, "core.toml") }

// VCoreConfigPath is the config file of the vcore of partition i.
func (r *DaemonRun) VCoreConfigPath(i int) string {
	return filepath.Join(r.Dir, fmt.Sprintf("node%d.toml", r.Layout.Partitions[i].Node))
}

// WorkerName is the subsystem name of worker w of partition i.
func (r *DaemonRun) WorkerName(i, w int) string {
	return fmt.Sprintf("worker-n%d-%d", r.Layout.Partitions[i].Node, w)
}

// ResultPath is where worker w of partition i writes its result.
func (r *DaemonRun) ResultPath(i, w int) string {
	return filepath.Join(r.Dir, "results", r.WorkerName(i, w)+".json")
}

// WorkerCPU is the CPU worker w of partition i pins its toucher to: the
// partition's CPUs in turn.
func (r *DaemonRun) WorkerCPU(i, w int) hw.CPU {
	cpus := r.Layout.Partitions[i].CPUs.Slice()
	return cpus[w%len(cpus)]
}

func (r *DaemonRun) dataspaceBytes() hw.Bytes { return hw.Bytes(r.Pages) * hw.Bytes(os.Getpagesize()) }

// workerMemory is a worker subsystem's quota: its dataspaces plus room for
// the Go runtime and the result.
func (r *DaemonRun) workerMemory() hw.Bytes {
	b := r.dataspaceBytes()
	if r.Shared {
		b *= 2
	}
	return b + 128*hw.MiB
}

// CoreTOML is core.toml for this run.
func (r *DaemonRun) CoreTOML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by vcored bench for one %s-pager run.\n", r.Pager)
	fmt.Fprintf(&b, "socket = %s\n", tomlString(r.CoreSocket()))
	fmt.Fprintf(&b, "state_dir = %s\n", tomlString(filepath.Join(r.Dir, "state", "core")))
	fmt.Fprintf(&b, "cgroup_parent = %s\n", tomlString(r.CgroupParent))
	fmt.Fprintf(&b, "reserved_cpus = %s\n", tomlString(hw.NewSet(r.Layout.CoreCPU).String()))
	fmt.Fprintf(&b, "reserved_memory = %s\n", tomlString("64MiB"))
	fmt.Fprintf(&b, "pager = %s\n", tomlString(string(r.Pager)))
	fmt.Fprintf(&b, "fault_around = %d\n", r.FaultAround)
	fmt.Fprintf(&b, "log_level = \"warn\"\n")
	if r.Shared {
		fmt.Fprintf(&b, "\n[[dataspace]]\nname = %s\nsize = %s\ncontent = \"pattern\"\nseed = %d\n",
			tomlString(SharedDataspace), tomlString(r.dataspaceBytes().String()), r.Seed)
	}
	if r.CoreOnly {
		fmt.Fprintf(&b, "\n[[dataspace]]\nname = %s\nsize = %s\ncontent = \"pattern\"\nseed = %d\n",
			tomlString(CoreDataspace), tomlString(r.dataspaceBytes().String()), r.Seed)
	}
	return b.String()
}

// WorkerCommand is the command of worker w of partition i.
func (r *DaemonRun) WorkerCommand(i, w int) []string {
	cmd := r.workerArgs(i, w, r.ResultPath(i, w))
	if r.Warm {
		cmd = append(cmd, "--wait-file", r.WarmResultPath(i))
	}
	return cmd
}

// workerArgs is the command of worker w of partition i writing to result.
func (r *DaemonRun) workerArgs(i, w int, result string) []string {
	names := LocalDataspace
	if r.Shared {
		names += "," + SharedDataspace
	}
	verify := r.verify().String()
	if r.CoreOnly {
		names, verify = CoreDataspace, Verify{Kind: "pattern", Seed: r.Seed}.String()
	}
	return []string{r.Exe, "worker", "--mode", string(WorkerUffd),
		"--dataspace", names,
		"--pages", strconv.Itoa(r.Pages),
		"--pattern", string(r.Pattern), "--stride", strconv.Itoa(r.Stride),
		"--verify", verify,
		"--cpu", strconv.Itoa(int(r.WorkerCPU(i, w))),
		"--result", result,
		// No mbind: where a page lands is then decided by the CPU that
		// resolves its fault, which is what the placement share compares
		// (local pagers keep pages on the worker's node; the single pager
		// puts them on core's node).
		"--unbound",
	}
}

// VCoreTOML is the config of the vcore of partition i.
func (r *DaemonRun) VCoreTOML(i int) string {
	p := r.Layout.Partitions[i]
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by vcored bench for one %s-pager run.\n", r.Pager)
	fmt.Fprintf(&b, "node = %d\n", p.Node)
	fmt.Fprintf(&b, "core_socket = %s\n", tomlString(r.CoreSocket()))
	fmt.Fprintf(&b, "socket = %s\n", tomlString(r.VCoreSocket(i)))
	fmt.Fprintf(&b, "state_dir = %s\n", tomlString(filepath.Join(r.Dir, "state", fmt.Sprintf("vcore%d", p.Node))))
	subsystems := r.Workers
	if r.Warm {
		subsystems++
	}
	fmt.Fprintf(&b, "memory = %s\n", tomlString((hw.Bytes(subsystems)*r.workerMemory() + 64*hw.MiB).String()))
	fmt.Fprintf(&b, "fault_around = %d\n", r.FaultAround)
	if !r.CoreOnly {
		// Replicas are a data cache of the configured size, not the
		// daemon's own overhead: kept out of the local runs, whose peak
		// RSS is a target (the shared dataspace would fill it).
		fmt.Fprintf(&b, "replica_budget = \"0\"\n")
	}
	fmt.Fprintf(&b, "stop_grace = \"2s\"\n")
	fmt.Fprintf(&b, "log_level = \"warn\"\n")
	type sub struct {
		name string
		cmd  []string
	}
	var subs []sub
	if r.Warm {
		subs = append(subs, sub{fmt.Sprintf("warm-n%d", p.Node), r.workerArgs(i, 0, r.WarmResultPath(i))})
	}
	for w := range r.Workers {
		subs = append(subs, sub{r.WorkerName(i, w), r.WorkerCommand(i, w)})
	}
	for _, s := range subs {
		fmt.Fprintf(&b, "\n[[subsystem]]\nname = %s\n", tomlString(s.name))
		quoted := make([]string, len(s.cmd))
		for k, c := range s.cmd {
			quoted[k] = tomlString(c)
		}
		fmt.Fprintf(&b, "command = [%s]\n", strings.Join(quoted, ", "))
		fmt.Fprintf(&b, "memory = %s\n", tomlString(r.workerMemory().String()))
		fmt.Fprintf(&b, "restart = \"never\"\n")
		switch {
		case r.Shared:
			fmt.Fprintf(&b, "dataspaces = [%s]\n", tomlString(SharedDataspace))
		case r.CoreOnly:
			fmt.Fprintf(&b, "dataspaces = [%s]\n", tomlString(CoreDataspace))
		}
		fmt.Fprintf(&b, "\n[[subsystem.dataspace]]\nname = %s\nsize = %s\n%s",
			tomlString(LocalDataspace), tomlString(r.dataspaceBytes().String()), r.localContent())
	}
	return b.String()
}

// Validate parses every generated file with the daemons' own parsers.
func (r *DaemonRun) Validate() error {
	if _, err := config.ParseCore(r.CoreConfigPath(), []byte(r.CoreTOML())); err != nil {
		return fmt.Errorf("bench: generated core config: %w", err)
	}
	for i := range r.Layout.Partitions {
		if _, err := config.ParseVCore(r.VCoreConfigPath(i), []byte(r.VCoreTOML(i))); err != nil {
			return fmt.Errorf("bench: generated vcore config: %w", err)
		}
	}
	return nil
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
