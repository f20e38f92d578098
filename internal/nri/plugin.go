// Package nri is vcored's containerd NRI plugin (`vcored nri`): it places
// the containers of annotated pods on the vcores' partitions. It is the only
// package that imports github.com/containerd/nri.
//
// A pod annotated vcored.io/partition: "auto" or "node<N>" gets, for each
// container, exclusive CPUs of a vcore's partition (the container's CPU
// limit, rounded up; 1 without a limit), cpuset.mems = that node, and its
// memory limit accounted in the partition. The vcore picks the CPUs (policy)
// and keeps the registry (POST/DELETE /v1/external on its socket); the
// plugin keeps no state of its own, so a restart of the plugin loses
// nothing: Synchronize re-registers running containers and releases
// placements whose container is gone.
package nri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	nriapi "github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
)

// Annotations a pod carries (pod-level).
const (
	// AnnotationPartition selects placement: "auto" or "node<N>".
	AnnotationPartition = "vcored.io/partition"
	// AnnotationDataspaces declares local dataspaces for the pod's
	// containers' workers: "name=size[:pattern[:seed]]", comma-separated
	// (size in bytes or with K/M/G/KiB/MiB/GiB), e.g. "buf=16MiB:pattern:7".
	AnnotationDataspaces = "vcored.io/dataspaces"
	// AnnotationShared names core-owned dataspaces they may attach.
	AnnotationShared = "vcored.io/shared"
)

// Defaults.
const (
	DefaultNRISocket  = "/var/run/nri/nri.sock"
	DefaultCoreSocket = "/run/vcored/core.sock"
	// ContainerSocketDir is where the vcore socket's directory is mounted
	// inside a placed container (VCORE_SOCKET points into it).
	ContainerSocketDir = "/run/vcored"
	DefaultPluginName  = "vcored"
	DefaultPluginIdx   = "50"
	DefaultMemory      = 256 * hw.MiB
)

// Config configures the plugin.
type Config struct {
	// NRISocket is containerd's NRI socket.
	NRISocket string
	// CoreSocket is core's socket, asked for the running vcores
	// (GET /v1/vcores). VCores, if set, are used instead.
	CoreSocket string
	VCores     []string
	// PluginName and PluginIdx register the plugin with containerd.
	PluginName, PluginIdx string
	// DefaultMemory is the memory of a placed container without a limit.
	DefaultMemory hw.Bytes
	// SharedCPUs, if set, confines containers without the annotation to
	// these CPUs (the CPUs no partition holds); empty leaves them alone.
	SharedCPUs string
	// Log receives the plugin's log.
	Log *slog.Logger
}

// Plugin is the NRI plugin.
type Plugin struct {
	cfg Config
	log *slog.Logger

	mu     sync.Mutex
	vcores []string // last known vcore sockets (kept while core is away)
}

