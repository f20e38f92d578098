package nrie2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
)

// pageSize of the test's dataspace pages (x86-64).
const (
	dsPages = 1024
	dsSeed  = 7
)

// podConfig is a crictl pod sandbox config (host network).
func (e *env) podConfig(name string, annotations map[string]string) string {
	b, _ := json.Marshal(map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "e2e", "uid": name + "-uid", "attempt": 0},
		"log_directory": e.path("logs/" + name),
		"annotations":   annotations,
		"linux": map[string]any{
			"cgroup_parent":    "/" + e.cgParent,
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}},
		},
	})
	return e.write(name+"-pod.json", string(b))
}

// ctrConfig is a crictl container config: cpus as a CPU limit (0: none).
func (e *env) ctrConfig(pod, name string, cpus int, annotations map[string]string, cmd ...string) string {
	res := map[string]any{"memory_limit_in_bytes": 64 << 20}
	if cpus > 0 {
		res["cpu_period"], res["cpu_quota"] = 100000, cpus*100000
	}
	b, _ := json.Marshal(map[string]any{
		"metadata":    map[string]any{"name": name},
		"image":       map[string]any{"image": image},
		"command":     cmd,
		"log_path":    name + ".log",
		"annotations": annotations,
		"linux":       map[string]any{"resources": res},
	})
	return e.write(pod+"-"+name+".json", string(b))
}

// vcoreGet fetches path from the first vcore.
func vcoreGet[T any](e *env, path string) T {
	e.t.Helper()
	return vcoreGetFrom[T](e, e.vcoreSocket(), path)
}

// vcoreGetFrom fetches path from the vcore at sock.
func vcoreGetFrom[T any](e *env, sock, path string) T {
	e.t.Helper()
	// Retried for a minute: the vcore is pinned to a CPU other tests share.
	var (
		v   T
		err error
	)
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = api.NewClient(sock).Get(ctx, path, &v)
		cancel()
		if err == nil {
			return v
		}
	}
	e.dumpLogs()
	e.t.Fatal(err)
	return v
}

type inspect struct {
	Status struct {
		State    string `json:"state"`
		ExitCode int    `json:"exitCode"`
	} `json:"status"`
	Info struct {
		Pid int `json:"pid"`
	} `json:"info"`
}

func (e *env) inspect(id string) inspect {
	var in inspect
	if err := json.Unmarshal([]byte(e.crictl("inspect", id)), &in); err != nil {
		e.t.Fatal(err)
	}
	return in
}

func procStatus(pid int, key string) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func pagesOf(p api.Pager, ds string) uint64 {
	for _, d := range p.Dataspaces {
		if d.Dataspace == ds {
			return d.Pages
		}
	}
	return 0
}

