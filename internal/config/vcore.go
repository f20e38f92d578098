package config

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vcored/vcored/internal/hw"
)

// RestartPolicy says when a subsystem's command is started again.
type RestartPolicy string

// Restart policies.
const (
	RestartNever     RestartPolicy = "never"
	RestartOnFailure RestartPolicy = "on-failure" // non-zero exit or killed by a signal
	RestartAlways    RestartPolicy = "always"
)

// Defaults of a vcore file and its subsystems.
const (
	DefaultStopGrace      = 10 * time.Second
	DefaultMaxRestarts    = 5
	DefaultBackoffInitial = 100 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
	// MaxPagerThreads bounds pager_threads (a sanity limit against typos).
	MaxPagerThreads = 1024
)

// Per-subsystem resource bounds: their defaults and the largest values
// accepted (sanity limits against typos).
const (
	DefaultMaxConnections = 64   // worker connections to the vcore at once
	DefaultMaxRegions     = 4096 // registered regions at once
	DefaultPidsMax        = 4096 // pids.max of the subsystem's cgroup; 0 = "max"
	MaxMaxConnections     = 1 << 16
	MaxMaxRegions         = 1 << 20
	MaxPidsMax            = 1 << 22 // the kernel's PID_MAX_LIMIT
)

// Environment variables vcore sets for every subsystem; a subsystem's env
// table may not set them.
var reservedEnv = []string{"VCORE_SOCKET", "VCORE_NODE", "VCORE_SUBSYSTEM"}

// DefaultVCoreSocket is the default socket of the vcore for node n.
func DefaultVCoreSocket(n hw.Node) string { return fmt.Sprintf("/run/vcored/vcore%d.sock", n) }

// DefaultVCoreStateDir is the default state directory of the vcore for node n.
func DefaultVCoreStateDir(n hw.Node) string { return fmt.Sprintf("%s/vcore%d", DefaultStateDir, n) }

// VCore is one vcore daemon's configuration (e.g. node0.toml). See
// docs/CONFIG.md.
type VCore struct {
	// File is the name the configuration was read from (used in messages).
	File string
	// Node is the NUMA node whose partition this vcore leases.
	Node hw.Node
	// CoreSocket is where core listens.
	CoreSocket string
	// Socket is this vcore's socket (workers, status clients).
	Socket string
	// StateDir holds per-subsystem logs and the vcore's state.
	StateDir string
	// CPUs, when not empty, is the subset of the node's partition this vcore
	// leases; empty means the whole partition (the node's CPUs that core
	// does not reserve).
	CPUs hw.CPUSet
	// Memory is the node-local RAM leased from core.
	Memory hw.Bytes
	// PagerThreads is the number of pager threads; 0 means one per CPU of
	// the partition.
	PagerThreads int
	// FaultAround is how many pages the vcore's pagers resolve per fault.
	FaultAround int
	// PagerPlacement says where the pager threads run: on the faulting
	// CPU, on a sibling CPU of the partition, or whichever a measurement
	// at start finds cheaper.
	PagerPlacement PagerPlacement
	// ReplicaBudget is the node-local memory for replicas of core-owned
	// read-only dataspaces (pages kept after their first forwarded fault,
	// least recently used dropped beyond it); 0 turns replicas off.
	ReplicaBudget hw.Bytes
	// StopGrace is how long a stopping subsystem gets between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// LogLevel is the minimum level logged.
	LogLevel LogLevel
	// Subsystems are started, supervised and pinned by the vcore.
	Subsystems []Subsystem

	lines map[string]int // key path → line, for Validate's messages
}

