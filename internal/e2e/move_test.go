package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/bench"
)

// moveCLI runs `vcored move` with args and returns its output and exit code.
func moveCLI(t *testing.T, socket string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(vcoredBin, append([]string{"move", "--socket", socket}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("vcored move %v: %v", args, err)
	return "", -1
}

// persistentSub is a subsystem running the checkpoint helper over a
// persistent dataspace "mem" of ckptPages pages (checkpoint_test.go).
func persistentSub(dir string) string {
	return fmt.Sprintf(`
[[subsystem]]
name = "p"
command = [%q, "-test.run=^TestCkptHelperProcess$", "-test.count=1"]
memory = "160MiB" # the helper is this test binary: its page cache counts too
restart = "on-failure"
backoff_initial = "100ms"
env = { %s = %q, VCORED_BIN = %q }
[[subsystem.dataspace]]
name = "mem"
size = "8MiB"
persistent = true
`, os.Args[0], ckptHelperEnv, dir, vcoredBin)
}

// TestMoveRefused: on this one-node machine every move is refused with a
// clear reason and exit code 2 — an unknown subsystem, a node outside the
// plan, the node it is on (live and restart), --back of a subsystem that
// was never moved, bad flags — and nothing changes: the subsystem keeps
// its process and core records no move.
func TestMoveRefused(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	dir := c.path("ckpt-helper")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.startVCore(0, c.vcoreConfig(0, sleeper+persistentSub(dir)))
	pid := sleeperPid(t, c.vcoreSocket(0))
	cs := c.coreSocket()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nosuch", "--to-node", "0"}, `no live vcore runs a subsystem "nosuch"`},
		{[]string{"sleeper", "--to-node", "7"}, "node 7 is not in core's partition plan"},
		{[]string{"sleeper", "--to-node", "0"}, `"sleeper" already runs on node 0`},
		{[]string{"p", "--to-node", "0", "--mode", "restart"}, `"p" already runs on node 0`},
		{[]string{"sleeper", "--back"}, "runs on its home node 0"},
		{[]string{"sleeper", "--to-node", "0", "--mode", "restart"}, "a restart move keeps the memory of persistent dataspaces only"},
		{[]string{"node0/nosuch", "--to-node", "0"}, "no live vcore runs"},
		{[]string{"../etc", "--to-node", "0"}, "not a subsystem name"},
		{[]string{"sleeper"}, "--to-node N, or --back"},
		{[]string{"sleeper", "--to-node", "0", "--mode", "teleport"}, "want live or restart"},
		{[]string{"sleeper", "--to-node", "0", "--back"}, "exclude each other"},
	} {
		out, code := moveCLI(t, cs, tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("vcored move %v: exit %d, output %q; want exit 2 saying %q", tc.args, code, out, tc.want)
		}
	}
	// The HTTP API refuses the same way (400), and a body naming another
	// subsystem than the path.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := api.NewUnboundedClient(cs).Do(ctx, http.MethodPost, "/v1/subsystems/sleeper/move", api.MoveRequest{Subsystem: "p", ToNode: 0}, nil)
	var se *api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusBadRequest || !strings.Contains(se.Msg, "the body names subsystem") {
		t.Errorf("POST move with a mismatched body: %v", err)
	}
	if moves := get[[]api.Move](t, cs, "/v1/moves"); len(moves) != 0 {
		t.Errorf("core recorded moves: %+v", moves)
	}
	if now := sleeperPid(t, c.vcoreSocket(0)); now != pid || !alive(pid) {
		t.Errorf("sleeper pid %d -> %d (alive %v): a refused move changed it", pid, now, alive(pid))
	}
	if s, _ := subsystem(t, c.vcoreSocket(0), "sleeper"); s.MovedTo != nil || s.MovedFrom != nil {
		t.Errorf("sleeper's status says moved: %+v", s)
	}
}

// vcorePost sends a JSON POST to a vcore route core uses during moves.
func vcorePost(t *testing.T, socket, path string, body, out any) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return api.NewUnboundedClient(socket).Do(ctx, http.MethodPost, path, body, out)
}