// TestNRIPlacement: a pod with annotated containers (1 CPU each, as many as
// the partition holds, up to two) and a plain one. The annotated ones get
// disjoint CPUs inside the partition, the node's mems, VCORE_SOCKET and
// VCORE_NODE and the socket mounted; their worker attaches a dataspace
// served by the vcore's pager and verifies every page; `vcored status`
// lists them; a container asking for more CPUs than the partition has fails
// with the reason and leaks nothing; deleting the pod frees the CPUs.
func TestNRIPlacement(t *testing.T) {
	e := newEnv(t)
	k := min(2, e.partCPUs.Len())
	if k < 2 {
		t.Logf("the partition has %d CPU (%s): one annotated container (two need a 3-CPU machine)", e.partCPUs.Len(), e.partCPUs)
	}
	podAnn := map[string]string{"vcored.io/dataspaces": fmt.Sprintf("buf=%d:pattern:%d", dsPages*4096, dsSeed)}
	podCfg := e.podConfig("nri-a", podAnn)
	podID := e.crictl("runp", podCfg)

	script := fmt.Sprintf("/vcored worker --mode uffd --dataspace buf --pages %d --read --verify pattern:%d --result /tmp/result.json && echo WORKER-OK || echo WORKER-FAILED; exec sleep 100000", dsPages, dsSeed)
	var placed []string
	for i := range k {
		name := fmt.Sprintf("worker%d", i)
		cfg := e.ctrConfig("nri-a", name, 1, map[string]string{"vcored.io/partition": "auto"}, "/bin/sh", "-c", script)
		id := e.crictl("create", podID, cfg, podCfg)
		e.crictl("start", id)
		placed = append(placed, id)
	}
	if k < 2 {
		// The partition's only CPU is taken: a second annotated container
		// is refused, not given the same CPU.
		cfg := e.ctrConfig("nri-a", "worker1", 1, map[string]string{"vcored.io/partition": "auto"}, "/bin/sleep", "100000")
		msg, err := e.crictlErr("create", podID, cfg, podCfg)
		if err == nil || !strings.Contains(msg, "needs 1 exclusive CPUs, the partition has 0 free") {
			t.Errorf("a second 1-CPU container on a 1-CPU partition: err %v\n%s", err, msg)
		}
	}
	plainCfg := e.ctrConfig("nri-a", "plain", 0, nil, "/bin/sleep", "100000")
	plain := e.crictl("create", podID, plainCfg, podCfg)
	e.crictl("start", plain)

	// Every worker verified its pages.
	for _, id := range placed {
		e.eventually(3*time.Minute, "worker "+id+" printed WORKER-OK", func() (bool, string) {
			out := e.crictlLogs(id)
			if strings.Contains(out, "WORKER-FAILED") {
				e.dumpLogs()
				t.Fatalf("the worker in %s failed:\n%s", id, tail(out, 2000))
			}
			return strings.Contains(out, "WORKER-OK"), tail(out, 600)
		})
	}
	pg := vcoreGet[api.Pager](e, "/v1/pager")
	t.Logf("vcore pager: %+v", pg.Dataspaces)
	if got := pagesOf(pg, "buf"); got < uint64(k*dsPages) {
		t.Errorf("the vcore's pager mapped %d pages of buf, want >= %d (%d workers x %d pages)", got, k*dsPages, k, dsPages)
	}

	exts := vcoreGet[[]api.External](e, "/v1/external")
	if len(exts) != k {
		t.Fatalf("/v1/external lists %d containers, want %d: %+v", len(exts), k, exts)
	}
	var union hw.CPUSet
	for _, id := range placed {
		in := e.inspect(id)
		pid := in.Info.Pid
		var ext *api.External
		for i := range exts {
			if exts[i].ID == id {
				ext = &exts[i]
			}
		}
		if ext == nil {
			t.Fatalf("container %s is not in /v1/external", id)
		}
		cpus, err := hw.ParseCPUSet(procStatus(pid, "Cpus_allowed_list"))
		if err != nil || cpus.Len() != 1 || !cpus.IsSubsetOf(e.partCPUs) || cpus.String() != ext.Assigned {
			t.Errorf("container %s: Cpus_allowed_list %s, want 1 CPU of the partition %s = the vcore's %s", id, cpus, e.partCPUs, ext.Assigned)
		}
		if !union.Intersect(cpus).IsEmpty() {
			t.Errorf("container %s: CPUs %s overlap another placed container's %s", id, cpus, union)
		}
		union = union.Union(cpus)
		if got := procStatus(pid, "Mems_allowed_list"); got != "0" {
			t.Errorf("container %s: Mems_allowed_list %q, want 0", id, got)
		}
		environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		for _, want := range []string{"VCORE_SOCKET=/run/vcored/vcore0.sock", "VCORE_NODE=0"} {
			if !strings.Contains("\x00"+string(environ)+"\x00", "\x00"+want+"\x00") {
				t.Errorf("container %s: environment lacks %s", id, want)
			}
		}
		mi, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if !strings.Contains(string(mi), " /run/vcored ") {
			t.Errorf("container %s: /run/vcored is not mounted", id)
		}
		if ext.Pod != "nri-a" || ext.Namespace != "e2e" || ext.Node != 0 {
			t.Errorf("container %s: /v1/external says %+v", id, ext)
		}
	}
	// The plain container is left alone.
	pp := e.inspect(plain).Info.Pid
	if got := procStatus(pp, "Cpus_allowed_list"); got != e.machine.AllowedCPUs.String() {
		t.Errorf("plain container: Cpus_allowed_list %q, want every CPU %s", got, e.machine.AllowedCPUs)
	}
	if environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pp)); strings.Contains(string(environ), "VCORE_SOCKET") {
		t.Errorf("plain container got VCORE_SOCKET")
	}

	// vcored status lists the containers.
	out, err := execOut(e.bin, "status", "--socket", e.path("core.sock"))
	if err != nil {
		t.Errorf("vcored status: %v\n%s", err, out)
	}
	t.Logf("vcored status:\n%s", out)
	for i := range k {
		if !strings.Contains(out, fmt.Sprintf("e2e/nri-a/worker%d", i)) {
			t.Errorf("vcored status does not list e2e/nri-a/worker%d:\n%s", i, out)
		}
	}

	// A resource update that would widen the cpuset keeps the placement.
	e.crictl("update", "--cpuset-cpus", e.machine.AllowedCPUs.String(), "--cpu-quota", "100000", placed[0])
	if got, want := procStatus(e.inspect(placed[0]).Info.Pid, "Cpus_allowed_list"), exts[0].Assigned; got != want {
		t.Errorf("after crictl update --cpuset-cpus %s: Cpus_allowed_list %q, want the placement's %q", e.machine.AllowedCPUs, got, want)
	}

	// Too many CPUs: creation fails with the reason; nothing leaks.
	bigCfg := e.podConfig("nri-big", map[string]string{"vcored.io/partition": "auto"})
	bigPod := e.crictl("runp", bigCfg)
	want := e.partCPUs.Len() + 1
	big := e.ctrConfig("nri-big", "big", want, nil, "/bin/sleep", "100000")
	msg, err := e.crictlErr("create", bigPod, big, bigCfg)
	if err == nil {
		t.Fatalf("a container asking for %d CPUs was created: %s", want, msg)
	}
	t.Logf("crictl create of a %d-CPU container: %s", want, msg)
	if !strings.Contains(msg, fmt.Sprintf("needs %d exclusive CPUs", want)) || !strings.Contains(msg, "cannot place container big") {
		t.Errorf("crictl create failed without the reason: %s", msg)
	}
	if n := len(vcoreGet[[]api.External](e, "/v1/external")); n != k {
		t.Errorf("after the refused container /v1/external lists %d, want %d", n, k)
	}
	e.crictl("stopp", bigPod)
	e.crictl("rmp", bigPod)

	// The metrics name the containers.
	metrics, err := httpGetUnix(e.vcoreSocket(), "/metrics")
	if line := grepLines(metrics, "vcored_container_cpus{"); err != nil || !strings.Contains(line, `container="worker0"`) || !strings.Contains(line, `pod="nri-a"`) {
		t.Errorf("vcore metrics lack vcored_container_cpus for worker0 (%v):\n%s", err, grepLines(metrics, "vcored_container"))
	}

	// Restarts lose no placement. A vcore restart: the new vcore reads the
	// registry back and serves a new worker in the running container.
	before := vcoreGet[[]api.External](e, "/v1/external")
	vc := e.procByName("vcore0")
	vc.stop(20 * time.Second)
	vc2 := e.start("vcore0", nil, e.bin, "vcore", "--config", e.path("vcore0.toml"))
	e.waitAPI(vc2, e.vcoreSocket())
	assertSamePlacements(t, before, vcoreGet[[]api.External](e, "/v1/external"), "after a vcore restart")
	t.Logf("vcore restarted: %d placements kept", len(before))
	execOut, err := e.crictlErr("exec", placed[0], "/vcored", "worker", "--mode", "uffd", "--dataspace", "buf",
		"--pages", fmt.Sprint(dsPages), "--read", "--verify", fmt.Sprintf("pattern:%d", dsSeed), "--result", "/tmp/result2.json")
	if err != nil {
		e.dumpLogs()
		t.Fatalf("a worker exec'd in %s after the vcore restart: %v\n%s", placed[0], err, execOut)
	}
	if got := pagesOf(vcoreGet[api.Pager](e, "/v1/pager"), "buf"); got < dsPages {
		t.Errorf("the restarted vcore's pager mapped %d pages of buf, want >= %d", got, dsPages)
	}
	// A core restart.
	core := e.procByName("core")
	core.stop(20 * time.Second)
	core2 := e.start("core", nil, e.bin, "core", "--config", e.path("core.toml"))
	e.waitAPI(core2, e.path("core.sock"))
	assertSamePlacements(t, before, vcoreGet[[]api.External](e, "/v1/external"), "after a core restart")
	t.Logf("core restarted: placements kept")
	// A plugin restart: Synchronize keeps what runs...
	e.plugin.stop(10 * time.Second)
	e.startPlugin()
	assertSamePlacements(t, before, vcoreGet[[]api.External](e, "/v1/external"), "after a plugin restart")
	// A containerd restart: the plugin reconnects and synchronizes again.
	syncs := strings.Count(e.plugin.log.String(), "msg=synchronized")
	t0 := time.Now()
	killed := e.ctrd.stop(30 * time.Second)
	t.Logf("containerd stopped in %s (SIGKILL needed: %v)", time.Since(t0).Round(time.Millisecond), killed)
	e.startContainerd()
	t.Logf("containerd up again after %s", time.Since(t0).Round(time.Millisecond))
	e.eventually(2*time.Minute, "the plugin synchronized with the restarted containerd", func() (bool, string) {
		return strings.Count(e.plugin.log.String(), "msg=synchronized") > syncs, tail(e.plugin.log.String(), 300)
	})
	assertSamePlacements(t, before, vcoreGet[[]api.External](e, "/v1/external"), "after a containerd restart")
	t.Logf("containerd restarted: the plugin reconnected after %s, placements kept", time.Since(t0).Round(time.Millisecond))
	// ...and releases what went away while it was down.
	t0 = time.Now()
	killed = e.plugin.stop(10 * time.Second)
	t.Logf("plugin stopped in %s (SIGKILL: %v)", time.Since(t0).Round(time.Millisecond), killed)
	e.crictl("stop", "--timeout", "1", placed[0])
	e.crictl("rm", placed[0])
	if n := len(vcoreGet[[]api.External](e, "/v1/external")); n != k {
		t.Errorf("with the plugin down, the vcore lists %d placements, want still %d", n, k)
	}
	e.startPlugin()
	t.Logf("plugin restarted after %s was removed", placed[0][:12])
	if n := len(vcoreGet[[]api.External](e, "/v1/external")); n != k-1 {
		t.Errorf("after the plugin's Synchronize the vcore lists %d placements, want %d (the removed container released)", n, k-1)
	}
	// The freed CPU goes to a new container of the pod.
	again := e.crictl("create", podID, e.ctrConfig("nri-a", "again", 1, map[string]string{"vcored.io/partition": "node0"}, "/bin/sleep", "100000"), podCfg)
	e.crictl("start", again)
	if n := len(vcoreGet[[]api.External](e, "/v1/external")); n != k {
		t.Errorf("after creating another container the vcore lists %d placements, want %d", n, k)
	}

	// Deleting the pod frees the CPUs.
	e.crictl("stopp", podID)
	e.crictl("rmp", podID)
	e.eventually(2*time.Minute, "the placements are released", func() (bool, string) {
		l := vcoreGet[[]api.External](e, "/v1/external")
		c := vcoreGet[api.ExternalCapacity](e, "/v1/external/capacity")
		return len(l) == 0 && c.FreeCPUs == e.partCPUs.Len(), fmt.Sprintf("%d placed, capacity %+v", len(l), c)
	})
}

func execOut(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// procByName is the last process started under name.
func (e *env) procByName(name string) *proc {
	for i := len(e.procs) - 1; i >= 0; i-- {
		if e.procs[i].name == name {
			return e.procs[i]
		}
	}
	e.t.Fatalf("no process %s", name)
	return nil
}

// assertSamePlacements compares containers and CPUs.
func assertSamePlacements(t *testing.T, want, got []api.External, when string) {
	t.Helper()
	key := func(l []api.External) string {
		var b strings.Builder
		for _, x := range l {
			fmt.Fprintf(&b, "%s:%s:%s;", x.ID[:12], x.Container, x.Assigned)
		}
		return b.String()
	}
	if key(want) != key(got) {
		t.Errorf("placements %s: %s, want %s", when, key(got), key(want))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// httpGetUnix fetches path from a daemon socket as text.
func httpGetUnix(sock, path string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Get("http://vcored" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
