package config

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy"
)

// PagerMode says where page faults are served.
type PagerMode string

// Pager modes.
const (
	// PagerLocal: each vcore serves its subsystems' faults on its own CPUs.
	PagerLocal PagerMode = "local"
	// PagerCentral: one pager thread in core, on a reserved CPU, serves the
	// faults of every vcore (the single-pager baseline).
	PagerCentral PagerMode = "central"
)

// LogLevel is a daemon's minimum log level.
type LogLevel string

// Log levels.
const (
	LogDebug LogLevel = "debug"
	LogInfo  LogLevel = "info"
	LogWarn  LogLevel = "warn"
	LogError LogLevel = "error"
)

var logLevels = []LogLevel{LogDebug, LogInfo, LogWarn, LogError}

// MaxFaultAround bounds fault_around: 512 pages of 4 KiB are 2 MiB, a huge
// page's worth; more only delays the faulting thread.
const MaxFaultAround = 512

// Defaults of the core file.
const (
	DefaultCoreSocket     = "/run/vcored/core.sock"
	DefaultStateDir       = "/var/lib/vcored"
	DefaultCgroupParent   = "vcored"
	DefaultReservedCPUs   = "0"
	DefaultReservedMemory = 512 * hw.MiB
	DefaultFaultAround    = 1
	DefaultOrphanGrace    = 30 * time.Second
	DefaultRejoinGrace    = 30 * time.Second
)

// Core is the core daemon's configuration (core.toml). Every key is documented in docs/CONFIG.md.
type Core struct {
	// File is the name the configuration was read from (used in messages).
	File string
	// Socket is the unix socket core listens on (vcores and clients).
	Socket string
	// SocketGroup, when set, is a group (name or numeric id) whose members
	// may connect besides root.
	SocketGroup string
	// StateDir holds the ledger of leases.
	StateDir string
	// CgroupParent is the cgroup (relative to each hierarchy's root) under
	// which every vcored cgroup is created.
	CgroupParent string
	// ReservedCPUs are core's housekeeping CPUs, never handed to a vcore.
	// The central pager runs on the lowest of them.
	ReservedCPUs hw.CPUSet
	// ReservedMemory is kept out of every node's partition.
	ReservedMemory hw.Bytes
	// Pager chooses local pagers or the central baseline.
	Pager PagerMode
	// FaultAround is how many pages core resolves per fault it serves
	// (forwarded, central mode, orphans); 1 = only the faulting page.
	FaultAround int
	// OrphanGrace is how long core keeps an orphaned partition (its vcore
	// died) for a new vcore to re-adopt before stopping what runs there.
	OrphanGrace time.Duration
	// RejoinGrace is how long a restarted core waits for the vcores in its
	// ledger to re-register before reclaiming their leases.
	RejoinGrace time.Duration
	// LogLevel is the minimum level logged.
	LogLevel LogLevel
	// Rebalance is off, advise (sample every partition's load each
	// RebalanceInterval and report the moves core would make) or auto
	// (make them, each within RebalanceMoveTimeout).
	Rebalance            Rebalance
	RebalanceInterval    time.Duration
	RebalancePolicy      policy.RebalanceConfig
	RebalanceMoveTimeout time.Duration
	// Dataspaces are owned by core and attachable from every node.
	Dataspaces []Dataspace

	lines map[string]int // key path → line, for Validate's messages
}

// DefaultCore returns the configuration of an empty core.toml.
func DefaultCore() *Core {
	return &Core{
		Socket:         DefaultCoreSocket,
		StateDir:       DefaultStateDir,
		CgroupParent:   DefaultCgroupParent,
		ReservedCPUs:   hw.MustParse[hw.CPU](DefaultReservedCPUs),
		ReservedMemory: DefaultReservedMemory,
		Pager:          PagerLocal,
		FaultAround:    DefaultFaultAround,
		OrphanGrace:    DefaultOrphanGrace,
		RejoinGrace:    DefaultRejoinGrace,
		LogLevel:       LogInfo,

		Rebalance:            RebalanceOff,
		RebalanceInterval:    DefaultRebalanceInterval,
		RebalancePolicy:      policy.DefaultRebalanceConfig(),
		RebalanceMoveTimeout: DefaultRebalanceMoveTimeout,
	}
}

// LoadCore reads and parses a core file. See ParseCore.
func LoadCore(path string) (*Core, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{ReadError(path, err)} // "path: no such file", like every other problem
	}
	return ParseCore(path, data)
}

// ParseCore parses the core file data; name is used in messages. Absent
// keys take their defaults. The error, if any, is an Errors listing every
// problem; the Core is nil then.
func ParseCore(name string, data []byte) (*Core, error) {
	c, _, err := parseCore(name, data)
	return c, err
}

// parseCore is ParseCore that also returns the decoder (for the keys it
// asked for).
func parseCore(name string, data []byte) (*Core, *decoder, error) {
	d, t, err := parseTOML(name, data)
	if err != nil {
		return nil, nil, err
	}
	c := DefaultCore()
	c.File = name
	c.lines = d.lines
	t.setString("socket", &c.Socket, checkSocketPath)
	t.setString("socket_group", &c.SocketGroup, checkGroup)
	t.setString("state_dir", &c.StateDir, checkAbsDir)
	t.setString("cgroup_parent", &c.CgroupParent, checkCgroupPath)
	t.setCPUs("reserved_cpus", &c.ReservedCPUs, false)
	t.setSize("reserved_memory", &c.ReservedMemory)
	setEnum(t, "pager", &c.Pager, PagerLocal, PagerCentral)
	t.setInt("fault_around", &c.FaultAround, 1, MaxFaultAround)
	t.setDuration("orphan_grace", &c.OrphanGrace)
	t.setDuration("rejoin_grace", &c.RejoinGrace)
	setEnum(t, "log_level", &c.LogLevel, logLevels...)
	parseRebalance(t, c)
	for _, dt := range t.tables("dataspace") {
		c.Dataspaces = append(c.Dataspaces, decodeDataspace(dt))
	}
	checkUniqueNames(d, "dataspace", c.Dataspaces)
	t.done()
	if err := d.errs.asError(); err != nil {
		return nil, d, err
	}
	return c, d, nil
}

// Dataspace returns the core-owned dataspace with the given name.
func (c *Core) Dataspace(name string) (*Dataspace, bool) {
	for i := range c.Dataspaces {
		if c.Dataspaces[i].Name == name {
			return &c.Dataspaces[i], true
		}
	}
	return nil, false
}

func checkGroup(s string) string {
	if s == "" || strings.ContainsAny(s, ":/\n\x00 ") {
		return fmt.Sprintf("bad group %q: give a group name or numeric id", s)
	}
	return ""
}

// checkCgroupPath accepts a relative cgroup path of plain names ("vcored",
// "system.slice/vcored").
func checkCgroupPath(s string) string {
	if s == "" || strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/") {
		return fmt.Sprintf("bad cgroup path %q: give a relative path such as \"vcored\"", s)
	}
	for part := range strings.SplitSeq(s, "/") {
		if part == "" || part == "." || part == ".." || !cgroupName.MatchString(part) {
			return fmt.Sprintf("bad cgroup path %q: component %q is not a plain name", s, part)
		}
	}
	return ""
}
