package e2e

// Moves between real nodes: skipped on a one-node machine; `make vmtest`
// runs them in the 2- and 4-node qemu guests.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/vcore/client"
)

// moveHelperEnv names the directory TestMoveHelperProcess talks through.
const moveHelperEnv = "VCORED_E2E_MOVE_HELPER"

const movePages = 1024 // 4 MiB

// moveAddr is what the helper says about its mapping.
type moveAddr struct {
	Pid   int     `json:"pid"`
	Addr  uintptr `json:"addr"`
	Pages int     `json:"pages"`
}

// TestMoveHelperProcess is not a test. Run by a vcore as the command of a
// subsystem with a persistent dataspace "mem" of movePages pages, it
// attaches it; a first run fills the first half with pattern seed 1 and
// creates $DIR/filled, a later one (restarted by a restart move) verifies
// every page as check does and writes $DIR/verdict-<pid>-0.json. It writes
// $DIR/addr-<pid>.json, then whenever $DIR/check-<pid>-<n> appears it
// verifies the first half and reads the second (zero: never written),
// writes $DIR/verdict-<pid>-<n>.json, until killed.
func TestMoveHelperProcess(t *testing.T) {
	dir := os.Getenv(moveHelperEnv)
	if dir == "" {
		t.Skip("helper process only")
	}
	pid := os.Getpid()
	ctx, cancelAttach := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancelAttach()
	ps := os.Getpagesize()
	m, err := client.Attach(ctx, "mem", movePages*ps)
	if err != nil {
		writeJSON(t, filepath.Join(dir, fmt.Sprintf("verdict-%d-0.json", pid)), ckptVerdict{Error: err.Error(), Pid: pid})
		t.Fatal(err)
	}
	mem := m.Bytes()
	half := movePages / 2
	verify := func() ckptVerdict {
		v := ckptVerdict{Pid: pid}
		for p := range half {
			if err := content.VerifyPattern(mem[p*ps:(p+1)*ps], 1, uint64(p*ps)); err != nil {
				v.Error = fmt.Sprintf("page %d: %v", p, err)
				return v
			}
			v.Pages++
		}
		for p := half; p < movePages; p++ {
			for _, b := range mem[p*ps : (p+1)*ps] {
				if b != 0 {
					v.Error = fmt.Sprintf("page %d (never written) is not zero", p)
					return v
				}
			}
			v.Pages++
		}
		return v
	}
	if _, err := os.Stat(filepath.Join(dir, "filled")); err == nil {
		// Restarted: every page is restored (the first half) or zero.
		writeJSON(t, filepath.Join(dir, fmt.Sprintf("verdict-%d-0.json", pid)), verify())
	} else {
		for p := range half {
			content.Pattern(1).Fill(mem[p*ps:(p+1)*ps], uint64(p*ps))
		}
		touchFile(t, filepath.Join(dir, "filled"))
	}
	writeJSON(t, filepath.Join(dir, fmt.Sprintf("addr-%d.json", pid)), moveAddr{Pid: pid, Addr: m.Addr(), Pages: movePages})
	for {
		ents, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("check-%d-*", pid)))
		for _, e := range ents {
			n := strings.TrimPrefix(filepath.Base(e), fmt.Sprintf("check-%d-", pid))
			writeJSON(t, filepath.Join(dir, fmt.Sprintf("verdict-%d-%s.json", pid, n)), verify())
			os.Remove(e)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func moveHelperSub(dir string) string {
	return fmt.Sprintf(`
[[subsystem]]
name = "m"
command = [%q, "-test.run=^TestMoveHelperProcess$", "-test.count=1"]
memory = "160MiB" # the helper is this test binary: its page cache counts too
restart = "on-failure"
backoff_initial = "100ms"
env = { %s = %q }
[[subsystem.dataspace]]
name = "mem"
size = "4MiB"
persistent = true
`, os.Args[0], moveHelperEnv, dir)
}

// moveJSON runs `vcored move --json` and decodes the result.
func moveJSON(t *testing.T, socket string, args ...string) api.MoveResult {
	t.Helper()
	out, err := exec.Command(vcoredBin, append([]string{"move", "--socket", socket, "--json"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("vcored move %v: %v\n%s", args, err, out)
	}
	var res api.MoveResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("vcored move %v: output %q: %v", args, out, err)
	}
	t.Logf("move %v: downtime %.1f ms, total %.1f ms, %d bytes (%.2f GB/s), %d pages on node %d, %d left behind, checkpoint %d pages, warnings %v",
		args, res.DowntimeMS, res.TotalMS, res.Bytes, res.GBps, res.Pages, res.ToNode, res.PagesLeftBehind, res.CheckpointPages, res.Warnings)
	return res
}

// waitFile waits for dir/name and decodes it into v.
func waitJSONFile(t *testing.T, path string, v any) {
	t.Helper()
	eventually(t, 120*time.Second, "file "+filepath.Base(path), func() (bool, string) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		return json.Unmarshal(b, v) == nil, string(b)
	})
}

// checkOnNode asserts the helper pid's threads may run only on the CPUs
// of node's partition, and every resident page of its first half is on
// node (move_pages, asked by this process).
func checkOnNode(t *testing.T, c *cluster, dir string, pid int, node hw.Node, what string) {
	t.Helper()
	var a moveAddr
	waitJSONFile(t, filepath.Join(dir, fmt.Sprintf("addr-%d.json", pid)), &a)
	want := c.partitionCPUs(node).String()
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if len(tasks) == 0 {
		t.Fatalf("%s: no threads of pid %d", what, pid)
	}
	for _, f := range tasks {
		tid := filepath.Base(filepath.Dir(f))
		n := 0
		fmt.Sscan(tid, &n)
		got, err := procStatus(n, "Cpus_allowed_list")
		if err != nil {
			continue // exited meanwhile
		}
		if got != want {
			t.Errorf("%s: thread %s of pid %d may run on cpus %s, want only node %d's %s", what, tid, pid, got, node, want)
		}
	}
	ps := uintptr(os.Getpagesize())
	addrs := make([]uintptr, movePages/2)
	for i := range addrs {
		addrs[i] = a.Addr + uintptr(i)*ps
	}
	var nodes []int
	eventually(t, 60*time.Second, what+": every page of the first half resident on node "+fmt.Sprint(node), func() (bool, string) {
		var err error
		nodes, err = linux.PageNodes(pid, addrs)
		if err != nil {
			return false, err.Error()
		}
		count := map[int]int{}
		for _, n := range nodes {
			count[n]++
		}
		return count[int(node)] == len(addrs), fmt.Sprint(count)
	})
	t.Logf("placement %s: pid %d threads on cpus %s, %d pages on node %d", what, pid, want, len(addrs), node)
}

// check asks the helper pid to verify its memory and returns the verdict.
func checkHelper(t *testing.T, dir string, pid, n int) {
	t.Helper()
	touchFile(t, filepath.Join(dir, fmt.Sprintf("check-%d-%d", pid, n)))
	var v ckptVerdict
	waitJSONFile(t, filepath.Join(dir, fmt.Sprintf("verdict-%d-%d.json", pid, n)), &v)
	if v.Error != "" || v.Pages != movePages || v.Pid != pid {
		t.Fatalf("helper %d check %d: verified %d of %d pages: %s", pid, n, v.Pages, movePages, v.Error)
	}
}

// TestMoveNuma moves a running subsystem with a persistent dataspace
// between two nodes: live (same process, its cgroup and pages go to the
// destination, the destination's pager serves its new faults), then back
// with a restart move (final checkpoint, start on the home node, lazy
// restore there), then with a restart move again; it checks after each
// that the threads may run only on the destination's CPUs and move_pages
// finds the pages there, and that the move survives a kill -9 of core and
// restarts of both vcores.
func TestMoveNuma(t *testing.T) {
	c := newCluster(t)
	needNodes(t, c, 2)
	var nodes []hw.Node
	for _, n := range c.machine.Nodes {
		if !c.partitionCPUs(n.ID).IsEmpty() {
			nodes = append(nodes, n.ID)
		}
	}
	if len(nodes) < 2 {
		t.Skipf("needs two nodes with CPUs besides core's; have %v", nodes)
	}
	a, b := nodes[0], nodes[len(nodes)-1]
	c.startCore(c.coreConfig(""))
	dir := c.path("move-helper")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	small := strings.Replace(sleeper, `memory = "64MiB"`, `memory = "16MiB"`, 1)
	c.startVCore(0, c.vcoreConfigFor(0, a, moveHelperSub(dir)))
	c.startVCore(1, c.vcoreConfigFor(1, b, small))
	t.Cleanup(func() {
		if t.Failed() {
			for i := range 2 {
				bb, _ := os.ReadFile(filepath.Join(c.path(fmt.Sprintf("vcore%d-state", i)), "logs", "m.log"))
				t.Logf("--- m's log on vcore%d:\n%s", i, bb)
			}
		}
	})
	var first moveAddr
	eventually(t, 60*time.Second, "the helper's address", func() (bool, string) {
		ents, _ := filepath.Glob(filepath.Join(dir, "addr-*.json"))
		if len(ents) == 0 {
			return false, ""
		}
		bb, err := os.ReadFile(ents[0])
		return err == nil && json.Unmarshal(bb, &first) == nil, string(bb)
	})
	pid := first.Pid
	checkOnNode(t, c, dir, pid, a, "before")
	cs := c.coreSocket()

	// Live: the same process, now on b.
	res := moveJSON(t, cs, "m", "--to-node", fmt.Sprint(b), "--mode", "live")
	if res.FromNode != int(a) || res.ToNode != int(b) || res.Mode != api.MoveLive || !alive(pid) {
		t.Fatalf("live move: %+v (pid %d alive %v)", res, pid, alive(pid))
	}
	checkOnNode(t, c, dir, pid, b, "after the live move")
	checkHelper(t, dir, pid, 1) // its second half faults in now, served by b's pager
	checkOnNode(t, c, dir, pid, b, "after faults on b")
	if s, ok := subsystem(t, c.vcoreSocket(1), "m"); !ok || s.MovedFrom == nil || *s.MovedFrom != int(a) {
		t.Errorf("vcore of node %d lists m as %+v", b, s)
	}
	if s, _ := subsystem(t, c.vcoreSocket(0), "m"); s.MovedTo == nil || *s.MovedTo != int(b) {
		t.Errorf("vcore of node %d lists m as %+v", a, s)
	}
	moves := get[[]api.Move](t, cs, "/v1/moves")
	if len(moves) != 1 || moves[0].Subsystem != "m" || moves[0].HomeNode != int(a) || moves[0].Node != int(b) {
		t.Fatalf("core's moves: %+v", moves)
	}

	// The move is in core's ledger: a kill -9 of core keeps it.
	c.signal(c.core, syscall.SIGKILL)
	c.startCore(c.coreConfig(""))
	if moves := get[[]api.Move](t, cs, "/v1/moves"); len(moves) != 1 || moves[0].Node != int(b) {
		t.Fatalf("after core's kill -9: moves %+v", moves)
	}
	eventually(t, 30*time.Second, "both vcores re-registered", func() (bool, string) {
		vs := get[[]api.VCore](t, cs, "/v1/vcores")
		n := 0
		for _, v := range vs {
			if v.Connected {
				n++
			}
		}
		return n == 2, fmt.Sprint(vs)
	})

	// Restart, back home: a new process on a, its pages restored there.
	res = moveJSON(t, cs, "m", "--back", "--mode", "restart")
	if res.ToNode != int(a) || res.Mode != api.MoveRestart || !res.Back || len(res.Pids) == 0 {
		t.Fatalf("restart move back: %+v", res)
	}
	eventually(t, 30*time.Second, "the live-moved process gone", func() (bool, string) { return !linux.ProcessLive(pid), "" })
	pid2 := res.Pids[0]
	var v ckptVerdict
	waitJSONFile(t, filepath.Join(dir, fmt.Sprintf("verdict-%d-0.json", pid2)), &v)
	if v.Error != "" || v.Pages != movePages {
		t.Fatalf("restored on node %d: verified %d of %d pages: %s", a, v.Pages, movePages, v.Error)
	}
	checkOnNode(t, c, dir, pid2, a, "after the restart move back")
	checkHelper(t, dir, pid2, 1)
	if moves := get[[]api.Move](t, cs, "/v1/moves"); len(moves) != 0 {
		t.Fatalf("moved back, core still records %+v", moves)
	}

	// Restart to b; the destination vcore restarted runs it again (from
	// core's ledger), the home vcore restarted does not.
	res = moveJSON(t, cs, "m", "--to-node", fmt.Sprint(b), "--mode", "restart")
	pid3 := res.Pids[0]
	waitJSONFile(t, filepath.Join(dir, fmt.Sprintf("verdict-%d-0.json", pid3)), &v)
	if v.Error != "" {
		t.Fatalf("restored on node %d: %s", b, v.Error)
	}
	checkOnNode(t, c, dir, pid3, b, "after the restart move")
	c.signal(c.vcores[1], syscall.SIGTERM)
	c.startVCore(1, c.vcoreConfigFor(1, b, small))
	var s api.Subsystem
	eventually(t, 60*time.Second, "m running again on node "+fmt.Sprint(b), func() (bool, string) {
		var ok bool
		s, ok = subsystem(t, c.vcoreSocket(1), "m")
		return ok && len(s.Pids) > 0 && s.MovedFrom != nil, fmt.Sprintf("%+v", s)
	})
	c.signal(c.vcores[0], syscall.SIGTERM)
	c.startVCore(0, c.vcoreConfigFor(0, a, moveHelperSub(dir)))
	if s0, _ := subsystem(t, c.vcoreSocket(0), "m"); s0.MovedTo == nil || len(s0.Pids) != 0 {
		t.Errorf("the restarted home vcore lists m as %+v", s0)
	}
	pid4 := s.Pids[0]
	waitJSONFile(t, filepath.Join(dir, fmt.Sprintf("verdict-%d-0.json", pid4)), &v)
	if v.Error != "" {
		t.Fatalf("after the destination's restart: %s", v.Error)
	}
	checkOnNode(t, c, dir, pid4, b, "after the destination vcore's restart")
	// And home again, live.
	res = moveJSON(t, cs, "m", "--back", "--mode", "live")
	checkOnNode(t, c, dir, pid4, a, "after the live move back")
	checkHelper(t, dir, pid4, 1)
}

// TestMoveBenchNuma runs the bench's move mode (a live move, then a
// restart move back, of one persistent subsystem) at a small size and
// logs the figures side by side; the restarted worker must read every
// page back.
func TestMoveBenchNuma(t *testing.T) {
	c := newCluster(t)
	needNodes(t, c, 2)
	dir := c.path("bench")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := bench.RunMove(ctx, bench.MoveConfig{Exe: vcoredBin, Machine: c.machine, Pages: 8192, Dir: dir, CgroupParent: c.cgroup})
	if err != nil {
		for _, f := range []string{"core.log", "vcore0.log", "vcore1.log"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			t.Logf("--- %s:\n%s", f, b)
		}
		t.Fatal(err)
	}
	t.Logf("\n%s", bench.FormatMove(res))
	if res.Skipped != "" {
		t.Skip(res.Skipped)
	}
	if !res.Verified || res.Live == nil || res.Restart == nil || res.Live.ToNode != res.Restart.FromNode || res.Live.FromNode != res.Restart.ToNode {
		t.Fatalf("move bench: %+v live %+v restart %+v", res, res.Live, res.Restart)
	}
	if res.Live.PagesLeftBehind != 0 || res.Restart.PagesLeftBehind != 0 {
		t.Errorf("pages left behind: live %d, restart %d", res.Live.PagesLeftBehind, res.Restart.PagesLeftBehind)
	}
}
