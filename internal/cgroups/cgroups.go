// Package cgroups is vcored's one adapter over github.com/containerd/cgroups/v3
// (the only package that imports it). It hides cgroup v1 and v2 behind one
// small vocabulary: a Manager rooted at the cgroup mount, Groups addressed by
// a relative path ("vcored/node0/toucher"), Resources (cpuset CPUs and mems, a
// memory limit) and Stats.
//
// The host mode is probed once. On a v1 or hybrid host (this dev machine:
// cpuset, memory and pids on v1 under /sys/fs/cgroup/<controller>) a group is
// one directory per controller hierarchy, and joining it means writing the pid
// into each hierarchy's cgroup.procs. On a unified (v2) host a group is one
// directory, and cpuset, memory and pids are enabled in every ancestor's
// cgroup.subtree_control.
//
// containerd's cgroup1 and cgroup2 packages do the creating, resource writing,
// process adding and listing. Plain file operations are used where they lack
// something, and each such place says why: bottom-up removal of a whole
// subtree, removing a v2 memory limit ("max"), reading the few stats we need
// without the full metrics of every controller, and the effective cpuset.
package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	cgroupsv3 "github.com/containerd/cgroups/v3"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// DefaultRoot is where the kernel's cgroup file systems are mounted.
const DefaultRoot = "/sys/fs/cgroup"

// Host cgroup modes, as Mode returns them.
const (
	ModeV1     = "v1"     // legacy: every controller on a v1 hierarchy
	ModeHybrid = "hybrid" // v1 controllers plus a (mostly empty) v2 mount at <root>/unified; vcored uses v1
	ModeV2     = "v2"     // unified: one cgroup2 hierarchy
)

// v1Controllers are the v1 hierarchies a group lives in. cpu is left out on
// purpose: vcored sets no CPU shares or quotas, only cpusets.
var v1Controllers = []string{"cpuset", "memory", "pids"}

// v2Controllers are enabled in the subtree_control of every ancestor of a group.
var v2Controllers = []string{"cpuset", "memory", "pids"}

// Sentinel errors. Errors returned by this package wrap them (or an errno /
// fs error) together with the path involved.
var (
	// ErrUnavailable: no usable cgroup mount (or a controller vcored needs is missing).
	ErrUnavailable = errors.New("cgroups: unavailable")
	// ErrNotExist: the group does not exist (also Is fs.ErrNotExist).
	ErrNotExist = fmt.Errorf("cgroups: group does not exist: %w", fs.ErrNotExist)
	// ErrBadPath: a group path that is empty, absolute or escapes the root.
	ErrBadPath = errors.New("cgroups: bad group path")
	// ErrLeftover: Delete could not remove every directory of the subtree.
	ErrLeftover = errors.New("cgroups: cgroup directory left over")
)

var (
	hostModeOnce sync.Once
	hostMode     string
)

// HostMode returns the cgroup mode of this host ("v1", "hybrid", "v2"), or ""
// when no cgroup file system is mounted at DefaultRoot. It is probed once
// (containerd's cgroups.Mode, itself cached).
func HostMode() string {
	hostModeOnce.Do(func() {
		switch cgroupsv3.Mode() {
		case cgroupsv3.Legacy:
			hostMode = ModeV1
		case cgroupsv3.Hybrid:
			hostMode = ModeHybrid
		case cgroupsv3.Unified:
			hostMode = ModeV2
		}
	})
	return hostMode
}

// Options configure a Manager. The zero value manages the host's cgroups.
type Options struct {
	// Root is the cgroup mount point (default DefaultRoot). Tests point it at
	// a fake tree in a temporary directory.
	Root string
	// Mode is "v1", "hybrid" or "v2"; empty means HostMode(). Required with a
	// non-default Root.
	Mode string
	// V2Controllers are, on v2, the controllers required in the root's
	// cgroup.controllers and enabled in every ancestor's subtree_control; nil
	// means cpuset, memory and pids. (Tests on a hybrid host pass an empty
	// list to drive the controller-less v2 mount at <root>/unified.)
	V2Controllers []string
}