// Subsystem is one supervised command group with its CPUs and memory quota.
type Subsystem struct {
	// Name is unique within the vcore; it names the cgroup and log file.
	Name string
	// Command is the program and its arguments (looked up in PATH when the
	// program has no slash).
	Command []string
	// CPUs is a count or an explicit list inside the partition; the zero
	// value means the whole partition.
	CPUs CPURequest
	// Memory is the RAM quota: the subsystem's dataspaces plus its memory
	// cgroup limit.
	Memory hw.Bytes
	// Restart, MaxRestarts and the backoff bounds drive supervision: after
	// a qualifying exit the command is started again after a delay that
	// doubles from BackoffInitial up to BackoffMax; after MaxRestarts
	// restarts in a row it is marked failed.
	Restart        RestartPolicy
	MaxRestarts    int
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// Env is added to the command's environment (over vcore's own).
	Env map[string]string
	// Dataspaces are the names of core-owned dataspaces its workers may attach.
	Dataspaces []string
	// Local are the dataspaces declared for this subsystem, served by the
	// vcore's pagers from node-local memory ([[subsystem.dataspace]]).
	Local []Dataspace
	// MaxConnections caps the subsystem's worker connections to the vcore,
	// MaxRegions its registered regions; beyond them the vcore refuses with
	// a "limit" error. PidsMax is its cgroup's pids.max (0: no limit).
	MaxConnections int
	MaxRegions     int
	PidsMax        int
	// Movable: the subsystem may be moved to another node by stopping it
	// and starting it there (a restart-mode move); without it a
	// rebalancing move is live.
	Movable bool
	// CheckpointInterval: the vcore checkpoints the subsystem's persistent
	// dataspaces this often (0: only when asked, `vcored checkpoint`).
	CheckpointInterval time.Duration
}

// CPURequest is a subsystem's CPU demand: a Count picked from the partition
// by topology, an explicit List, or (zero value) the whole partition.
type CPURequest struct {
	Count int
	List  hw.CPUSet
}

// IsAll reports whether the request is the whole partition.
func (r CPURequest) IsAll() bool { return r.Count == 0 && r.List.IsEmpty() }

// String gives the request as written in a file: "2", "1-2" or "all".
func (r CPURequest) String() string {
	switch {
	case r.Count > 0:
		return fmt.Sprint(r.Count)
	case !r.List.IsEmpty():
		return r.List.String()
	}
	return "all"
}

// LoadVCore reads and parses a vcore file. See ParseVCore.
func LoadVCore(path string) (*VCore, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{ReadError(path, err)} // "path: no such file", like every other problem
	}
	return ParseVCore(path, data)
}

// PagerPlacement is pager_placement: where a vcore's pager threads run.
type PagerPlacement string

// Pager placements.
const (
	// PlacementSameCPU: one pager thread per partition CPU, pinned to it:
	// a fault is served on the CPU that raised it.
	PlacementSameCPU PagerPlacement = "same-cpu"
	// PlacementSibling: the pager threads may run on any CPU of the
	// partition (one node, its LLCs): the scheduler wakes a pager on an
	// idle sibling of the faulting CPU. Needs at least 2 CPUs.
	PlacementSibling PagerPlacement = "sibling"
	// PlacementAuto: measure both at start (a few hundred faults on a
	// private region) and keep the cheaper; same-cpu on one CPU.
	PlacementAuto PagerPlacement = "auto"
)

// DefaultReplicaBudget is replica_budget's default.
const DefaultReplicaBudget = 64 * hw.MiB

// ParseVCore parses the vcore file data; name is used in messages. Absent
// keys take their defaults. The error, if any, is an Errors listing every
// problem; the VCore is nil then.
func ParseVCore(name string, data []byte) (*VCore, error) {
	v, _, err := parseVCore(name, data)
	return v, err
}

