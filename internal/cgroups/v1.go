package cgroups

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// v1 is a group on cgroup v1 hierarchies (legacy or hybrid hosts), driven by
// containerd's cgroup1 package restricted to vcored's controllers.
type v1 struct {
	cg cgroup1.Cgroup
}

// hierarchy limits containerd to the v1 controllers vcored uses, under the
// manager's root. cgroup1.Default would take every mounted controller,
// including name=systemd, and always /sys/fs/cgroup.
func (m *Manager) hierarchy() ([]cgroup1.Subsystem, error) {
	return []cgroup1.Subsystem{
		cgroup1.NewCpuset(m.root),
		cgroup1.NewMemory(m.root),
		cgroup1.NewPids(m.root),
	}, nil
}

// v1Opts are the containerd options every v1 group is made with: our
// hierarchy, and no devices-controller requirement (containerd's default
// InitCheck insists on it).
func (m *Manager) v1Opts() []cgroup1.InitOpts {
	return []cgroup1.InitOpts{cgroup1.WithHierarchy(m.hierarchy), func(c *cgroup1.InitConfig) error {
		c.InitCheck = cgroup1.AllowAny
		return nil
	}}
}

func (m *Manager) createV1(path string, parts []string, r Resources) (*Group, error) {
	// containerd's cpuset Create walks up the path and copies cpus and mems
	// down into every level whose files are empty, then writes ours; memory
	// and pids just make the directories.
	cg, err := cgroup1.New(cgroup1.StaticPath("/"+path), v1Resources(r), m.v1Opts()...)
	if err != nil {
		return nil, err
	}
	if m.created != nil {
		for _, root := range m.dirs("") {
			for i := range parts {
				m.created(filepath.Join(root, filepath.Join(parts[:i+1]...)))
			}
		}
	}
	if err := m.unlimitPidsV1(path, r); err != nil {
		return nil, err
	}
	return &Group{m: m, path: path, impl: &v1{cg: cg}}, nil
}

func (m *Manager) loadV1(path string) (*Group, error) {
	cg, err := cgroup1.Load(cgroup1.StaticPath("/"+path), m.v1Opts()...)
	if err != nil {
		return nil, fmt.Errorf("cgroups: load %s: %w", path, err)
	}
	return &Group{m: m, path: path, impl: &v1{cg: cg}}, nil
}

// v1Resources converts r for containerd. Zero fields are left out (a zero
// memory limit is cleared by Group.Update itself, an unlimited pids.max
// written by unlimitPidsV1).
func v1Resources(r Resources) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if !r.CPUs.IsEmpty() || !r.Mems.IsEmpty() {
		out.CPU = &specs.LinuxCPU{}
		if !r.CPUs.IsEmpty() {
			out.CPU.Cpus = r.CPUs.String()
		}
		if !r.Mems.IsEmpty() {
			out.CPU.Mems = r.Mems.String()
		}
	}
	if r.MemoryLimit > 0 {
		limit := int64(r.MemoryLimit)
		out.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	if r.PidsMax > 0 {
		limit := r.PidsMax
		out.Pids = &specs.LinuxPids{Limit: &limit}
	}
	return out
}

func (g *v1) update(r Resources) error {
	return g.cg.Update(v1Resources(r))
}

func (g *v1) addProc(pid int) error {
	return g.cg.AddProc(uint64(pid))
}

// procs lists the processes of the subtree in every hierarchy (a process
// may have joined only some of them).
func (g *v1) procs() ([]int, error) {
	var out []int
	for _, s := range g.cg.Subsystems() {
		ps, err := g.cg.Processes(s.Name(), true)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			out = append(out, p.Pid)
		}
	}
	return out, nil
}

// sleep backs off between retries of a busy rmdir: 1ms, 2ms, ... capped at 20ms.
func sleep(attempt int) {
	d := time.Duration(attempt+1) * time.Millisecond
	if d > 20*time.Millisecond {
		d = 20 * time.Millisecond
	}
	time.Sleep(d)
}