// Manager creates and loads groups under one cgroup root. It holds no state
// besides its root and mode, so it is safe for concurrent use.
type Manager struct {
	root          string
	mode          string
	v2Controllers []string
	// created, when set (tests only), is called with each directory this
	// package creates, so a fake tree can add the files the kernel would.
	created func(dir string)
}

// New returns a Manager for opts. It checks that the controllers vcored
// needs are there: on v1/hybrid the cpuset, memory and pids hierarchies; on
// v2 the same names in the root's cgroup.controllers. A missing one is a
// *linux.UnsupportedError naming it (Is linux.ErrNotSupported and
// ErrUnavailable).
func New(opts Options) (*Manager, error) {
	m := &Manager{root: opts.Root, mode: opts.Mode, v2Controllers: opts.V2Controllers}
	if m.v2Controllers == nil {
		m.v2Controllers = v2Controllers
	}
	if m.root == "" {
		m.root = DefaultRoot
	}
	if m.mode == "" {
		if m.root != DefaultRoot {
			return nil, fmt.Errorf("cgroups: root %s: a custom root needs an explicit mode: %w", m.root, ErrUnavailable)
		}
		m.mode = HostMode()
	}
	switch m.mode {
	case ModeV1, ModeHybrid:
		for _, c := range v1Controllers {
			if _, err := os.Stat(filepath.Join(m.root, c, "cgroup.procs")); err != nil {
				return nil, unavailable(fmt.Sprintf("cgroup v1 controller %s (%s)", c, filepath.Join(m.root, c)), err)
			}
		}
	case ModeV2:
		path := filepath.Join(m.root, "cgroup.controllers")
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, unavailable("cgroup v2 ("+path+")", err)
		}
		have := strings.Fields(string(b))
		for _, c := range m.v2Controllers {
			if !slices.Contains(have, c) {
				return nil, unavailable(fmt.Sprintf("cgroup v2 controller %s (not in %s)", c, path), nil)
			}
		}
	case "":
		return nil, fmt.Errorf("cgroups: no cgroup file system at %s: %w", m.root, ErrUnavailable)
	default:
		return nil, fmt.Errorf("cgroups: unknown mode %q: %w", m.mode, ErrUnavailable)
	}
	return m, nil
}

// unsupported is an UnsupportedError that also Is ErrUnavailable.
type unsupported struct {
	linux.UnsupportedError
	cause error
}

func (u *unsupported) Is(target error) bool {
	return target == ErrUnavailable || target == linux.ErrNotSupported
}
func (u *unsupported) Unwrap() error { return u.cause }
func (u *unsupported) Error() string {
	if u.cause != nil {
		return u.UnsupportedError.Error() + ": " + u.cause.Error()
	}
	return u.UnsupportedError.Error()
}

func unavailable(feature string, cause error) error {
	return &unsupported{UnsupportedError: linux.UnsupportedError{Feature: feature}, cause: cause}
}

// Mode returns "v1", "hybrid" or "v2". On "hybrid", groups live in the v1
// hierarchies.
func (m *Manager) Mode() string { return m.mode }

// Root returns the cgroup mount point the manager works under.
func (m *Manager) Root() string { return m.root }

// unified reports whether groups live in one cgroup2 hierarchy.
func (m *Manager) unified() bool { return m.mode == ModeV2 }

// Resources are what vcored sets on a group. Zero fields are left alone on
// Create (an empty cpuset is inherited from the parent; no memory limit; the
// pids limit the kernel starts with, "max").
type Resources struct {
	CPUs        hw.CPUSet  // cpuset.cpus
	Mems        hw.NodeSet // cpuset.mems
	MemoryLimit hw.Bytes   // memory.limit_in_bytes (v1) / memory.max (v2); 0 = none
	// PidsMax is pids.max (v1 and v2): the most tasks (processes and
	// threads) the group's subtree may hold. 0 leaves it alone, also on
	// Update; PidsUnlimited writes "max".
	PidsMax int64
}

// PidsUnlimited as Resources.PidsMax sets pids.max to "max".
const PidsUnlimited = -1

// Stats is a snapshot of a group's usage and settings.
type Stats struct {
	MemoryUsage hw.Bytes   // memory.usage_in_bytes (v1) / memory.current (v2)
	MemoryLimit hw.Bytes   // 0 = no limit
	CPUs        hw.CPUSet  // effective cpuset CPUs
	Mems        hw.NodeSet // effective cpuset mems
	Pids        int        // processes in the group's subtree
}