// parseVCore is ParseVCore that also returns the decoder (for the keys it
// asked for).
func parseVCore(name string, data []byte) (*VCore, *decoder, error) {
	d, t, err := parseTOML(name, data)
	if err != nil {
		return nil, nil, err
	}
	v := &VCore{
		File:           name,
		CoreSocket:     DefaultCoreSocket,
		FaultAround:    DefaultFaultAround,
		ReplicaBudget:  DefaultReplicaBudget,
		PagerPlacement: PlacementAuto,
		StopGrace:      DefaultStopGrace,
		LogLevel:       LogInfo,
		lines:          d.lines,
	}
	node := -1
	if t.required("node", "the NUMA node id this vcore runs on") {
		t.setInt("node", &node, 0, hw.MaxID)
	}
	if node >= 0 {
		v.Node = hw.Node(node)
	}
	v.Socket = DefaultVCoreSocket(v.Node)
	v.StateDir = DefaultVCoreStateDir(v.Node)
	t.setString("core_socket", &v.CoreSocket, checkSocketPath)
	t.setString("socket", &v.Socket, checkSocketPath)
	t.setString("state_dir", &v.StateDir, checkAbsDir)
	t.setCPUs("cpus", &v.CPUs, false)
	if t.required("memory", `the node-local RAM to lease, e.g. "2GiB"`) && t.setSize("memory", &v.Memory) && v.Memory == 0 {
		t.d.add(t.key("memory"), ErrValue, nil, "memory must not be zero")
	}
	t.setInt("pager_threads", &v.PagerThreads, 0, MaxPagerThreads)
	t.setInt("fault_around", &v.FaultAround, 1, MaxFaultAround)
	if t.setSize("replica_budget", &v.ReplicaBudget) && v.ReplicaBudget%pageAlign != 0 {
		t.d.add(t.key("replica_budget"), ErrValue, nil, "replica_budget %s is not a multiple of 4KiB", v.ReplicaBudget)
	}
	setEnum(t, "pager_placement", &v.PagerPlacement, PlacementSameCPU, PlacementSibling, PlacementAuto)
	t.setDuration("stop_grace", &v.StopGrace)
	setEnum(t, "log_level", &v.LogLevel, logLevels...)
	subs := t.tables("subsystem")
	for _, st := range subs {
		v.Subsystems = append(v.Subsystems, decodeSubsystem(st))
	}
	t.done()

	seen := map[string]int{}
	var sum hw.Bytes
	for i, s := range v.Subsystems {
		if j, dup := seen[s.Name]; dup && s.Name != "" {
			d.add(keyPath(indexPath("subsystem", i), "name"), ErrConflict, nil, "subsystem name %q is already used by subsystem[%d]", s.Name, j)
		} else {
			seen[s.Name] = i
		}
		sum += s.Memory
	}
	if v.Memory > 0 && sum > v.Memory {
		d.add("memory", ErrConflict, nil, "the subsystems' memory adds up to %s, more than the vcore's %s", sum, v.Memory)
	}
	if err := d.errs.asError(); err != nil {
		return nil, d, err
	}
	return v, d, nil
}

