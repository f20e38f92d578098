package vcore

// External subsystems: containers placed on this vcore's partition by the
// NRI plugin (`vcored nri`). They are subsystems of another kind: exclusive
// CPUs picked from the partition by policy (as for subsystems), memory
// accounted in the partition, a RAM quota for their local dataspaces, and
// their cgroup accepted as a worker's — but vcored did not start them and
// does not supervise them. The registry is changed only by root through the
// vcore socket (POST /v1/external, DELETE /v1/external/{id}) and kept in
// <state_dir>/external.json so a restarted vcore keeps every placement.

import (
	"bufio"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/metrics"
	"github.com/vcored/vcored/internal/statefile"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/policy"
	"github.com/vcored/vcored/ramalloc"
)

// externals is the registry of external subsystems.
type externals struct {
	mu   sync.Mutex
	byID map[string]*external
}

// external is one placed container.
type external struct {
	req     api.ExternalRequest
	cpus    hw.CPUSet
	created time.Time
	sub     *subsystem // for the worker path (quota, local dataspaces)
}

// externalFile is <state_dir>/external.json.
type externalFile struct {
	Externals []externalState `json:"externals"`
}

type externalState struct {
	Request api.ExternalRequest `json:"request"`
	CPUs    hw.CPUSet           `json:"cpus"`
	Created time.Time           `json:"created"`
}

// Limits of a request.
const (
	maxExternalBody       = 1 << 20
	maxExternalDataspaces = 64
)

var externalID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// externalPath is the registry's state file ("" without a state_dir).
func (v *VCore) externalPath() string {
	if v.cfg.StateDir == "" {
		return ""
	}
	return filepath.Join(v.cfg.StateDir, "external.json")
}

