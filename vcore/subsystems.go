package vcore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/vcored/vcored/ramalloc"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync/atomic"
	"time"

	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/statefile"
	"github.com/vcored/vcored/internal/supervise"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/policy"
)

// subsystem is one configured subsystem: its cgroup, its supervisor and its
// RAM quota.
type subsystem struct {
	cfg      config.Subsystem
	cgroup   string                    // relative path: <partition>/<name>
	sources  map[string]content.Source // local dataspaces by name
	cpus     hw.CPUSet                 // assigned by policy.AssignSubsystems
	quota    *ramalloc.Quota
	conns    atomic.Int64 // live worker connections (capped by max_connections)
	refusing atomic.Int64 // connections over max_connections being refused
	limLog   atomic.Int64 // unix nanoseconds of the last "over a limit" log line

	// Set while starting (before the socket serves anyone), then read-only.
	group        *cgroups.Group
	sup          *supervise.Sub
	adopted      bool // found running at start and adopted
	prevRestarts int  // restarts made by earlier vcores (state file)
}

// source returns the content of local dataspace name, nil if s has none
// (s may be nil).
func (s *subsystem) source(name string) content.Source {
	if s == nil {
		return nil
	}
	return s.sources[name]
}

// localDataspace returns the declaration of local dataspace name.
func (s *subsystem) localDataspace(name string) (config.Dataspace, bool) {
	for _, d := range s.cfg.Local {
		if d.Name == name {
			return d, true
		}
	}
	return config.Dataspace{}, false
}

// maxConnections and maxRegions are the subsystem's caps (the defaults for
// a configuration not made by the parser).
func (s *subsystem) maxConnections() int {
	return cmp.Or(s.cfg.MaxConnections, config.DefaultMaxConnections)
}

func (s *subsystem) maxRegions() int { return cmp.Or(s.cfg.MaxRegions, config.DefaultMaxRegions) }

// pidsMax is the pids.max to set on the subsystem's cgroup.
func (s *subsystem) pidsMax() int64 {
	if s.cfg.PidsMax == 0 {
		return cgroups.PidsUnlimited
	}
	return int64(s.cfg.PidsMax)
}

// regionsLocked counts the regions registered for s's workers. Called with
// v.mu held.
func (v *VCore) regionsLocked(s *subsystem) int {
	n := 0
	for _, u := range v.uffds {
		if u.sub == s {
			n += len(u.regions)
		}
	}
	return n
}

// limitLogOK lets one "over a limit" log line per second through for s (a
// worker hammering a cap must not flood the log).
func (s *subsystem) limitLogOK() bool {
	now := time.Now().UnixNano()
	last := s.limLog.Load()
	return now-last >= int64(time.Second) && s.limLog.CompareAndSwap(last, now)
}

// refuseOverLimit answers a worker connection over max_connections with
// Error{limit}. The refusal answers the worker's Hello, awaited 2 seconds:
// sent before it, the Error would be lost to a worker whose Hello then meets
// a closed socket. Only a few refusals of a subsystem wait at once; beyond
// them the Error is sent at once.
func refuseOverLimit(sub *subsystem, c *wire.Conn, msg string) {
	if sub.refusing.Add(1) <= maxRefusing {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if f, err := c.Recv(); err == nil {
			f.CloseFDs()
		}
	}
	sub.refusing.Add(-1)
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_ = c.SendMsg(&wire.Error{Code: wire.CodeLimit, Msg: msg})
}

// maxRefusing bounds the over-limit connections of one subsystem that wait
// for their Hello before being refused.
const maxRefusing = 8

func (v *VCore) subByName(name string) *subsystem {
	if s := v.movedInByName(name); s != nil {
		return s
	}
	for _, s := range v.subs {
		if s.cfg.Name == name {
			return s
		}
	}
	return nil
}

// startSubsystems creates each subsystem's cgroup under the partition and
// starts its command there — or adopts the processes a previous vcore left
// running in it.
func (v *VCore) startSubsystems(ctx context.Context) error {
	reqs := make([]policy.Request, len(v.subs))
	for i, s := range v.subs {
		reqs[i] = policy.Request{Count: s.cfg.CPUs.Count, List: s.cfg.CPUs.List}
	}
	cpus, err := policy.AssignSubsystems(v.m, v.grant.CPUs, reqs)
	if err != nil {
		return fmt.Errorf("%w: subsystem CPUs in the granted partition %s: %w", ErrConfig, v.grant.CPUs, err)
	}
	if len(v.subs) == 0 {
		return nil
	}
	var prev stateFile
	if _, err := statefile.Read(v.statePath(), &prev); err != nil {
		v.log.Warn("ignoring unreadable state file", "err", err)
		prev = stateFile{}
	}
	logs := filepath.Join(v.cfg.StateDir, "logs")
	if err := os.MkdirAll(logs, 0o750); err != nil {
		return fmt.Errorf("vcore: %w", err)
	}
	for i, s := range v.subs {
		s.cpus = cpus[i]
		if v.movedAway(s.cfg.Name) {
			v.log.Info("subsystem runs on another node (moved; core's ledger says so): not started here", "subsystem", s.cfg.Name)
			continue
		}
		for _, p := range prev.Subsystems {
			if p.Name == s.cfg.Name && p.Cgroup == s.cgroup {
				s.prevRestarts = p.Restarts
			}
		}
		if err := v.startSubsystem(ctx, s, filepath.Join(logs, s.cfg.Name+".log")); err != nil {
			return err
		}
	}
	v.writeState()
	return nil
}

