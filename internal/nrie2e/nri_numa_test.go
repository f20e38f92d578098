package nrie2e

// The multi-node NRI test: it needs two NUMA nodes and a partition of two
// CPUs, which this project's hosts do not have; `make vmtest-nri` runs it
// in a 2-node qemu guest (cgroup v2 only) with static containerd, ctr, the
// runc shim and crictl, and Debian's runc with its libraries.

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// TestNRIPlacementNUMA: core, a vcore on node 0 and one on node 1, and a
// pod with two containers annotated for node 1 (1 CPU each) and a plain
// one. The annotated ones get disjoint CPUs of node 1's partition,
// cpuset.mems = 1, VCORE_SOCKET/VCORE_NODE and the socket mounted; the
// worker in each attaches the pod's dataspace, verifies every page, served
// by node 1's vcore's pager, and finds every page on node 1 (move_pages);
// deleting the pod frees the CPUs; a pod asking for more CPUs than any
// partition has fails with the reason.
func TestNRIPlacementNUMA(t *testing.T) {
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Nodes) < 2 {
		t.Skipf("needs 2 NUMA nodes, this host has %d (%s); run it in a qemu guest: make vmtest-nri", len(m.Nodes), m.NodeIDs())
	}
	if skip != "" {
		t.Skip(skip)
	}
	n0, n1 := m.Nodes[0].ID, m.Nodes[1].ID
	e := newEnvOn(t, "192MiB", n0, n1)
	part := e.vcores[1].cpus
	if part.Len() < 2 {
		t.Skipf("node %d's partition has %d CPU (%s); two 1-CPU containers need 2", n1, part.Len(), part)
	}
	sock1 := e.vcores[1].socket
	t0 := time.Now()

	podAnn := map[string]string{"vcored.io/dataspaces": fmt.Sprintf("buf=%d:pattern:%d", dsPages*4096, dsSeed)}
	podCfg := e.podConfig("numa-a", podAnn)
	podID := e.crictl("runp", podCfg)
	t.Logf("pod %s up after %s", podID[:12], time.Since(t0).Round(time.Millisecond))

	script := fmt.Sprintf("/vcored worker --mode uffd --dataspace buf --pages %d --read --verify pattern:%d --result /tmp/result.json && echo WORKER-OK || echo WORKER-FAILED; exec sleep 100000", dsPages, dsSeed)
	var placed []string
	for i := range 2 {
		cfg := e.ctrConfig("numa-a", fmt.Sprintf("worker%d", i), 1, map[string]string{"vcored.io/partition": fmt.Sprintf("node%d", n1)}, "/bin/sh", "-c", script)
		id := e.crictl("create", podID, cfg, podCfg)
		e.crictl("start", id)
		placed = append(placed, id)
	}
	plain := e.crictl("create", podID, e.ctrConfig("numa-a", "plain", 0, nil, "/bin/sleep", "100000"), podCfg)
	e.crictl("start", plain)
	t.Logf("containers started after %s", time.Since(t0).Round(time.Millisecond))

	for _, id := range placed {
		e.eventually(5*time.Minute, "worker "+id[:12]+" printed WORKER-OK", func() (bool, string) {
			out := e.crictlLogs(id)
			if strings.Contains(out, "WORKER-FAILED") {
				e.dumpLogs()
				t.Fatalf("the worker in %s failed:\n%s", id, tail(out, 2000))
			}
			return strings.Contains(out, "WORKER-OK"), tail(out, 600)
		})
	}
	t.Logf("workers verified their pages after %s; %s", time.Since(t0).Round(time.Millisecond), memAvailable())

	// Node 1's vcore placed both and served the pages; node 0's has none.
	exts := vcoreGetFrom[[]api.External](e, sock1, "/v1/external")
	if len(exts) != 2 {
		t.Fatalf("node %d's vcore lists %d containers, want 2: %+v", n1, len(exts), exts)
	}
	if l := vcoreGetFrom[[]api.External](e, e.vcores[0].socket, "/v1/external"); len(l) != 0 {
		t.Errorf("node %d's vcore lists %d containers, want 0: %+v", n0, len(l), l)
	}
	pg := vcoreGetFrom[api.Pager](e, sock1, "/v1/pager")
	t.Logf("node %d vcore pager: %+v", n1, pg.Dataspaces)
	if got := pagesOf(pg, "buf"); got < 2*dsPages {
		t.Errorf("node %d's pager mapped %d pages of buf, want >= %d (2 workers x %d pages)", n1, got, 2*dsPages, dsPages)
	}

	var union hw.CPUSet
	wantSock := "VCORE_SOCKET=/run/vcored/vcore1.sock"
	for _, id := range placed {
		pid := e.inspect(id).Info.Pid
		var ext *api.External
		for i := range exts {
			if exts[i].ID == id {
				ext = &exts[i]
			}
		}
		if ext == nil {
			t.Fatalf("container %s is not in node %d's /v1/external", id, n1)
		}
		cpus, err := hw.ParseCPUSet(procStatus(pid, "Cpus_allowed_list"))
		if err != nil || cpus.Len() != 1 || !cpus.IsSubsetOf(part) || cpus.String() != ext.Assigned {
			t.Errorf("container %s: Cpus_allowed_list %s, want 1 CPU of node %d's partition %s = the vcore's %s", id, cpus, n1, part, ext.Assigned)
		}
		if !union.Intersect(cpus).IsEmpty() {
			t.Errorf("container %s: CPUs %s overlap the other placed container's %s", id, cpus, union)
		}
		union = union.Union(cpus)
		mems := procStatus(pid, "Mems_allowed_list")
		if mems != fmt.Sprint(n1) {
			t.Errorf("container %s: Mems_allowed_list %q, want %d", id, mems, n1)
		}
		environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		for _, want := range []string{wantSock, fmt.Sprintf("VCORE_NODE=%d", n1)} {
			if !strings.Contains("\x00"+string(environ)+"\x00", "\x00"+want+"\x00") {
				t.Errorf("container %s: environment lacks %s", id, want)
			}
		}
		mi, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if !strings.Contains(string(mi), " /run/vcored ") {
			t.Errorf("container %s: /run/vcored is not mounted", id)
		}
		if ext.Node != int(n1) || ext.Pod != "numa-a" {
			t.Errorf("container %s: /v1/external says %+v", id, ext)
		}
		// The worker's own account, read through the container's root:
		// every page touched, verified, and on node 1.
		r, err := bench.ReadWorkerResult(fmt.Sprintf("/proc/%d/root/tmp/result.json", pid))
		if err != nil {
			t.Fatalf("container %s: worker result: %v", id, err)
		}
		if len(r.Errors) > 0 || len(r.Dataspaces) != 1 {
			t.Fatalf("container %s: worker result: errors %v, %d dataspaces", id, r.Errors, len(r.Dataspaces))
		}
		d := r.Dataspaces[0]
		t.Logf("placement: container %s on CPU %s mems %s: worker ran on node %d, %s: %d pages, %d verified, pages per node %v",
			id[:12], cpus, mems, r.Node, d.Name, d.Pages, d.VerifiedPages, d.Placement)
		if d.Pages != dsPages || d.VerifiedPages != dsPages {
			t.Errorf("container %s: %s touched %d, verified %d pages, want %d", id, d.Name, d.Pages, d.VerifiedPages, dsPages)
		}
		if d.Placement[int(n1)] != dsPages {
			t.Errorf("container %s: pages per node %v, want all %d on node %d", id, d.Placement, dsPages, n1)
		}
		if r.Node != int(n1) {
			t.Errorf("container %s: the worker ran on node %d, want %d", id, r.Node, n1)
		}
	}
	if !union.Equal(part) {
		t.Errorf("the two containers hold %s, want node %d's whole partition %s", union, n1, part)
	}
	// The plain container is left alone.
	pp := e.inspect(plain).Info.Pid
	if got := procStatus(pp, "Cpus_allowed_list"); got != m.AllowedCPUs.String() {
		t.Errorf("plain container: Cpus_allowed_list %q, want every CPU %s", got, m.AllowedCPUs)
	}
	if environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pp)); strings.Contains(string(environ), "VCORE_SOCKET") {
		t.Errorf("plain container got VCORE_SOCKET")
	}

	// Deleting the pod frees the CPUs.
	e.crictl("stopp", podID)
	e.crictl("rmp", podID)
	e.eventually(2*time.Minute, "node 1's placements are released", func() (bool, string) {
		l := vcoreGetFrom[[]api.External](e, sock1, "/v1/external")
		c := vcoreGetFrom[api.ExternalCapacity](e, sock1, "/v1/external/capacity")
		return len(l) == 0 && c.FreeCPUs == part.Len(), fmt.Sprintf("%d placed, capacity %+v", len(l), c)
	})
	t.Logf("pod deleted, CPUs free after %s", time.Since(t0).Round(time.Millisecond))

	// More CPUs than any partition has (each is free now): refused with
	// the reason of every vcore; nothing is placed.
	want := max(part.Len(), e.vcores[0].cpus.Len()) + 1
	bigCfg := e.podConfig("numa-big", map[string]string{"vcored.io/partition": "auto"})
	bigPod := e.crictl("runp", bigCfg)
	msg, err := e.crictlErr("create", bigPod, e.ctrConfig("numa-big", "big", want, nil, "/bin/sleep", "100000"), bigCfg)
	if err == nil {
		t.Fatalf("a container asking for %d CPUs was created: %s", want, msg)
	}
	t.Logf("crictl create of a %d-CPU container: %s", want, strings.TrimSpace(msg))
	for _, s := range []string{"cannot place container big", fmt.Sprintf("node %d: ", n0), fmt.Sprintf("node %d: ", n1), fmt.Sprintf("needs %d exclusive CPUs", want)} {
		if !strings.Contains(msg, s) {
			t.Errorf("crictl create failed without %q in the reason: %s", s, msg)
		}
	}
	for _, v := range e.vcores {
		if l := vcoreGetFrom[[]api.External](e, v.socket, "/v1/external"); len(l) != 0 {
			t.Errorf("after the refused container node %d's vcore lists %+v", v.node, l)
		}
	}
	e.crictl("stopp", bigPod)
	e.crictl("rmp", bigPod)
	t.Logf("done after %s", time.Since(t0).Round(time.Millisecond))
}

// memAvailable is /proc/meminfo's MemAvailable (the guest's headroom with
// containerd, the shims and the pods running), for the log.
func memAvailable() string {
	data, _ := os.ReadFile("/proc/meminfo")
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			return "MemAvailable " + strings.Join(strings.Fields(v), " ")
		}
	}
	return "MemAvailable unknown"
}
