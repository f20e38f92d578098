package cgroups

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/cgroups/v3/cgroup2"
)

// v2 is a group in the unified hierarchy, driven by containerd's cgroup2
// package.
type v2 struct {
	mgr *cgroup2.Manager
}

func (m *Manager) createV2(path string, parts []string, r Resources) (*Group, error) {
	// Make the directories level by level (plain mkdir: cgroup2.NewManager
	// would also enable controllers, which needs the kernel's files of each
	// new level first — and lets a fake tree add them).
	for i := range parts {
		dir := filepath.Join(m.root, filepath.Join(parts[:i+1]...))
		err := os.Mkdir(dir, 0o755)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m.created != nil {
			m.created(dir)
		}
	}
	mgr, err := cgroup2.Load("/"+path, cgroup2.WithMountpoint(m.root))
	if err != nil {
		return nil, err
	}
	// "+cpuset +memory +pids" into the subtree_control of the root and of
	// every ancestor of the group (not the group itself: a v2 cgroup with
	// controllers enabled for children cannot hold processes).
	if len(m.v2Controllers) > 0 {
		if err := mgr.ToggleControllers(m.v2Controllers, cgroup2.Enable); err != nil {
			return nil, err
		}
	}
	g := &v2{mgr: mgr}
	if err := g.update(r); err != nil {
		return nil, err
	}
	return &Group{m: m, path: path, impl: g}, nil
}

func (m *Manager) loadV2(path string) (*Group, error) {
	mgr, err := cgroup2.Load("/"+path, cgroup2.WithMountpoint(m.root))
	if err != nil {
		return nil, err
	}
	return &Group{m: m, path: path, impl: &v2{mgr: mgr}}, nil
}

// v2Resources converts r for containerd. Zero fields are left out (a zero
// memory limit is cleared by Group.Update itself).
func v2Resources(r Resources) *cgroup2.Resources {
	out := &cgroup2.Resources{}
	if !r.CPUs.IsEmpty() || !r.Mems.IsEmpty() {
		out.CPU = &cgroup2.CPU{}
		if !r.CPUs.IsEmpty() {
			out.CPU.Cpus = r.CPUs.String()
		}
		if !r.Mems.IsEmpty() {
			out.CPU.Mems = r.Mems.String()
		}
	}
	if r.MemoryLimit > 0 {
		limit := int64(r.MemoryLimit)
		out.Memory = &cgroup2.Memory{Max: &limit}
	}
	if r.PidsMax != 0 {
		// containerd writes "max" for a negative Max.
		out.Pids = &cgroup2.Pids{Max: r.PidsMax}
	}
	return out
}

func (g *v2) update(r Resources) error {
	return g.mgr.Update(v2Resources(r))
}

func (g *v2) addProc(pid int) error {
	return g.mgr.AddProc(uint64(pid))
}

func (g *v2) procs() ([]int, error) {
	ps, err := g.mgr.Procs(true)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = int(p)
	}
	return out, nil
}