// New returns a plugin; Run connects it.
func New(cfg Config) *Plugin {
	if cfg.NRISocket == "" {
		cfg.NRISocket = DefaultNRISocket
	}
	if cfg.CoreSocket == "" {
		cfg.CoreSocket = DefaultCoreSocket
	}
	if cfg.PluginName == "" {
		cfg.PluginName = DefaultPluginName
	}
	if cfg.PluginIdx == "" {
		cfg.PluginIdx = DefaultPluginIdx
	}
	if cfg.DefaultMemory == 0 {
		cfg.DefaultMemory = DefaultMemory
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{cfg: cfg, log: cfg.Log}
}

// Run registers with containerd and serves it until ctx ends. When
// containerd goes away (restart), it reconnects with a backoff up to 5 s.
func (p *Plugin) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		s, err := stub.New(p, stub.WithPluginName(p.cfg.PluginName), stub.WithPluginIdx(p.cfg.PluginIdx),
			stub.WithSocketPath(p.cfg.NRISocket))
		if err != nil {
			return fmt.Errorf("nri: %w", err)
		}
		start := time.Now()
		err = s.Run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			backoff = 100 * time.Millisecond
		}
		p.log.Warn("NRI connection ended; reconnecting", "socket", p.cfg.NRISocket, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// Synchronize rebuilds the view from the running containers: each placed
// container is registered again (a no-op when its vcore still has it), and
// placements whose container is gone are released.
func (p *Plugin) Synchronize(ctx context.Context, pods []*nriapi.PodSandbox, ctrs []*nriapi.Container) ([]*nriapi.ContainerUpdate, error) {
	byPod := map[string]*nriapi.PodSandbox{}
	for _, pod := range pods {
		byPod[pod.GetId()] = pod
	}
	live := map[string]bool{}
	placed := map[string]api.External{}
	for _, sock := range p.vcoreSockets(ctx) {
		var list []api.External
		if err := client(sock).Get(ctx, "/v1/external", &list); err != nil {
			p.log.Warn("list placed containers", "vcore", sock, "err", err)
			continue
		}
		for _, e := range list {
			placed[e.ID] = e
		}
	}
	for _, c := range ctrs {
		pod := byPod[c.GetPodSandboxId()]
		if pod == nil || Wanted(pod, c) == "" {
			continue
		}
		switch c.GetState() {
		case nriapi.ContainerState_CONTAINER_CREATED, nriapi.ContainerState_CONTAINER_RUNNING, nriapi.ContainerState_CONTAINER_PAUSED:
		default:
			continue
		}
		live[c.GetId()] = true
		if _, ok := placed[c.GetId()]; ok {
			continue
		}
		// The vcore lost it (no state dir): register it again on the CPUs
		// it runs on.
		cpus := c.GetLinux().GetResources().GetCpu().GetCpus()
		want := Wanted(pod, c)
		if mems := c.GetLinux().GetResources().GetCpu().GetMems(); mems != "" && strings.Trim(mems, "0123456789") == "" {
			want = "node" + mems
		}
		if _, err := p.place(ctx, pod, c, want, cpus); err != nil {
			p.log.Warn("re-register a running container", "container", c.GetName(), "id", c.GetId(), "err", err)
		}
	}
	for id := range placed {
		if !live[id] {
			p.release(ctx, id, "container gone at synchronize")
		}
	}
	p.log.Info("synchronized", "pods", len(pods), "containers", len(ctrs), "placed", len(live))
	return nil, nil
}

// CreateContainer places a container of an annotated pod, or fails its
// creation with the reason.
func (p *Plugin) CreateContainer(ctx context.Context, pod *nriapi.PodSandbox, c *nriapi.Container) (*nriapi.ContainerAdjustment, []*nriapi.ContainerUpdate, error) {
	want := Wanted(pod, c)
	if want == "" {
		if p.cfg.SharedCPUs == "" {
			return nil, nil, nil
		}
		adj := &nriapi.ContainerAdjustment{}
		adj.SetLinuxCPUSetCPUs(p.cfg.SharedCPUs)
		return adj, nil, nil
	}
	e, err := p.place(ctx, pod, c, want, "")
	if err != nil {
		p.log.Warn("refused a container", "pod", pod.GetNamespace()+"/"+pod.GetName(), "container", c.GetName(), "err", err)
		return nil, nil, fmt.Errorf("vcored: cannot place container %s of pod %s/%s: %w", c.GetName(), pod.GetNamespace(), pod.GetName(), err)
	}
	adj := &nriapi.ContainerAdjustment{}
	adj.SetLinuxCPUSetCPUs(e.Assigned)
	adj.SetLinuxCPUSetMems(e.Mems)
	if c.GetLinux().GetResources().GetMemory().GetLimit().GetValue() <= 0 {
		adj.SetLinuxMemoryLimit(int64(e.Memory))
	}
	adj.AddEnv("VCORE_SOCKET", filepath.Join(ContainerSocketDir, filepath.Base(e.Socket)))
	adj.AddEnv("VCORE_NODE", strconv.Itoa(e.Node))
	if d, err := userfaultfdDevice(); err == nil {
		adj.AddDevice(d)
	} else {
		p.log.Warn("no /dev/userfaultfd for the container: its workers need CAP_SYS_PTRACE", "err", err)
	}
	adj.AddMount(&nriapi.Mount{
		Source:      filepath.Dir(e.Socket),
		Destination: ContainerSocketDir,
		Type:        "bind",
		Options:     []string{"rbind", "ro", "nosuid", "nodev", "noexec"},
	})
	p.log.Info("placed a container", "pod", pod.GetNamespace()+"/"+pod.GetName(), "container", c.GetName(), "id", c.GetId(), "node", e.Node, "cpus", e.Assigned, "memory", hw.Bytes(e.Memory))
	return adj, nil, nil
}

// UpdateContainer keeps a placed container on its CPUs and node when its
// resources are updated (the kubelet's update carries no cpuset of ours).
func (p *Plugin) UpdateContainer(ctx context.Context, pod *nriapi.PodSandbox, c *nriapi.Container, _ *nriapi.LinuxResources) ([]*nriapi.ContainerUpdate, error) {
	if Wanted(pod, c) == "" {
		return nil, nil
	}
	for _, sock := range p.vcoreSockets(ctx) {
		var list []api.External
		if err := client(sock).Get(ctx, "/v1/external", &list); err != nil {
			continue
		}
		for _, e := range list {
			if e.ID == c.GetId() {
				u := &nriapi.ContainerUpdate{ContainerId: c.GetId()}
				u.SetLinuxCPUSetCPUs(e.Assigned)
				u.SetLinuxCPUSetMems(e.Mems)
				return []*nriapi.ContainerUpdate{u}, nil
			}
		}
	}
	return nil, nil
}

// StopContainer releases the container's CPUs.
func (p *Plugin) StopContainer(ctx context.Context, pod *nriapi.PodSandbox, c *nriapi.Container) ([]*nriapi.ContainerUpdate, error) {
	if Wanted(pod, c) != "" {
		p.release(ctx, c.GetId(), "stopped")
	}
	return nil, nil
}

// RemoveContainer releases the container's CPUs (if StopContainer did not).
func (p *Plugin) RemoveContainer(ctx context.Context, pod *nriapi.PodSandbox, c *nriapi.Container) error {
	if Wanted(pod, c) != "" {
		p.release(ctx, c.GetId(), "removed")
	}
	return nil
}

// Wanted is the placement a container asks for ("" for none): its own
// annotation vcored.io/partition (CRI container annotations), else the pod's
// vcored.io/partition.container.<name>, else the pod's vcored.io/partition.
// "none" opts a container out.
func Wanted(pod *nriapi.PodSandbox, c *nriapi.Container) string {
	w, ok := c.GetAnnotations()[AnnotationPartition]
	if !ok {
		w, ok = pod.GetAnnotations()[AnnotationPartition+".container."+c.GetName()]
	}
	if !ok {
		w = pod.GetAnnotations()[AnnotationPartition]
	}
	if w == "none" {
		return ""
	}
	return w
}

// userfaultfdDevice describes the host's /dev/userfaultfd, given to placed
// containers so their workers can create a userfaultfd without
// CAP_SYS_PTRACE.
func userfaultfdDevice() (*nriapi.LinuxDevice, error) {
	fi, err := os.Stat("/dev/userfaultfd")
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode()&os.ModeCharDevice == 0 {
		return nil, errors.New("/dev/userfaultfd is not a character device")
	}
	rdev := uint64(st.Rdev)
	major := int64((rdev>>8)&0xfff | (rdev>>32)&^0xfff)
	minor := int64(rdev&0xff | (rdev>>12)&^0xff)
	return &nriapi.LinuxDevice{Path: "/dev/userfaultfd", Type: "c", Major: major, Minor: minor,
		FileMode: &nriapi.OptionalFileMode{Value: 0o600}, Uid: &nriapi.OptionalUInt32{Value: 0}, Gid: &nriapi.OptionalUInt32{Value: 0}}, nil
}

// place asks a vcore to place c: want is "auto" or "node<N>"; cpus, if set,
// are the CPUs it already runs on (re-registration).
func (p *Plugin) place(ctx context.Context, pod *nriapi.PodSandbox, c *nriapi.Container, want, cpus string) (api.External, error) {
	req, err := p.request(pod, c)
	if err != nil {
		return api.External{}, err
	}
	if cpus != "" {
		if set, err := hw.ParseCPUSet(cpus); err == nil && !set.IsEmpty() {
			req.CPUs, req.CPUSet = set.Len(), set.String()
		}
	}
	caps := p.capacities(ctx)
	if len(caps) == 0 {
		return api.External{}, errors.New("no vcore is reachable")
	}
	var cands []api.ExternalCapacity
	switch {
	case want == "auto":
		// The node with the most free CPUs, then memory.
		cands = slices.Clone(caps)
		slices.SortStableFunc(cands, func(a, b api.ExternalCapacity) int {
			if a.FreeCPUs != b.FreeCPUs {
				return b.FreeCPUs - a.FreeCPUs
			}
			if a.FreeMemory != b.FreeMemory {
				if a.FreeMemory > b.FreeMemory {
					return -1
				}
				return 1
			}
			return a.Node - b.Node
		})
	case strings.HasPrefix(want, "node"):
		n, err := strconv.Atoi(strings.TrimPrefix(want, "node"))
		if err != nil || n < 0 {
			return api.External{}, fmt.Errorf("annotation %s=%q: want \"auto\" or \"node<N>\"", AnnotationPartition, want)
		}
		for _, cp := range caps {
			if cp.Node == n {
				cands = append(cands, cp)
			}
		}
		if len(cands) == 0 {
			return api.External{}, fmt.Errorf("no vcore runs on node %d", n)
		}
	default:
		return api.External{}, fmt.Errorf("annotation %s=%q: want \"auto\" or \"node<N>\"", AnnotationPartition, want)
	}
	var reasons []string
	for _, cp := range cands {
		var e api.External
		err := client(cp.Socket).Do(ctx, http.MethodPost, "/v1/external", req, &e)
		if err == nil {
			return e, nil
		}
		var se *api.StatusError
		if errors.As(err, &se) {
			reasons = append(reasons, se.Msg)
			if se.Code == http.StatusBadRequest {
				break
			}
		} else {
			reasons = append(reasons, err.Error())
		}
	}
	return api.External{}, errors.New(strings.Join(reasons, "; "))
}

// request builds the vcore request for c.
func (p *Plugin) request(pod *nriapi.PodSandbox, c *nriapi.Container) (api.ExternalRequest, error) {
	res := c.GetLinux().GetResources()
	n := 1
	if q, per := res.GetCpu().GetQuota().GetValue(), res.GetCpu().GetPeriod().GetValue(); q > 0 && per > 0 {
		n = int((uint64(q) + per - 1) / per)
	}
	mem := uint64(p.cfg.DefaultMemory)
	if l := res.GetMemory().GetLimit().GetValue(); l > 0 {
		mem = uint64(l)
	}
	cg, err := CgroupPath(c.GetLinux().GetCgroupsPath())
	if err != nil {
		return api.ExternalRequest{}, err
	}
	ds, err := ParseDataspaces(pod.GetAnnotations()[AnnotationDataspaces])
	if err != nil {
		return api.ExternalRequest{}, err
	}
	var shared []string
	for f := range strings.SplitSeq(pod.GetAnnotations()[AnnotationShared], ",") {
		if f = strings.TrimSpace(f); f != "" {
			shared = append(shared, f)
		}
	}
	return api.ExternalRequest{
		ID: c.GetId(), Cgroup: cg,
		Namespace: pod.GetNamespace(), Pod: pod.GetName(), Container: c.GetName(),
		CPUs: n, Memory: mem, Dataspaces: ds, Shared: shared,
	}, nil
}

// release tells every vcore to forget container id (404s are normal).
func (p *Plugin) release(ctx context.Context, id, why string) {
	for _, sock := range p.vcoreSockets(ctx) {
		err := client(sock).Do(ctx, http.MethodDelete, "/v1/external/"+id, nil, nil)
		var se *api.StatusError
		switch {
		case err == nil:
			p.log.Info("released a container", "id", id, "vcore", sock, "why", why)
		case errors.As(err, &se) && se.Code == http.StatusNotFound:
		default:
			p.log.Warn("release a container", "id", id, "vcore", sock, "err", err)
		}
	}
}

// capacities asks every vcore what it has free.
func (p *Plugin) capacities(ctx context.Context) []api.ExternalCapacity {
	var out []api.ExternalCapacity
	for _, sock := range p.vcoreSockets(ctx) {
		var cp api.ExternalCapacity
		if err := client(sock).Get(ctx, "/v1/external/capacity", &cp); err != nil {
			p.log.Warn("ask a vcore for capacity", "vcore", sock, "err", err)
			continue
		}
		cp.Socket = sock
		out = append(out, cp)
	}
	return out
}

// vcoreSockets lists the vcores: the configured ones, else core's list
// (the last one known while core is unreachable).
func (p *Plugin) vcoreSockets(ctx context.Context) []string {
	if len(p.cfg.VCores) > 0 {
		return p.cfg.VCores
	}
	var vs []api.VCore
	if err := client(p.cfg.CoreSocket).Get(ctx, "/v1/vcores", &vs); err != nil {
		p.log.Warn("ask core for the vcores; using the last list", "core", p.cfg.CoreSocket, "err", err)
		p.mu.Lock()
		defer p.mu.Unlock()
		return slices.Clone(p.vcores)
	}
	var socks []string
	for _, v := range vs {
		if v.Socket != "" {
			socks = append(socks, v.Socket)
		}
	}
	p.mu.Lock()
	p.vcores = socks
	p.mu.Unlock()
	return socks
}

func client(sock string) *api.Client { return api.NewClient(sock) }

// CgroupPath turns an OCI cgroupsPath into the path /proc/<pid>/cgroup
// shows: "/a/b" (cgroupfs driver) as is, "slice:prefix:name" (systemd
// driver) as /<expanded slice>/<prefix>-<name>.scope.
func CgroupPath(p string) (string, error) {
	if p == "" {
		return "", errors.New("the container has no cgroups path")
	}
	if strings.HasPrefix(p, "/") {
		return filepath.Clean(p), nil
	}
	parts := strings.Split(p, ":")
	if len(parts) != 3 || parts[2] == "" {
		return "", fmt.Errorf("cgroups path %q is neither absolute nor slice:prefix:name", p)
	}
	slice, prefix, name := parts[0], parts[1], parts[2]
	if slice == "" {
		slice = "system.slice"
	}
	dir, err := expandSlice(slice)
	if err != nil {
		return "", err
	}
	unit := name + ".scope"
	if prefix != "" {
		unit = prefix + "-" + unit
	}
	return dir + "/" + unit, nil
}

// expandSlice turns "a-b-c.slice" into "/a.slice/a-b.slice/a-b-c.slice".
func expandSlice(slice string) (string, error) {
	base, ok := strings.CutSuffix(slice, ".slice")
	if !ok || strings.Contains(base, "/") {
		return "", fmt.Errorf("%q is not a systemd slice", slice)
	}
	if base == "-" {
		return "/", nil
	}
	var path, prefix string
	for comp := range strings.SplitSeq(base, "-") {
		if comp == "" {
			return "", fmt.Errorf("%q is not a systemd slice", slice)
		}
		path += "/" + prefix + comp + ".slice"
		prefix += comp + "-"
	}
	return path, nil
}

// ParseDataspaces parses the AnnotationDataspaces value.
func ParseDataspaces(s string) ([]api.ExternalDataspace, error) {
	var out []api.ExternalDataspace
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		name, spec, ok := strings.Cut(f, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("annotation %s: %q: want name=size[:pattern[:seed]]", AnnotationDataspaces, f)
		}
		parts := strings.Split(spec, ":")
		size, err := hw.ParseBytes(parts[0])
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %q: size: %v", AnnotationDataspaces, f, err)
		}
		d := api.ExternalDataspace{Name: name, Size: uint64(size)}
		if len(parts) > 1 {
			if parts[1] != "zero" && parts[1] != "pattern" {
				return nil, fmt.Errorf("annotation %s: %q: content %q (zero or pattern)", AnnotationDataspaces, f, parts[1])
			}
			d.Content = parts[1]
		}
		if len(parts) > 2 {
			if d.Seed, err = strconv.ParseUint(parts[2], 0, 64); err != nil || d.Content != "pattern" || len(parts) > 3 {
				return nil, fmt.Errorf("annotation %s: %q: a seed follows pattern only, as a number", AnnotationDataspaces, f)
			}
		}
		out = append(out, d)
	}
	return out, nil
}