func (v *VCore) startSubsystem(ctx context.Context, s *subsystem, logPath string) error {
	res := cgroups.Resources{CPUs: s.cpus, Mems: v.grant.Mems, MemoryLimit: s.cfg.Memory, PidsMax: s.pidsMax()}
	spec := supervise.Spec{
		Name:           s.cfg.Name,
		Command:        s.cfg.Command,
		Env:            v.subsystemEnv(s),
		Shim:           v.opts.Shim,
		LogPath:        logPath,
		Restart:        supervise.Policy(s.cfg.Restart),
		MaxRestarts:    s.cfg.MaxRestarts,
		BackoffInitial: s.cfg.BackoffInitial,
		BackoffMax:     s.cfg.BackoffMax,
		StopGrace:      v.cfg.StopGrace,
	}
	if s.cfg.MaxRestarts == 0 {
		// supervise reads 0 as its default; the file means "no restarts".
		spec.Restart = supervise.Never
	}
	log := v.log.With("subsystem", s.cfg.Name)
	if v.cg.Exists(s.cgroup) {
		g, err := v.cg.Load(s.cgroup)
		if err != nil {
			return fmt.Errorf("vcore: subsystem %s: %w", s.cfg.Name, err)
		}
		s.group, spec.Group = g, g
		pids, err := g.Procs()
		if err != nil {
			return fmt.Errorf("vcore: subsystem %s: %w", s.cfg.Name, err)
		}
		if len(pids) > 0 {
			// A previous vcore of this partition left it running: watch it
			// instead of starting a duplicate. Its cgroup's settings are
			// left as they are.
			if st, err := g.Stats(); err == nil && (!st.CPUs.Equal(s.cpus) || st.MemoryLimit != s.cfg.Memory) {
				log.Warn("adopted subsystem's cgroup differs from the configuration; leaving it alone",
					"cpus", st.CPUs, "want_cpus", s.cpus, "memory_limit", st.MemoryLimit, "want_memory", s.cfg.Memory)
			}
			if s.sup, err = supervise.Adopt(ctx, spec, pids, v.log); err != nil {
				return fmt.Errorf("vcore: adopt subsystem %s: %w", s.cfg.Name, err)
			}
			s.adopted = true
			log.Info("adopted running subsystem", "pids", pids, "cgroup", s.cgroup)
			return nil
		}
		if err := g.Update(res); err != nil {
			return fmt.Errorf("vcore: subsystem %s: %w", s.cfg.Name, err)
		}
	} else {
		g, err := v.cg.Create(s.cgroup, res)
		if err != nil {
			return fmt.Errorf("vcore: subsystem %s: %w", s.cfg.Name, err)
		}
		s.group, spec.Group = g, g
	}
	sup, err := supervise.Start(ctx, spec, v.log)
	if err != nil {
		return fmt.Errorf("vcore: start subsystem %s: %w", s.cfg.Name, err)
	}
	s.sup = sup
	log.Info("subsystem started", "cpus", s.cpus, "mems", v.grant.Mems, "memory", s.cfg.Memory, "cgroup", s.cgroup)
	return nil
}

// subsystemEnv is the environment vcore adds for a subsystem.
func (v *VCore) subsystemEnv(s *subsystem) []string {
	env := []string{
		"VCORE_SOCKET=" + v.cfg.Socket,
		fmt.Sprintf("VCORE_NODE=%d", v.cfg.Node),
		"VCORE_SUBSYSTEM=" + s.cfg.Name,
	}
	for _, k := range slices.Sorted(maps.Keys(s.cfg.Env)) {
		env = append(env, k+"="+s.cfg.Env[k])
	}
	return env
}