// cleanPath validates a relative group path and returns it cleaned.
func cleanPath(path string) (string, error) {
	p := filepath.Clean(path)
	if path == "" || filepath.IsAbs(path) || p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("%w: %q (want a relative path like \"vcored/node0/sub\")", ErrBadPath, path)
	}
	return p, nil
}

// dirs returns the directories of path: one per v1 controller hierarchy, or
// the one v2 directory.
func (m *Manager) dirs(path string) []string {
	if m.unified() {
		return []string{filepath.Join(m.root, path)}
	}
	out := make([]string, 0, len(v1Controllers))
	for _, c := range v1Controllers {
		out = append(out, filepath.Join(m.root, c, path))
	}
	return out
}

// ProcsFiles returns the absolute cgroup.procs files a process writes its
// pid into to join the group at path: one per v1 controller hierarchy, or
// one on v2. This is what `vcored exec-in-cgroup --procs` takes.
func (m *Manager) ProcsFiles(path string) ([]string, error) {
	p, err := cleanPath(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range m.dirs(p) {
		out = append(out, filepath.Join(d, "cgroup.procs"))
	}
	return out, nil
}

// Create creates the group at path (and any missing parents) and applies r.
// Parents created on the way get no settings of their own: on v1 cpuset
// copies cpus and mems down from the parent at each level (a cpuset with
// empty cpus or mems cannot hold tasks); on v2 an empty cpuset inherits and
// cpuset, memory and pids are enabled in every ancestor's subtree_control.
// Creating a group that already exists applies r to it. On error, the
// directories this call created are removed again.
func (m *Manager) Create(path string, r Resources) (*Group, error) {
	p, err := cleanPath(path)
	if err != nil {
		return nil, err
	}
	// The first level that does not exist yet: on failure, remove from there.
	first := ""
	parts := strings.Split(p, "/")
	for i := range parts {
		sub := strings.Join(parts[:i+1], "/")
		if _, err := os.Stat(m.dirs(sub)[0]); errors.Is(err, fs.ErrNotExist) {
			first = sub
			break
		}
	}
	var g *Group
	if m.unified() {
		g, err = m.createV2(p, parts, r)
	} else {
		g, err = m.createV1(p, parts, r)
	}
	if err != nil {
		if first != "" {
			_ = m.removeTree(first) // best effort; the error below names the cause
		}
		return nil, fmt.Errorf("cgroups: create %s: %w", p, err)
	}
	return g, nil
}

// Load returns the existing group at path. A group missing from any of its
// hierarchies gives an error Is ErrNotExist.
func (m *Manager) Load(path string) (*Group, error) {
	p, err := cleanPath(path)
	if err != nil {
		return nil, err
	}
	for _, d := range m.dirs(p) {
		if _, err := os.Stat(d); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("cgroups: load %s: %w (%s)", p, ErrNotExist, d)
			}
			return nil, fmt.Errorf("cgroups: load %s: %w", p, err)
		}
	}
	if m.unified() {
		return m.loadV2(p)
	}
	return m.loadV1(p)
}

// Exists reports whether the group at path exists (in its first hierarchy).
func (m *Manager) Exists(path string) bool {
	p, err := cleanPath(path)
	if err != nil {
		return false
	}
	_, err = os.Stat(m.dirs(p)[0])
	return err == nil
}

// Group is one cgroup (on v1: the same path in each controller hierarchy).
// Its methods are safe for concurrent use as far as the kernel's files are.
type Group struct {
	m    *Manager
	path string
	impl impl
}

// impl is what differs between v1 and v2.
type impl interface {
	update(r Resources) error
	addProc(pid int) error
	procs() ([]int, error)
}

// Path returns the group's path relative to the cgroup root.
func (g *Group) Path() string { return g.path }

// Mode returns the manager's mode ("v1", "hybrid", "v2").
func (g *Group) Mode() string { return g.m.mode }

// Dirs returns the group's absolute directories: one per v1 controller
// hierarchy, or the one v2 directory.
func (g *Group) Dirs() []string { return g.m.dirs(g.path) }