// TestMoveRestartMechanics drives a restart move's two halves on one vcore
// (this machine has one node, so core refuses a real move): the source's
// move-out checkpoints the worker's written pages while it is frozen and
// kills it still frozen; the destination's move-in (here: the same vcore,
// its home) starts it again, and the new worker finds every page it wrote
// — restored lazily from the image — while the placement route counts the
// image's pages as they become resident.
func TestMoveRestartMechanics(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	dir := c.path("ckpt-helper")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c.startVCore(0, c.vcoreConfig(0, sleeper+persistentSub(dir)))
	sock := c.vcoreSocket(0)
	wait := func(name string) {
		eventually(t, 60*time.Second, "helper file "+name, func() (bool, string) {
			_, err := os.Stat(filepath.Join(dir, name))
			return err == nil, fmt.Sprint(err)
		})
	}
	wait("written1")
	touchFile(t, filepath.Join(dir, "go2"))
	wait("written2")
	s, _ := subsystem(t, sock, "p")
	if len(s.Pids) == 0 {
		t.Fatalf("subsystem p: %+v", s)
	}
	old := s.Pids[0]

	var q api.MoveOut
	if err := vcorePost(t, sock, "/v1/subsystems/p/move-out", api.MoveOutRequest{Phase: "query"}, &q); err != nil {
		t.Fatal(err)
	}
	if !q.Persistent || q.Images["mem"] == "" || len(q.Pids) == 0 || q.Done {
		t.Fatalf("query: %+v", q)
	}
	if !alive(old) {
		t.Fatal("the query stopped the worker")
	}
	var out api.MoveOut
	if err := vcorePost(t, sock, "/v1/subsystems/p/move-out", api.MoveOutRequest{Phase: api.MoveRestart, ToNode: 0}, &out); err != nil {
		t.Fatal(err)
	}
	// Never checkpointed before: the pre-copy checkpoint holds every
	// page, the final one (frozen until the kill) what was written since:
	// nothing, the helper is idle.
	if !out.Done || out.PreCopyPages != ckptPages || out.CheckpointPages != 0 || out.FrozenAtUnixNS == 0 {
		t.Fatalf("move-out: %+v, want all %d pages in the pre-copy checkpoint, none in the final one", out, ckptPages)
	}
	eventually(t, 30*time.Second, "the old worker gone", func() (bool, string) { return !alive(old), "" })
	s, _ = subsystem(t, sock, "p")
	if s.MovedTo == nil || s.State != "moved" || len(s.Pids) != 0 {
		t.Fatalf("after move-out: %+v", s)
	}

	touchFile(t, filepath.Join(dir, "verify"))
	in := api.MoveInRequest{Name: "p", Mode: api.MoveRestart, FromNode: 0, Spec: out.Spec, Images: out.Images}
	var mi api.MoveIn
	if err := vcorePost(t, sock, "/v1/move-in", in, &mi); err != nil {
		t.Fatal(err)
	}
	if len(mi.Pids) == 0 || mi.StartedAtUnixNS <= out.FrozenAtUnixNS {
		t.Fatalf("move-in: %+v", mi)
	}
	t.Logf("frozen %.1f ms; stopped-to-started %.1f ms", out.FrozenMS, float64(mi.StartedAtUnixNS-out.FrozenAtUnixNS)/1e6)
	// A second move-in of the same subsystem is refused.
	if err := vcorePost(t, sock, "/v1/move-in", in, nil); err == nil || !strings.Contains(err.Error(), "already runs here") {
		t.Errorf("second move-in: %v", err)
	}
	var v ckptVerdict
	eventually(t, 120*time.Second, "the restarted worker's verdict", func() (bool, string) {
		ents, _ := filepath.Glob(filepath.Join(dir, "verdict-*.json"))
		for _, e := range ents {
			b, err := os.ReadFile(e)
			if err == nil && json.Unmarshal(b, &v) == nil {
				return true, ""
			}
		}
		return false, fmt.Sprint(ents)
	})
	if v.Error != "" || v.Pages != ckptPages || v.Pid == old {
		t.Fatalf("restarted worker (pid %d, was %d): verified %d of %d pages: %s", v.Pid, old, v.Pages, ckptPages, v.Error)
	}
	// Every page of the image is resident again, on this node.
	var p api.MovePlacement
	eventually(t, 30*time.Second, "every image page resident", func() (bool, string) {
		p = get[api.MovePlacement](t, sock, "/v1/subsystems/p/placement")
		return p.ImagePages == ckptPages && p.Missing == 0, fmt.Sprintf("%+v", p)
	})
	if p.PagesByNode[0] < ckptPages {
		t.Errorf("placement %+v: want at least %d pages on node 0", p, ckptPages)
	}
	s, _ = subsystem(t, sock, "p")
	if s.MovedTo != nil || s.MovedFrom != nil || len(s.Pids) == 0 {
		t.Errorf("back home, status says %+v", s)
	}
	// Bad move-ins change nothing.
	for _, bad := range []api.MoveInRequest{
		{Name: "sleeper", Mode: api.MoveRestart, Spec: json.RawMessage(`{"Name":"sleeper","Command":["sleep","1"]}`)},
		{Name: "x", Mode: api.MoveRestart, Spec: json.RawMessage(`{"Name":"y","Command":["sleep","1"]}`)},
		{Name: "x", Mode: "teleport", Spec: json.RawMessage(`{"Name":"x","Command":["sleep","1"]}`)},
		{Name: "x", Mode: api.MoveRestart, Spec: json.RawMessage(`{"Name":"x","Command":["sleep","1"],"Local":[{"Name":"m","Size":4096,"Content":"zero","Persistent":true}]}`)},
	} {
		if err := vcorePost(t, sock, "/v1/move-in", bad, nil); err == nil {
			t.Errorf("move-in %+v accepted", bad)
		}
	}
	if _, ok := subsystem(t, sock, "x"); ok {
		t.Error("a refused move-in left a subsystem x")
	}
}

// TestMoveBenchOneNode: on a one-node machine the bench's move mode
// measures no live move (and says why) and times the restart move's
// mechanics on that node; the restarted worker reads every page back.
func TestMoveBenchOneNode(t *testing.T) {
	c := newCluster(t)
	if len(c.machine.Nodes) > 1 {
		t.Skip("a multi-node machine: TestMoveBenchNuma")
	}
	dir := c.path("bench")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := bench.RunMove(ctx, bench.MoveConfig{Exe: vcoredBin, Machine: c.machine, Pages: 4096, Dir: dir, CgroupParent: c.cgroup})
	if err != nil {
		for _, f := range []string{"core.log", "vcore0.log"} {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			t.Logf("--- %s:\n%s", f, b)
		}
		t.Fatal(err)
	}
	t.Logf("\n%s", bench.FormatMove(res))
	if res.Live != nil || !strings.Contains(res.Skipped, "a move needs two") {
		t.Errorf("one node, yet a live move: %+v", res)
	}
	if r := res.Restart; r == nil || !r.SameNode || !res.Verified || r.DowntimeMS <= 0 || r.TotalMS < r.DowntimeMS {
		t.Fatalf("restart mechanics: %+v %+v", res, r)
	}
}