// stopSubsystem stops s's processes (SIGTERM, SIGKILL after stop_grace) and
// deletes its cgroup.
func (v *VCore) stopSubsystem(s *subsystem) {
	log := v.log.With("subsystem", s.cfg.Name)
	if s.sup != nil {
		ctx, cancel := context.WithTimeout(context.Background(), v.cfg.StopGrace+10*time.Second)
		err := s.sup.Stop(ctx)
		cancel()
		if err != nil {
			log.Error("stop subsystem", "err", err)
		}
	}
	if s.group != nil {
		if err := s.group.Delete(); err != nil {
			log.Error("delete subsystem cgroup", "err", err)
		}
	}
}

// subsystemStates describes the running subsystems for a re-registering
// Claim.
func (v *VCore) subsystemStates() []wire.SubsystemState {
	var out []wire.SubsystemState
	for _, s := range v.subs {
		if s.sup == nil {
			continue
		}
		out = append(out, wire.SubsystemState{
			Name:   s.cfg.Name,
			Cgroup: s.cgroup,
			Pids:   s.sup.Status().Pids,
			CPUs:   s.cpus,
			Memory: uint64(s.cfg.Memory),
		})
	}
	return out
}

// previousStates describes, for the first Claim, the subsystems a previous
// vcore of this partition left running (from its state file; only pids
// still alive). Nothing is created.
func (v *VCore) previousStates() []wire.SubsystemState {
	var prev stateFile
	if found, err := statefile.Read(v.statePath(), &prev); !found || err != nil {
		return nil
	}
	var out []wire.SubsystemState
	for _, s := range prev.Subsystems {
		var pids []int
		for _, pid := range s.Pids {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
				pids = append(pids, pid)
			}
		}
		if len(pids) > 0 {
			out = append(out, wire.SubsystemState{Name: s.Name, Cgroup: s.Cgroup, Pids: pids, CPUs: s.CPUs, Memory: s.Memory})
		}
	}
	return out
}

// stateFile is the vcore's small persistent state (<state_dir>/vcore.json):
// what a restarted vcore of the partition needs to continue the counts.
type stateFile struct {
	Node       int        `json:"node"`
	Pid        int        `json:"pid"`
	Cgroup     string     `json:"cgroup"`
	Subsystems []subState `json:"subsystems"`
}

// subState is one subsystem in the state file.
type subState struct {
	Name     string    `json:"name"`
	Cgroup   string    `json:"cgroup"`
	CPUs     hw.CPUSet `json:"cpus"`
	Memory   uint64    `json:"memory"`
	State    string    `json:"state"`
	Pids     []int     `json:"pids,omitempty"`
	Restarts int       `json:"restarts"`
	LastExit string    `json:"last_exit,omitempty"`
	Adopted  bool      `json:"adopted,omitempty"`
}

// currentState builds the state file's content.
func (v *VCore) currentState() stateFile {
	st := stateFile{Node: int(v.cfg.Node), Pid: os.Getpid(), Cgroup: v.grant.Cgroup}
	for _, s := range v.subs {
		ss := subState{Name: s.cfg.Name, Cgroup: s.cgroup, CPUs: s.cpus, Memory: uint64(s.cfg.Memory), Restarts: s.prevRestarts, Adopted: s.adopted}
		if s.sup != nil {
			sts := s.sup.Status()
			ss.State, ss.Pids, ss.LastExit = string(sts.State), sts.Pids, sts.LastExit
			ss.Restarts += sts.Restarts
		}
		st.Subsystems = append(st.Subsystems, ss)
	}
	return st
}

// writeState writes the state file (errors are logged: the daemon runs on).
func (v *VCore) writeState() stateFile {
	st := v.currentState()
	if err := statefile.Write(v.statePath(), st); err != nil {
		v.log.Warn("write state file", "err", err)
	}
	return st
}

// reapLoop notices uffds the pager dropped (their worker exited) and keeps
// the state file current, until ctx ends.
func (v *VCore) reapLoop(ctx context.Context) {
	t := time.NewTicker(reapInterval)
	defer t.Stop()
	var last stateFile // the first tick writes the file again: processes started by the shim join their cgroup a moment after start
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		v.reap()
		if len(v.subs) == 0 {
			continue
		}
		v.mu.Lock()
		stopping := v.stopping
		v.mu.Unlock()
		if st := v.currentState(); !stopping && !reflect.DeepEqual(st, last) {
			last = v.writeState()
		}
	}
}

// reap forgets uffds the pager no longer holds: their quota is released and
// core is told.
func (v *VCore) reap() {
	v.mu.Lock()
	defer v.mu.Unlock()
	held := map[uint64]bool{}
	for _, u := range v.pgr.Uffds() {
		held[u.ID] = true
	}
	for id, u := range v.uffds {
		if !held[id] {
			v.log.Debug("worker gone: forgetting its uffd", "uffd", id, "pid", u.pid)
			v.dropUffdLocked(u, false)
		}
	}
}

// errStopping is returned for work refused during shutdown.
var errStopping = errors.New("vcore: stopping")