// UnifiedDir returns the group's cgroup2 directory and true on a v2 host —
// the directory a process can be cloned into (CLONE_INTO_CGROUP) — or "",
// false on v1/hybrid.
func (g *Group) UnifiedDir() (string, bool) {
	if !g.m.unified() {
		return "", false
	}
	return g.m.dirs(g.path)[0], true
}

// ProcsFiles returns the cgroup.procs files to write a pid into to join the
// group (see Manager.ProcsFiles).
func (g *Group) ProcsFiles() []string {
	f, _ := g.m.ProcsFiles(g.path) // the path was validated when g was made
	return f
}

// Update applies r to the group. Unlike Create, a zero MemoryLimit removes
// the limit; empty CPUs or Mems are left as they are.
func (g *Group) Update(r Resources) error {
	if err := g.impl.update(r); err != nil {
		return fmt.Errorf("cgroups: update %s: %w", g.path, err)
	}
	if err := g.m.unlimitPidsV1(g.path, r); err != nil {
		return fmt.Errorf("cgroups: update %s: %w", g.path, err)
	}
	if r.MemoryLimit == 0 {
		if err := g.clearMemoryLimit(); err != nil {
			return fmt.Errorf("cgroups: update %s: %w", g.path, err)
		}
	}
	return nil
}

// AddProc moves process pid (all its threads) into the group, in every
// hierarchy.
func (g *Group) AddProc(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("cgroups: add pid %d to %s: %w", pid, g.path, linux.EINVAL)
	}
	if err := g.impl.addProc(pid); err != nil {
		return fmt.Errorf("cgroups: add pid %d to %s: %w", pid, g.path, err)
	}
	return nil
}

