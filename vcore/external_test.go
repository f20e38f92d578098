package vcore

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/policy/policytest"
	"github.com/vcored/vcored/ramalloc"
)

// externalVCore is a VCore as Run leaves it after the grant, with one
// subsystem on CPUs 0,8 (256 MiB), on the 16-CPU two-socket shape; node
// 0's partition is 0-3,8-11 with 1 GiB. No daemon runs: the registry is
// exercised directly.
func externalVCore(t *testing.T, stateDir string, partition string) *VCore {
	v := &VCore{
		cfg:    &config.VCore{Node: 0, StateDir: stateDir, Socket: "/run/vcored/node0/vcore.sock"},
		m:      policytest.TwoSocketSMT2(),
		log:    slog.New(slog.DiscardHandler),
		uffds:  map[uint64]*uffdState{},
		procfs: fstest.MapFS{},
	}
	v.grant = wire.ClaimOK{Node: 0, CPUs: hw.MustParse[hw.CPU](partition), Mems: hw.NewSet[hw.Node](0), Memory: uint64(hw.GiB)}
	sub := &subsystem{cfg: config.Subsystem{Name: "db", Memory: 256 * hw.MiB}, cgroup: "vcored/node0/db", cpus: hw.MustParse[hw.CPU]("0,8")}
	sub.quota = ramalloc.NewQuota("db", int64(sub.cfg.Memory))
	v.subs = []*subsystem{sub}
	v.loadExternals()
	return v
}

func extReq(id string, cpus int, mem hw.Bytes) api.ExternalRequest {
	return api.ExternalRequest{ID: id, Cgroup: "/k8s/" + id, Namespace: "ns", Pod: "p", Container: id, CPUs: cpus, Memory: uint64(mem),
		Dataspaces: []api.ExternalDataspace{{Name: "buf", Size: uint64(hw.MiB), Content: "pattern", Seed: 3}}}
}