// serveExternal loads the registry a previous vcore of the partition left
// and adds the /v1/external routes and metrics. Called once from
// httpHandler, before the socket serves anyone.
func (v *VCore) serveExternal(mux *http.ServeMux) {
	v.loadExternals()
	mux.HandleFunc("GET /v1/external", func(w http.ResponseWriter, r *http.Request) { api.WriteJSON(w, v.Externals()) })
	mux.HandleFunc("GET /v1/external/capacity", func(w http.ResponseWriter, r *http.Request) { api.WriteJSON(w, v.ExternalCapacity()) })
	mux.HandleFunc("POST /v1/external", func(w http.ResponseWriter, r *http.Request) {
		if !rootPeer(w, r) {
			return
		}
		var req api.ExternalRequest
		dec := json.NewDecoder(io.LimitReader(r.Body, maxExternalBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			api.WriteError(w, http.StatusBadRequest, "bad request body: %v", err)
			return
		}
		e, code, err := v.addExternal(req)
		if err != nil {
			api.WriteError(w, code, "%v", err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(e)
	})
	mux.HandleFunc("DELETE /v1/external/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !rootPeer(w, r) {
			return
		}
		if !v.removeExternal(r.PathValue("id")) {
			api.WriteError(w, http.StatusNotFound, "no external subsystem %q on node %d", r.PathValue("id"), v.cfg.Node)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	if v.reg != nil {
		v.registerExternalMetrics(v.reg)
	}
}

// rootPeer refuses (403) a caller that is not root.
func rootPeer(w http.ResponseWriter, r *http.Request) bool {
	p, ok := wire.PeerFromContext(r.Context())
	if !ok || p.Uid != 0 {
		api.WriteError(w, http.StatusForbidden, "only root may change the external subsystems (peer uid %d)", p.Uid)
		return false
	}
	return true
}

// checkExternal validates a request; it says nothing about capacity.
func checkExternal(req *api.ExternalRequest) error {
	var problems []string
	if !externalID.MatchString(req.ID) {
		problems = append(problems, fmt.Sprintf("id %q is not a container id", req.ID))
	}
	if !strings.HasPrefix(req.Cgroup, "/") || req.Cgroup == "/" || strings.Contains(req.Cgroup, "..") {
		problems = append(problems, fmt.Sprintf("cgroup %q is not an absolute cgroup path below the root", req.Cgroup))
	}
	if req.CPUs < 1 {
		problems = append(problems, fmt.Sprintf("cpus %d: need at least 1", req.CPUs))
	}
	if req.CPUSet != "" {
		if set, err := hw.ParseCPUSet(req.CPUSet); err != nil || set.Len() != req.CPUs {
			problems = append(problems, fmt.Sprintf("cpuset %q is not a list of %d CPUs", req.CPUSet, req.CPUs))
		}
	}
	if req.Memory == 0 {
		problems = append(problems, "memory 0: a placed container needs a memory limit")
	}
	if len(req.Dataspaces) > maxExternalDataspaces {
		problems = append(problems, fmt.Sprintf("%d dataspaces: at most %d", len(req.Dataspaces), maxExternalDataspaces))
	}
	seen := map[string]bool{}
	var sum uint64
	for _, d := range req.Dataspaces {
		switch {
		case d.Name == "" || seen[d.Name]:
			problems = append(problems, fmt.Sprintf("dataspace name %q is empty or repeated", d.Name))
		case d.Size == 0 || d.Size%4096 != 0:
			problems = append(problems, fmt.Sprintf("dataspace %q: size %d is not a positive multiple of 4 KiB", d.Name, d.Size))
		case d.Content != "" && d.Content != string(config.ContentZero) && d.Content != string(config.ContentPattern):
			problems = append(problems, fmt.Sprintf("dataspace %q: content %q (zero or pattern)", d.Name, d.Content))
		}
		seen[d.Name] = true
		sum += d.Size
	}
	if sum > req.Memory {
		problems = append(problems, fmt.Sprintf("dataspaces total %s, more than the memory %s", hw.Bytes(sum), hw.Bytes(req.Memory)))
	}
	if len(problems) > 0 {
		return fmt.Errorf("bad external subsystem: %s", strings.Join(problems, "; "))
	}
	return nil
}

// newExternal builds the registry entry (and its subsystem) for req on cpus.
func (v *VCore) newExternal(req api.ExternalRequest, cpus hw.CPUSet, created time.Time) *external {
	sc := config.Subsystem{Name: externalName(req), Memory: hw.Bytes(req.Memory), Dataspaces: slices.Clone(req.Shared)}
	s := &subsystem{cfg: sc, cgroup: strings.TrimPrefix(req.Cgroup, "/"), cpus: cpus, sources: map[string]content.Source{}}
	s.quota = ramalloc.NewQuota(sc.Name, int64(req.Memory))
	for _, d := range req.Dataspaces {
		cd := config.Dataspace{Name: d.Name, Size: hw.Bytes(d.Size), Content: config.ContentZero, Seed: d.Seed}
		src := content.Zero()
		if d.Content == string(config.ContentPattern) {
			cd.Content, src = config.ContentPattern, content.Pattern(d.Seed)
		}
		sc.Local = append(sc.Local, cd)
		s.sources[d.Name] = src
	}
	s.cfg = sc
	return &external{req: req, cpus: cpus, created: created, sub: s}
}

// externalName is how an external subsystem is named in logs and quota
// errors: namespace/pod/container, or the container id.
func externalName(req api.ExternalRequest) string {
	if req.Pod != "" {
		return "container " + req.Namespace + "/" + req.Pod + "/" + req.Container
	}
	return "container " + req.ID
}

// partitionFree is what the partition has left for external subsystems:
// CPUs outside every subsystem and external, and memory. Called with
// v.ext.mu held.
func (v *VCore) partitionFree(skip string) (hw.CPUSet, uint64) {
	v.mu.Lock()
	cpus, mem := v.grant.CPUs, v.grant.Memory
	v.mu.Unlock()
	var used uint64
	for _, s := range v.subs {
		cpus = cpus.Difference(s.cpus)
		used += uint64(s.cfg.Memory)
	}
	for id, e := range v.ext.byID {
		if id == skip {
			continue
		}
		cpus = cpus.Difference(e.cpus)
		used += e.req.Memory
	}
	if used >= mem {
		return cpus, 0
	}
	return cpus, mem - used
}

// addExternal places req: 201 with the entry, 200 when the same request was
// already placed (idempotent), or an error with its HTTP code.
func (v *VCore) addExternal(req api.ExternalRequest) (api.External, int, error) {
	if err := checkExternal(&req); err != nil {
		return api.External{}, http.StatusBadRequest, err
	}
	v.ext.mu.Lock()
	defer v.ext.mu.Unlock()
	if v.ext.byID == nil {
		v.ext.byID = map[string]*external{}
	}
	if old := v.ext.byID[req.ID]; old != nil {
		if sameRequest(old.req, req) {
			return v.externalStatus(old), http.StatusOK, nil
		}
		return api.External{}, http.StatusConflict, fmt.Errorf("container %s is already placed on node %d with other settings (cpus %s)", req.ID, v.cfg.Node, old.cpus)
	}
	for _, e := range v.ext.byID {
		if e.sub.cgroup == strings.TrimPrefix(req.Cgroup, "/") {
			return api.External{}, http.StatusConflict, fmt.Errorf("cgroup %s already belongs to container %s", req.Cgroup, e.req.ID)
		}
	}
	for _, s := range v.subs {
		if c := strings.TrimPrefix(req.Cgroup, "/"); c == s.cgroup || strings.HasPrefix(c, s.cgroup+"/") || strings.HasPrefix(s.cgroup, c+"/") {
			return api.External{}, http.StatusConflict, fmt.Errorf("cgroup %s overlaps subsystem %s's", req.Cgroup, s.cfg.Name)
		}
	}
	free, freeMem := v.partitionFree("")
	if req.Memory > freeMem {
		return api.External{}, http.StatusConflict, fmt.Errorf("node %d: %s needs %s of memory, the partition has %s free", v.cfg.Node, externalName(req), hw.Bytes(req.Memory), hw.Bytes(freeMem))
	}
	if req.CPUs > free.Len() {
		return api.External{}, http.StatusConflict, fmt.Errorf("node %d: %s needs %d exclusive CPUs, the partition has %d free (%s)", v.cfg.Node, externalName(req), req.CPUs, free.Len(), cpuList(free))
	}
	var cpus hw.CPUSet
	if req.CPUSet != "" {
		// A running container registered again keeps its CPUs.
		cpus = hw.MustParse[hw.CPU](req.CPUSet) // checked by checkExternal
		if !cpus.IsSubsetOf(free) {
			return api.External{}, http.StatusConflict, fmt.Errorf("node %d: %s asks for CPUs %s, the partition has %s free", v.cfg.Node, externalName(req), cpus, cpuList(free))
		}
	} else {
		var err error
		if cpus, err = policy.PickCPUs(v.m, free, req.CPUs); err != nil {
			return api.External{}, http.StatusConflict, fmt.Errorf("node %d: pick %d CPUs from %s: %v", v.cfg.Node, req.CPUs, cpuList(free), err)
		}
	}
	e := v.newExternal(req, cpus, time.Now().UTC().Truncate(time.Second))
	v.ext.byID[req.ID] = e
	v.saveExternalsLocked()
	v.log.Info("placed a container", "id", req.ID, "name", e.sub.cfg.Name, "cpus", cpus, "memory", hw.Bytes(req.Memory), "cgroup", req.Cgroup)
	return v.externalStatus(e), http.StatusCreated, nil
}

func cpuList(s hw.CPUSet) string {
	if s.IsEmpty() {
		return "none"
	}
	return s.String()
}

func sameRequest(a, b api.ExternalRequest) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// removeExternal forgets container id; false if it was not placed here.
func (v *VCore) removeExternal(id string) bool {
	v.ext.mu.Lock()
	defer v.ext.mu.Unlock()
	e := v.ext.byID[id]
	if e == nil {
		return false
	}
	delete(v.ext.byID, id)
	v.saveExternalsLocked()
	v.log.Info("released a container", "id", id, "name", e.sub.cfg.Name, "cpus", e.cpus)
	return true
}

// saveExternalsLocked writes the registry. Called with v.ext.mu held.
func (v *VCore) saveExternalsLocked() {
	path := v.externalPath()
	if path == "" {
		return
	}
	var f externalFile
	for _, e := range v.sortedExternalsLocked() {
		f.Externals = append(f.Externals, externalState{Request: e.req, CPUs: e.cpus, Created: e.created})
	}
	if err := statefile.Write(path, f); err != nil {
		v.log.Warn("write the external subsystems' state file", "err", err)
	}
}

// loadExternals restores the registry a previous vcore of the partition
// wrote. An entry that no longer fits (CPUs outside the partition or taken
// by a subsystem) is dropped with a warning.
func (v *VCore) loadExternals() {
	v.ext.mu.Lock()
	defer v.ext.mu.Unlock()
	v.ext.byID = map[string]*external{}
	path := v.externalPath()
	if path == "" {
		return
	}
	var f externalFile
	if _, err := statefile.Read(path, &f); err != nil {
		v.log.Warn("ignoring an unreadable external subsystems' state file", "err", err)
		return
	}
	for _, st := range f.Externals {
		free, freeMem := v.partitionFree("")
		if checkExternal(&st.Request) != nil || st.CPUs.Len() != st.Request.CPUs || !st.CPUs.IsSubsetOf(free) || st.Request.Memory > freeMem {
			v.log.Warn("dropping a saved container placement that no longer fits", "id", st.Request.ID, "cpus", st.CPUs, "free", free)
			continue
		}
		v.ext.byID[st.Request.ID] = v.newExternal(st.Request, st.CPUs, st.Created)
		v.log.Info("kept a container placement", "id", st.Request.ID, "cpus", st.CPUs)
	}
	v.saveExternalsLocked()
}

func (v *VCore) sortedExternalsLocked() []*external {
	out := make([]*external, 0, len(v.ext.byID))
	for _, e := range v.ext.byID {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *external) int { return cmp.Compare(a.req.ID, b.req.ID) })
	return out
}

// externalOf returns the external subsystem whose cgroup holds cgroupPath
// (as cgroupOf reports it), nil if none.
func (v *VCore) externalOf(cgroupPath string) *subsystem {
	p := strings.TrimPrefix(cgroupPath, "/")
	v.ext.mu.Lock()
	defer v.ext.mu.Unlock()
	for _, e := range v.ext.byID {
		if p == e.sub.cgroup || strings.HasPrefix(p, e.sub.cgroup+"/") {
			return e.sub
		}
	}
	return nil
}

// isExternal tells whether s is an external subsystem's.
func (v *VCore) isExternal(s *subsystem) bool {
	v.ext.mu.Lock()
	defer v.ext.mu.Unlock()
	for _, e := range v.ext.byID {
		if e.sub == s {
			return true
		}
	}
	return false
}

// helloPidOK tells whether a worker's Hello names its own pid. A process
// in a container's pid namespace knows its pid there: for an external
// subsystem the innermost NSpid of the peer is accepted too.
func (v *VCore) helloPidOK(w *worker, claimed int) bool {
	if claimed == w.pid {
		return true
	}
	if !v.isExternal(w.sub) {
		return false
	}
	ns, err := innermostPid(v, w.pid)
	return err == nil && ns == claimed
}

// innermostPid reads the last NSpid of /proc/<pid>/status.
func innermostPid(v *VCore, pid int) (int, error) {
	f, err := v.procfs.Open(strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				break
			}
			return strconv.Atoi(fields[len(fields)-1])
		}
	}
	return 0, fmt.Errorf("no NSpid in /proc/%d/status", pid)
}

// Externals is the /v1/external document, sorted by container id.
func (v *VCore) Externals() []api.External {
	v.ext.mu.Lock()
	list := v.sortedExternalsLocked()
	v.ext.mu.Unlock()
	workers := map[*subsystem]int{}
	v.mu.Lock()
	for _, u := range v.uffds {
		workers[u.sub]++
	}
	v.mu.Unlock()
	out := []api.External{}
	for _, e := range list {
		a := v.externalStatus(e)
		a.Workers = workers[e.sub]
		out = append(out, a)
	}
	return out
}

func (v *VCore) externalStatus(e *external) api.External {
	v.mu.Lock()
	mems := v.grant.Mems
	v.mu.Unlock()
	return api.External{
		ExternalRequest: e.req,
		Node:            int(v.cfg.Node),
		Assigned:        e.cpus.String(),
		Mems:            mems.String(),
		Socket:          v.cfg.Socket,
		QuotaUsedBytes:  uint64(e.sub.quota.Used()),
		QuotaLimitBytes: uint64(e.sub.quota.Limit()),
		Created:         e.created,
	}
}

// ExternalCapacity is the /v1/external/capacity document: what a new
// container could still get here.
func (v *VCore) ExternalCapacity() api.ExternalCapacity {
	v.ext.mu.Lock()
	free, mem := v.partitionFree("")
	v.ext.mu.Unlock()
	v.mu.Lock()
	mems := v.grant.Mems
	v.mu.Unlock()
	return api.ExternalCapacity{Node: int(v.cfg.Node), FreeCPUs: free.Len(), FreeCPUSet: free.String(), FreeMemory: mem, Mems: mems.String(), Socket: v.cfg.Socket}
}

// registerExternalMetrics adds the external subsystems' families.
func (v *VCore) registerExternalMetrics(r *metrics.Registry) {
	per := func(val func(api.External) float64) func() []metrics.Sample {
		return func() []metrics.Sample {
			var out []metrics.Sample
			for _, e := range v.Externals() {
				out = append(out, metrics.Sample{Labels: []string{e.Namespace, e.Pod, e.Container, e.ID}, Value: val(e)})
			}
			return out
		}
	}
	labels := []string{"namespace", "pod", "container", "id"}
	r.Collect(metrics.Family{Name: "vcored_container_cpus", Help: "Exclusive CPUs of a container placed by the NRI plugin.", Labels: labels},
		per(func(e api.External) float64 { return float64(e.CPUs) }))
	r.Collect(metrics.Family{Name: "vcored_container_memory_bytes", Help: "Memory of the partition accounted to a placed container.", Labels: labels},
		per(func(e api.External) float64 { return float64(e.Memory) }))
	r.Collect(metrics.Family{Name: "vcored_container_quota_used_bytes", Help: "Bytes of local dataspaces a placed container's workers have attached.", Labels: labels},
		per(func(e api.External) float64 { return float64(e.QuotaUsedBytes) }))
	r.Collect(metrics.Family{Name: "vcored_container_workers", Help: "Worker userfaultfds held for a placed container's processes.", Labels: labels},
		per(func(e api.External) float64 { return float64(e.Workers) }))
	r.Collect(metrics.Family{Name: "vcored_partition_free_cpus", Help: "CPUs of the partition not given to a subsystem or container."},
		func() []metrics.Sample { return []metrics.Sample{{Value: float64(v.ExternalCapacity().FreeCPUs)}} })
}