// Procs returns the pids of every process in the group and its descendants
// (on v1, in any of the group's hierarchies), sorted, without duplicates.
func (g *Group) Procs() ([]int, error) {
	pids, err := g.impl.procs()
	if err != nil {
		return nil, fmt.Errorf("cgroups: list processes of %s: %w", g.path, err)
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}

// Kill sends sig to every process in the group's subtree. Processes that
// exit meanwhile are not an error. A process forking at the same moment may
// escape one call; callers that must empty the group repeat until Procs is
// empty (supervise.Sub.Stop does).
func (g *Group) Kill(sig syscall.Signal) error {
	pids, err := g.Procs()
	if err != nil {
		return err
	}
	var errs []error
	for _, pid := range pids {
		if err := linux.Kill(pid, sig); err != nil && !errors.Is(err, linux.ESRCH) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cgroups: kill %s: %w", g.path, err)
	}
	return nil
}

// Delete removes the group and every group below it, bottom-up, in every
// hierarchy. Processes must be gone first (the kernel refuses to remove a
// populated cgroup). A group that is already gone is not an error; a
// directory that cannot be removed is an error Is ErrLeftover naming it.
func (g *Group) Delete() error {
	return g.m.removeTree(g.path)
}

// Stats reads the group's memory usage and limit, effective cpuset and
// process count. Plain file reads: containerd's Stat collects every metric
// of every controller (and fails on the first file a kernel lacks) when
// vcored needs these few numbers.
func (g *Group) Stats() (Stats, error) {
	var s Stats
	var err error
	wrap := func(err error) (Stats, error) { return Stats{}, fmt.Errorf("cgroups: stats of %s: %w", g.path, err) }
	var cpusFile, memsFile, usageFile, limitFile string
	if g.m.unified() {
		d := g.m.dirs(g.path)[0]
		cpusFile, memsFile = filepath.Join(d, "cpuset.cpus.effective"), filepath.Join(d, "cpuset.mems.effective")
		usageFile, limitFile = filepath.Join(d, "memory.current"), filepath.Join(d, "memory.max")
	} else {
		cpuset, memory := g.m.dirs(g.path)[0], g.m.dirs(g.path)[1]
		cpusFile, memsFile = filepath.Join(cpuset, "cpuset.effective_cpus"), filepath.Join(cpuset, "cpuset.effective_mems")
		usageFile, limitFile = filepath.Join(memory, "memory.usage_in_bytes"), filepath.Join(memory, "memory.limit_in_bytes")
	}
	if s.CPUs, err = readSet[hw.CPU](cpusFile); err != nil {
		return wrap(err)
	}
	if s.Mems, err = readSet[hw.Node](memsFile); err != nil {
		return wrap(err)
	}
	if s.MemoryUsage, err = readBytes(usageFile); err != nil {
		return wrap(err)
	}
	if s.MemoryLimit, err = readBytes(limitFile); err != nil {
		return wrap(err)
	}
	// v1 reports "no limit" as PAGE_COUNTER_MAX in bytes (about 2^63 rounded
	// down to a page); v2 as "max".
	if s.MemoryLimit >= 1<<62 {
		s.MemoryLimit = 0
	}
	pids, err := g.Procs()
	if err != nil {
		return Stats{}, err
	}
	s.Pids = len(pids)
	return s, nil
}

// clearMemoryLimit removes the memory limit. Plain write: containerd's
// cgroup2 writes memory.max as an integer and cannot express "max"; on v1
// -1 means unlimited.
func (g *Group) clearMemoryLimit() error {
	if g.m.unified() {
		return writeFile(filepath.Join(g.m.dirs(g.path)[0], "memory.max"), "max")
	}
	return writeFile(filepath.Join(g.m.dirs(g.path)[1], "memory.limit_in_bytes"), "-1")
}

// unlimitPidsV1 writes "max" to a v1 group's pids.max when r asks for no
// limit. Plain write: containerd's cgroup1 writes only positive limits (its
// cgroup2 writes "max" for a negative one itself).
func (m *Manager) unlimitPidsV1(path string, r Resources) error {
	if m.unified() || r.PidsMax >= 0 {
		return nil
	}
	return writeFile(filepath.Join(m.dirs(path)[2], "pids.max"), "max")
}

// removeTree removes path and its descendants bottom-up in every hierarchy.
// Plain rmdir: containerd's Delete removes one directory per hierarchy (with
// os.RemoveAll, which on cgroupfs cannot remove a tree either).
func (m *Manager) removeTree(path string) error {
	var left []string
	var errs []error
	for _, root := range m.dirs(path) {
		var dirs []string
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil // already gone, or removed by someone else meanwhile
				}
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
		// WalkDir lists parents before children: remove in reverse order. A
		// parent of a directory that stayed cannot go either; it is not tried.
		var stayed []string
		for i := len(dirs) - 1; i >= 0; i-- {
			d := dirs[i]
			if slices.ContainsFunc(stayed, func(s string) bool { return strings.HasPrefix(s, d+"/") }) {
				stayed = append(stayed, d)
				continue
			}
			if err := rmdir(d); err != nil {
				stayed = append(stayed, d)
				left = append(left, d)
				errs = append(errs, err)
			}
		}
	}
	if len(left) > 0 || len(errs) > 0 {
		return fmt.Errorf("cgroups: delete %s: %w: %s: %w", path, ErrLeftover, strings.Join(left, ", "), errors.Join(errs...))
	}
	return nil
}

// rmdir removes one cgroup directory. A cgroup whose last process has just
// exited can stay busy for a moment (the exiting task is still attached), so
// EBUSY is retried briefly — but not when processes are listed in it: then
// it is populated and the error says by whom.
func rmdir(dir string) error {
	var err error
	for i := 0; i < 40; i++ {
		err = os.Remove(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, linux.EBUSY) {
			return err
		}
		if b, rerr := os.ReadFile(filepath.Join(dir, "cgroup.procs")); rerr == nil && len(strings.TrimSpace(string(b))) > 0 {
			return fmt.Errorf("%w (processes %s)", err, strings.Join(strings.Fields(string(b)), " "))
		}
		sleep(i)
	}
	return err
}

// writeFile writes one value to an existing cgroup file.
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", value, path, err)
	}
	return nil
}

func readSet[T hw.ID](path string) (hw.Set[T], error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return hw.Set[T]{}, err
	}
	s, err := hw.Parse[T](string(b))
	if err != nil {
		return hw.Set[T]{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func readBytes(path string) (hw.Bytes, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v := strings.TrimSpace(string(b))
	if v == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return hw.Bytes(n), nil
}