// decodeSubsystem reads one [[subsystem]] table.
func decodeSubsystem(t *table) Subsystem {
	s := Subsystem{
		Restart:        RestartOnFailure,
		MaxRestarts:    DefaultMaxRestarts,
		BackoffInitial: DefaultBackoffInitial,
		BackoffMax:     DefaultBackoffMax,
		MaxConnections: DefaultMaxConnections,
		MaxRegions:     DefaultMaxRegions,
		PidsMax:        DefaultPidsMax,
	}
	if t.required("name", "a unique name") {
		t.setString("name", &s.Name, checkName)
	}
	if t.required("command", `the program and its arguments, e.g. ["sleep", "infinity"]`) {
		if cmd, ok := t.strings("command"); ok {
			switch {
			case len(cmd) == 0:
				t.d.add(t.key("command"), ErrValue, nil, "empty command")
			case cmd[0] == "":
				t.d.add(indexPath(t.key("command"), 0), ErrValue, nil, "empty program name")
			default:
				s.Command = cmd
			}
		}
	}
	if v, ok := t.get("cpus"); ok {
		switch x := v.(type) {
		case int64:
			switch {
			case x < 1:
				t.d.add(t.key("cpus"), ErrValue, nil, "CPU count %d must be at least 1", x)
			case x > hw.MaxID:
				t.d.add(t.key("cpus"), ErrValue, nil, "CPU count %d is more than any machine has", x)
			default:
				s.CPUs.Count = int(x)
			}
		case string:
			t.setCPUs("cpus", &s.CPUs.List, false)
		default:
			t.wrongType("cpus", `a CPU count (2) or a CPU list ("1-2")`, v)
		}
	}
	if t.required("memory", `the RAM quota, e.g. "256MiB"`) && t.setSize("memory", &s.Memory) && s.Memory == 0 {
		t.d.add(t.key("memory"), ErrValue, nil, "memory must not be zero")
	}
	setEnum(t, "restart", &s.Restart, RestartNever, RestartOnFailure, RestartAlways)
	t.setInt("max_restarts", &s.MaxRestarts, 0, 1<<20)
	t.setDuration("backoff_initial", &s.BackoffInitial)
	t.setDuration("backoff_max", &s.BackoffMax)
	if t.has("backoff_initial") && s.BackoffInitial == 0 {
		t.d.add(t.key("backoff_initial"), ErrValue, nil, "backoff_initial must be positive")
	}
	if s.BackoffInitial > s.BackoffMax {
		t.d.add(t.key("backoff_max"), ErrConflict, nil, "backoff_max %v is below backoff_initial %v", s.BackoffMax, s.BackoffInitial)
	}
	// Resource bounds (see the README's [[subsystem]] keys).
	t.setInt("max_connections", &s.MaxConnections, 1, MaxMaxConnections)
	t.setInt("max_regions", &s.MaxRegions, 1, MaxMaxRegions)
	t.setInt("pids_max", &s.PidsMax, 0, MaxPidsMax)
	t.setBool("movable", &s.Movable)
	t.setDuration("checkpoint_interval", &s.CheckpointInterval)
	if s.CheckpointInterval > 0 && s.CheckpointInterval < MinCheckpointInterval {
		t.d.add(t.key("checkpoint_interval"), ErrValue, nil, "checkpoint_interval %v is below %v (or 0: only when asked)", s.CheckpointInterval, MinCheckpointInterval)
	}
	if et := t.sub("env"); et != nil {
		s.Env = map[string]string{}
		for k := range et.m {
			val, ok := et.str(k)
			if !ok {
				continue
			}
			if msg := checkEnvName(k); msg != "" {
				t.d.add(et.key(k), ErrValue, nil, "%s", msg)
				continue
			}
			if strings.ContainsRune(val, 0) {
				t.d.add(et.key(k), ErrValue, nil, "value contains a NUL byte")
				continue
			}
			s.Env[k] = val
		}
		et.done()
	}
	if names, ok := t.strings("dataspaces"); ok {
		seen := map[string]bool{}
		for i, n := range names {
			if msg := checkName(n); msg != "" {
				t.d.add(indexPath(t.key("dataspaces"), i), ErrValue, nil, "%s", msg)
				continue
			}
			if seen[n] {
				t.d.add(indexPath(t.key("dataspaces"), i), ErrConflict, nil, "dataspace %q is listed twice", n)
				continue
			}
			seen[n] = true
			s.Dataspaces = append(s.Dataspaces, n)
		}
	}
	var local hw.Bytes
	for _, dt := range t.tables("dataspace") {
		ds := decodeDataspace(dt)
		s.Local = append(s.Local, ds)
		local += ds.Size
	}
	checkUniqueNames(t.d, t.key("dataspace"), s.Local)
	for i, ds := range s.Local {
		for _, n := range s.Dataspaces {
			if ds.Name == n {
				t.d.add(keyPath(indexPath(t.key("dataspace"), i), "name"), ErrConflict, nil, "dataspace %q is both local and listed in dataspaces (core-owned)", n)
			}
		}
	}
	if s.Memory > 0 && local > s.Memory {
		t.d.add(t.key("memory"), ErrConflict, nil, "the subsystem's dataspaces add up to %s, more than its memory %s", local, s.Memory)
	}
	if s.CheckpointInterval > 0 && !slices.ContainsFunc(s.Local, func(d Dataspace) bool { return d.Persistent }) {
		t.d.add(t.key("checkpoint_interval"), ErrConflict, nil, "checkpoint_interval needs a dataspace with persistent = true: there is nothing to checkpoint")
	}
	t.done()
	return s
}

// MinCheckpointInterval is the shortest checkpoint_interval.
const MinCheckpointInterval = time.Second

func checkEnvName(k string) string {
	for _, r := range reservedEnv {
		if k == r {
			return fmt.Sprintf("%s is set by vcore and cannot be overridden", k)
		}
	}
	if k == "" || strings.ContainsAny(k, "=\x00") {
		return fmt.Sprintf("bad environment variable name %q", k)
	}
	return ""
}