func TestExternalRegistry(t *testing.T) {
	dir := t.TempDir()
	v := externalVCore(t, dir, "0-3,8-11")
	part := v.grant.CPUs

	a, code, err := v.addExternal(extReq("a", 2, 128*hw.MiB))
	if err != nil || code != http.StatusCreated {
		t.Fatalf("add a: %d %v", code, err)
	}
	b, code, err := v.addExternal(extReq("b", 2, 128*hw.MiB))
	if err != nil || code != http.StatusCreated {
		t.Fatalf("add b: %d %v", code, err)
	}
	ca, cb := hw.MustParse[hw.CPU](a.Assigned), hw.MustParse[hw.CPU](b.Assigned)
	subCPUs := hw.MustParse[hw.CPU]("0,8")
	if ca.Len() != 2 || cb.Len() != 2 || !ca.IsSubsetOf(part) || !cb.IsSubsetOf(part) ||
		!ca.Intersect(cb).IsEmpty() || !ca.Union(cb).Intersect(subCPUs).IsEmpty() {
		t.Fatalf("a %s, b %s: want 2 CPUs each, disjoint, in %s, outside the subsystem's %s", ca, cb, part, subCPUs)
	}
	// SMT packing as for subsystems: a whole core (n and n+8).
	if s := ca.Slice(); s[1] != s[0]+8 {
		t.Errorf("a got %s, want both threads of one core", ca)
	}
	if a.Mems != "0" || a.Node != 0 || a.Socket != v.cfg.Socket || a.QuotaLimitBytes != uint64(128*hw.MiB) {
		t.Errorf("a = %+v", a)
	}

	// The same request again is a no-op; another with the same id is refused.
	again, code, err := v.addExternal(extReq("a", 2, 128*hw.MiB))
	if err != nil || code != http.StatusOK || again.Assigned != a.Assigned {
		t.Errorf("a again: %d %v %s", code, err, again.Assigned)
	}
	if _, code, err := v.addExternal(extReq("a", 1, 128*hw.MiB)); code != http.StatusConflict || err == nil {
		t.Errorf("a with other settings: %d %v", code, err)
	}
	// Capacity: 2 CPUs left, 1 GiB - 256 - 2x128 MiB = 512 MiB.
	if c := v.ExternalCapacity(); c.FreeCPUs != 2 || c.FreeMemory != uint64(512*hw.MiB) {
		t.Errorf("capacity %+v, want 2 CPUs and 512MiB", c)
	}
	// Asking for given CPUs (re-registration): free ones are granted,
	// taken ones refused.
	if _, code, err := v.addExternal(func() api.ExternalRequest { r := extReq("c", 2, 64*hw.MiB); r.CPUSet = a.Assigned; return r }()); code != http.StatusConflict || err == nil || !strings.Contains(err.Error(), "asks for CPUs") {
		t.Errorf("c on a's CPUs: %d %v", code, err)
	}
	free := v.ExternalCapacity().FreeCPUSet
	c, code, err := v.addExternal(func() api.ExternalRequest { r := extReq("c", 2, 64*hw.MiB); r.CPUSet = free; return r }())
	if err != nil || code != http.StatusCreated || c.Assigned != free {
		t.Errorf("c on the free CPUs %s: %d %v %s", free, code, err, c.Assigned)
	}
	if !v.removeExternal("c") {
		t.Error("remove c")
	}
	refusals := []struct {
		req  api.ExternalRequest
		code int
		msg  string
	}{
		{extReq("c", 3, 64*hw.MiB), http.StatusConflict, "needs 3 exclusive CPUs, the partition has 2 free"},
		{extReq("c", 1, 600*hw.MiB), http.StatusConflict, "needs 600MiB of memory, the partition has 512MiB free"},
		{extReq("c", 0, 64*hw.MiB), http.StatusBadRequest, "need at least 1"},
		{func() api.ExternalRequest { r := extReq("c", 1, 64*hw.MiB); r.Cgroup = "k8s/c"; return r }(), http.StatusBadRequest, "not an absolute cgroup path"},
		{func() api.ExternalRequest { r := extReq("c", 1, 64*hw.MiB); r.Cgroup = "/k8s/a"; return r }(), http.StatusConflict, "already belongs to container a"},
		{func() api.ExternalRequest { r := extReq("c", 1, 64*hw.MiB); r.Cgroup = "/vcored/node0/db/x"; return r }(), http.StatusConflict, "overlaps subsystem db"},
		{func() api.ExternalRequest { r := extReq("c", 1, 64*hw.MiB); r.Dataspaces[0].Size = 100; return r }(), http.StatusBadRequest, "not a positive multiple of 4 KiB"},
		{func() api.ExternalRequest { r := extReq("c/../x", 1, 64*hw.MiB); return r }(), http.StatusBadRequest, "is not a container id"},
		{extReq("c", 1, 0), http.StatusBadRequest, "needs a memory limit"},
		{func() api.ExternalRequest { r := extReq("c", 2, 64*hw.MiB); r.CPUSet = "1"; return r }(), http.StatusBadRequest, "is not a list of 2 CPUs"},
	}
	for _, r := range refusals {
		_, code, err := v.addExternal(r.req)
		if code != r.code || err == nil || !strings.Contains(err.Error(), r.msg) {
			t.Errorf("%+v: %d %v; want %d with %q", r.req, code, err, r.code, r.msg)
		}
	}
	if n := len(v.Externals()); n != 2 {
		t.Fatalf("refused requests changed the registry: %d entries", n)
	}

	// A worker in a's cgroup (or below) belongs to a's subsystem, which
	// serves its local dataspace.
	s := v.externalOf("/k8s/a/sub")
	if s == nil || s.cfg.Name != "container ns/p/a" || s.sources["buf"] == nil || !v.isExternal(s) {
		t.Fatalf("externalOf(/k8s/a/sub) = %+v", s)
	}
	if d, ok := s.localDataspace("buf"); !ok || d.Content != config.ContentPattern || d.Seed != 3 {
		t.Errorf("buf: %+v %v", d, ok)
	}
	if v.externalOf("/k8s/ab") != nil || v.externalOf("/other") != nil {
		t.Error("externalOf matched a cgroup outside every container")
	}

	// A restarted vcore of the partition keeps both placements.
	v2 := externalVCore(t, dir, "0-3,8-11")
	if got := v2.Externals(); len(got) != 2 || got[0].Assigned != a.Assigned || got[1].Assigned != b.Assigned {
		t.Errorf("after a restart: %+v", got)
	}
	// One whose CPUs left the partition is dropped.
	v3 := externalVCore(t, dir, "0-1,8-9")
	if got := v3.Externals(); len(got) != 1 {
		t.Errorf("partition shrunk: %d placements kept, want 1", len(got))
	}

	if !v2.removeExternal("a") || v2.removeExternal("a") {
		t.Error("remove a: want true, then false")
	}
	if c := v2.ExternalCapacity(); c.FreeCPUs != 4 {
		t.Errorf("after removing a: %d free CPUs, want 4", c.FreeCPUs)
	}
}

// TestHelloPidInContainer: a worker in a container's pid namespace names
// its pid there; for an external subsystem the innermost NSpid of the
// peer is accepted, for a subsystem's worker only the peer pid.
func TestHelloPidInContainer(t *testing.T) {
	v := externalVCore(t, t.TempDir(), "0-3,8-11")
	v.procfs = fstest.MapFS{"4242/status": {Data: []byte("Name:\tw\nNSpid:\t4242\t7\n")}}
	if _, _, err := v.addExternal(extReq("a", 1, 64*hw.MiB)); err != nil {
		t.Fatal(err)
	}
	ext := &worker{pid: 4242, sub: v.externalOf("/k8s/a")}
	sub := &worker{pid: 4242, sub: v.subs[0]}
	for _, c := range []struct {
		w     *worker
		pid   int
		valid bool
	}{{ext, 4242, true}, {ext, 7, true}, {ext, 8, false}, {sub, 4242, true}, {sub, 7, false}} {
		if got := v.helloPidOK(c.w, c.pid); got != c.valid {
			t.Errorf("helloPidOK(%s, %d) = %v, want %v", c.w.sub.cfg.Name, c.pid, got, c.valid)
		}
	}
}
