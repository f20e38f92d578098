package nri

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	nriapi "github.com/containerd/nri/pkg/api"

	"github.com/vcored/vcored/internal/api"
)

func TestCgroupPath(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{"/kubepods/besteffort/pod1/abc", "/kubepods/besteffort/pod1/abc", ""},
		{"/k8s.io//abc/", "/k8s.io/abc", ""},
		{"kubepods-besteffort-pod1.slice:cri-containerd:abc", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope", ""},
		{"system.slice:docker:abc", "/system.slice/docker-abc.scope", ""},
		{":cri-containerd:abc", "/system.slice/cri-containerd-abc.scope", ""},
		{"", "", "no cgroups path"},
		{"relative/path", "", "neither absolute"},
		{"foo:bar:abc", "", "not a systemd slice"},
		{"a--b.slice:p:abc", "", "not a systemd slice"},
	} {
		got, err := CgroupPath(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("CgroupPath(%q) = %q, %v; want an error with %q", c.in, got, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("CgroupPath(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestParseDataspaces(t *testing.T) {
	got, err := ParseDataspaces(" buf=16MiB:pattern:7, scratch=4096 ,z=1M:zero")
	if err != nil {
		t.Fatal(err)
	}
	want := []api.ExternalDataspace{{Name: "buf", Size: 16 << 20, Content: "pattern", Seed: 7}, {Name: "scratch", Size: 4096}, {Name: "z", Size: 1 << 20, Content: "zero"}}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"buf", "=4096", "buf=lots", "buf=4096:file", "buf=4096:zero:7", "buf=4096:pattern:x", "buf=4096:pattern:1:2"} {
		if _, err := ParseDataspaces(bad); err == nil {
			t.Errorf("ParseDataspaces(%q) accepted", bad)
		}
	}
}

func TestWanted(t *testing.T) {
	pod := &nriapi.PodSandbox{Annotations: map[string]string{
		AnnotationPartition:                     "auto",
		AnnotationPartition + ".container.side": "none",
		AnnotationPartition + ".container.pin":  "node1",
	}}
	for name, want := range map[string]string{"main": "auto", "side": "", "pin": "node1"} {
		if got := Wanted(pod, &nriapi.Container{Name: name}); got != want {
			t.Errorf("Wanted(%s) = %q, want %q", name, got, want)
		}
	}
	own := &nriapi.Container{Name: "side", Annotations: map[string]string{AnnotationPartition: "node0"}}
	if got := Wanted(pod, own); got != "node0" {
		t.Errorf("a container's own annotation: %q, want node0", got)
	}
	if got := Wanted(&nriapi.PodSandbox{}, &nriapi.Container{Name: "x"}); got != "" {
		t.Errorf("no annotation: %q", got)
	}
}

// fakeVCore answers /v1/external/capacity and records POSTs; it is a
// stand-in for the vcore's HTTP API only (the e2e test runs real ones).
type fakeVCore struct {
	sock string
	cap  api.ExternalCapacity
	mu   sync.Mutex
	got  []api.ExternalRequest
}

func startFakeVCore(t *testing.T, node, freeCPUs int, freeMem uint64) *fakeVCore {
	f := &fakeVCore{sock: filepath.Join(t.TempDir(), "v.sock")}
	f.cap = api.ExternalCapacity{Node: node, FreeCPUs: freeCPUs, FreeMemory: freeMem, Mems: "0", Socket: f.sock}
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/external/capacity", func(w http.ResponseWriter, r *http.Request) { api.WriteJSON(w, f.cap) })
	mux.HandleFunc("POST /v1/external", func(w http.ResponseWriter, r *http.Request) {
		var req api.ExternalRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			api.WriteError(w, 400, "%v", err)
			return
		}
		f.mu.Lock()
		f.got = append(f.got, req)
		f.mu.Unlock()
		if req.CPUs > f.cap.FreeCPUs {
			api.WriteError(w, 409, "node %d: needs %d exclusive CPUs", node, req.CPUs)
			return
		}
		w.WriteHeader(201)
		api.WriteJSON(w, api.External{ExternalRequest: req, Node: node, Assigned: "1", Mems: "0", Socket: f.sock})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return f
}

func (f *fakeVCore) posts() []api.ExternalRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.ExternalRequest(nil), f.got...)
}

func container(name string, quota int64) *nriapi.Container {
	return &nriapi.Container{Id: "id-" + name, Name: name, Linux: &nriapi.LinuxContainer{
		CgroupsPath: "/pods/id-" + name,
		Resources: &nriapi.LinuxResources{
			Cpu:    &nriapi.LinuxCPU{Quota: &nriapi.OptionalInt64{Value: quota}, Period: &nriapi.OptionalUInt64{Value: 100000}},
			Memory: &nriapi.LinuxMemory{Limit: &nriapi.OptionalInt64{Value: 128 << 20}},
		},
	}}
}

// TestCreateContainerPlacement: auto picks the node with the most free
// CPUs (then memory), the CPU limit is rounded up, the adjustment carries
// cpuset, mems, env and the socket mount, and a refusal names the reason.
func TestCreateContainerPlacement(t *testing.T) {
	n0 := startFakeVCore(t, 0, 2, 1<<30)
	n1 := startFakeVCore(t, 1, 3, 1<<29)
	n2 := startFakeVCore(t, 2, 3, 1<<30)
	p := New(Config{VCores: []string{n0.sock, n1.sock, n2.sock}})
	pod := &nriapi.PodSandbox{Name: "p", Namespace: "ns", Annotations: map[string]string{AnnotationPartition: "auto"}}

	adj, _, err := p.CreateContainer(context.Background(), pod, container("c", 150000))
	if err != nil {
		t.Fatal(err)
	}
	if len(n2.posts()) != 1 || len(n0.posts())+len(n1.posts()) != 0 {
		t.Fatalf("auto asked n0 %d, n1 %d, n2 %d times; want node 2 (most CPUs, then memory) only", len(n0.posts()), len(n1.posts()), len(n2.posts()))
	}
	req := n2.posts()[0]
	if req.CPUs != 2 || req.Memory != 128<<20 || req.Cgroup != "/pods/id-c" || req.Pod != "p" || req.Namespace != "ns" || req.Container != "c" {
		t.Errorf("request %+v: want 2 CPUs (1.5 rounded up), 128MiB, cgroup /pods/id-c, ns/p/c", req)
	}
	if got := adj.GetLinux().GetResources().GetCpu().GetCpus(); got != "1" {
		t.Errorf("cpuset.cpus %q, want 1", got)
	}
	if got := adj.GetLinux().GetResources().GetCpu().GetMems(); got != "0" {
		t.Errorf("cpuset.mems %q, want 0", got)
	}
	env := map[string]string{}
	for _, kv := range adj.GetEnv() {
		env[kv.Key] = kv.Value
	}
	if env["VCORE_SOCKET"] != "/run/vcored/v.sock" || env["VCORE_NODE"] != "2" {
		t.Errorf("env %v", env)
	}
	if m := adj.GetMounts(); len(m) != 1 || m[0].Destination != ContainerSocketDir || m[0].Source != filepath.Dir(n2.sock) {
		t.Errorf("mounts %+v", m)
	}

	// node1 asked explicitly; too many CPUs is refused with the reason.
	pod.Annotations[AnnotationPartition] = "node1"
	_, _, err = p.CreateContainer(context.Background(), pod, container("big", 400000))
	if err == nil || !strings.Contains(err.Error(), "needs 4 exclusive CPUs") || !strings.Contains(err.Error(), "cannot place container big") {
		t.Errorf("a 4-CPU container on node1: %v", err)
	}
	pod.Annotations[AnnotationPartition] = "node7"
	if _, _, err := p.CreateContainer(context.Background(), pod, container("x", 0)); err == nil || !strings.Contains(err.Error(), "no vcore runs on node 7") {
		t.Errorf("node7: %v", err)
	}
	pod.Annotations[AnnotationPartition] = "somewhere"
	if _, _, err := p.CreateContainer(context.Background(), pod, container("x", 0)); err == nil || !strings.Contains(err.Error(), `want "auto" or "node<N>"`) {
		t.Errorf("bad annotation: %v", err)
	}
	// Without the annotation nothing is asked and nothing adjusted.
	before := len(n0.posts()) + len(n1.posts()) + len(n2.posts())
	adj, _, err = p.CreateContainer(context.Background(), &nriapi.PodSandbox{Name: "plain"}, container("c", 0))
	if err != nil || adj != nil || len(n0.posts())+len(n1.posts())+len(n2.posts()) != before {
		t.Errorf("plain pod: adj %v, err %v", adj, err)
	}
}

// TestSharedCPUs: with --shared-cpus, containers of pods without the
// annotation are confined to those CPUs; placed ones are not.
func TestSharedCPUs(t *testing.T) {
	n0 := startFakeVCore(t, 0, 2, 1<<30)
	p := New(Config{VCores: []string{n0.sock}, SharedCPUs: "0"})
	adj, _, err := p.CreateContainer(context.Background(), &nriapi.PodSandbox{Name: "plain"}, container("c", 0))
	if err != nil || adj.GetLinux().GetResources().GetCpu().GetCpus() != "0" || len(n0.posts()) != 0 {
		t.Errorf("plain pod with shared CPUs: adj %v, err %v, %d requests", adj, err, len(n0.posts()))
	}
	pod := &nriapi.PodSandbox{Name: "p", Annotations: map[string]string{AnnotationPartition: "node0"}}
	adj, _, err = p.CreateContainer(context.Background(), pod, container("c", 100000))
	if err != nil || adj.GetLinux().GetResources().GetCpu().GetCpus() != "1" {
		t.Errorf("placed pod: adj %v, err %v", adj, err)
	}
}
