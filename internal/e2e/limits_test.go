package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/vcore/client"
)

// The limit tests run this test binary as a subsystem's command, with
// limitHelperEnv naming what it does (see TestLimitHelperProcess).
const limitHelperEnv = "VCORED_E2E_LIMIT_HELPER"

// limitResult is what the helper reports: one line per attempt.
type limitResult struct {
	Attempts []string `json:"attempts"`
	Reattach string   `json:"reattach,omitempty"`
}

// TestLimitHelperProcess is not a test. Run by a vcore as a subsystem's
// command, it waits for the file $LIMIT_GO, then makes $LIMIT_N attempts —
// "regions": attach a one-page region of dataspace "local" each, keeping
// them; "conns": open a worker connection each and say Hello, keeping them —
// writes $LIMIT_RESULT and holds everything until it is stopped. Mode
// "http" is run by a test as another user: see idleHTTPHelper.
func TestLimitHelperProcess(t *testing.T) {
	mode := os.Getenv(limitHelperEnv)
	if mode == "" {
		t.Skip("helper process only")
	}
	if mode == "http" {
		idleHTTPHelper()
		return
	}
	var n int
	fmt.Sscan(os.Getenv("LIMIT_N"), &n)
	for {
		if _, err := os.Stat(os.Getenv("LIMIT_GO")); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var res limitResult
	var held []func()
	switch mode {
	case "regions":
		for range n {
			m, err := client.Attach(ctx, "local", os.Getpagesize())
			if err != nil {
				res.Attempts = append(res.Attempts, err.Error())
				continue
			}
			res.Attempts = append(res.Attempts, "ok")
			held = append(held, func() { m.Close() })
		}
		// A detach frees a slot.
		if len(held) > 0 {
			held[0]()
			held = held[1:]
			if m, err := client.Attach(ctx, "local", os.Getpagesize()); err != nil {
				res.Reattach = err.Error()
			} else {
				res.Reattach = "ok"
				defer m.Close()
			}
		}
	case "conns":
		for range n {
			c, err := wire.Dial(ctx, os.Getenv("VCORE_SOCKET"))
			if err != nil {
				res.Attempts = append(res.Attempts, err.Error())
				continue
			}
			held = append(held, func() { c.Close() })
			if err := c.SendMsg(&wire.Hello{Role: wire.RoleWorker, Pid: os.Getpid(), Node: -1, Version: wire.Version}); err != nil {
				res.Attempts = append(res.Attempts, "send: "+err.Error())
				continue
			}
			f, err := c.RecvContext(ctx)
			if err != nil {
				res.Attempts = append(res.Attempts, "recv: "+err.Error())
				continue
			}
			res.Attempts = append(res.Attempts, f.Type.String()+" "+string(f.Payload))
		}
	}
	b, _ := json.Marshal(res)
	out := os.Getenv("LIMIT_RESULT")
	if err := os.WriteFile(out+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done() // hold until stopped (or a minute passed)
	for _, f := range held {
		f()
	}
}

// limitSubsystem is a [[subsystem]] running TestLimitHelperProcess; extra
// is appended to the table.
func (c *cluster) limitSubsystem(name, mode string, n int, extra string) (sub, goFile, result string) {
	goFile, result = c.path(name+".go"), c.path(name+".json")
	sub = fmt.Sprintf(`
[[subsystem]]
name = %q
command = [%q, "-test.run=^TestLimitHelperProcess$", "-test.count=1"]
memory = "64MiB"
restart = "never"
env = { %s = %q, LIMIT_N = "%d", LIMIT_GO = %q, LIMIT_RESULT = %q }
%s`, name, os.Args[0], limitHelperEnv, mode, n, goFile, result, extra)
	return sub, goFile, result
}

// runLimitHelper lets the helper go and returns its result, with the
// vcore's descriptor count before and after.
func runLimitHelper(t *testing.T, c *cluster, goFile, result string) (res limitResult, fdsBefore, fdsAfter int) {
	t.Helper()
	vpid := c.vcores[0].cmd.Process.Pid
	fdsBefore = countFDs(t, vpid)
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "helper result "+result, func() (bool, string) {
		b, err := os.ReadFile(result)
		if err != nil {
			return false, err.Error()
		}
		if err := json.Unmarshal(b, &res); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	return res, fdsBefore, countFDs(t, vpid)
}

// checkPidsMax reads pids.max of subsystem name's cgroup.
func checkPidsMax(t *testing.T, c *cluster, name, want string) {
	t.Helper()
	rel := c.cgroup + "/node0/" + name
	file := filepath.Join(cgroups.DefaultRoot, "pids", rel, "pids.max")
	if cgroups.HostMode() == cgroups.ModeV2 {
		file = filepath.Join(cgroups.DefaultRoot, rel, "pids.max")
	}
	checkFile(t, file, want)
}

// TestLimitRegions: a subsystem at its max_regions gets AttachErr "limit"
// naming the key, the vcore's descriptors stay bounded, a detach frees a
// slot; its cgroup has the default pids.max.
func TestLimitRegions(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	sub, goFile, result := c.limitSubsystem("regions", "regions", 20, `max_regions = 8
[[subsystem.dataspace]]
name = "local"
size = "1MiB"
content = "pattern"
seed = 3
`)
	c.startVCore(0, c.vcoreConfig(0, sub))
	res, before, after := runLimitHelper(t, c, goFile, result)
	if len(res.Attempts) != 20 {
		t.Fatalf("helper made %d attempts, want 20: %+v", len(res.Attempts), res)
	}
	for i, a := range res.Attempts {
		if i < 8 && a != "ok" {
			t.Errorf("attach %d (under the cap) = %q, want ok", i, a)
		}
		if i >= 8 && (!strings.Contains(a, ": limit: ") || !strings.Contains(a, "subsystem regions already has 8 regions registered (max_regions = 8")) {
			t.Errorf("attach %d (over the cap) = %q, want a limit refusal naming max_regions", i, a)
		}
	}
	if res.Reattach != "ok" {
		t.Errorf("attach after a detach = %q, want ok", res.Reattach)
	}
	// The worker's connection and userfaultfd, little else.
	if after > before+4 {
		t.Errorf("vcore descriptors: %d before the helper, %d after; want at most 4 more", before, after)
	}
	t.Logf("vcore fds: %d before, %d after 8 regions and 12 refusals", before, after)
	checkPidsMax(t, c, "regions", "4096")
}

// TestLimitConnections: worker connections beyond max_connections get Error
// "limit" naming the key and are closed, so the vcore's descriptors stay
// bounded; pids_max is set in the subsystem's cgroup.
func TestLimitConnections(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	sub, goFile, result := c.limitSubsystem("conns", "conns", 40, "max_connections = 4\npids_max = 50\n")
	c.startVCore(0, c.vcoreConfig(0, sub))
	checkPidsMax(t, c, "conns", "50")
	res, before, after := runLimitHelper(t, c, goFile, result)
	if len(res.Attempts) != 40 {
		t.Fatalf("helper made %d attempts, want 40: %+v", len(res.Attempts), res)
	}
	for i, a := range res.Attempts {
		if i < 4 && !strings.HasPrefix(a, "HelloOK ") {
			t.Errorf("connection %d (under the cap) = %q, want HelloOK", i, a)
		}
		if i >= 4 {
			var e wire.Error
			typ, payload, _ := strings.Cut(a, " ")
			if typ != "Error" || json.Unmarshal([]byte(payload), &e) != nil || e.Code != wire.CodeLimit ||
				!strings.Contains(e.Msg, "subsystem conns already has 4 worker connections open (max_connections = 4") {
				t.Errorf("connection %d (over the cap) = %q, want Error limit naming max_connections", i, a)
			}
		}
	}
	// The refused connections are closed by the vcore: 4 held, a little slack.
	if after > before+4+4 {
		t.Errorf("vcore descriptors: %d before the helper, %d after; want at most 8 more", before, after)
	}
	t.Logf("vcore fds: %d before, %d after 4 held and 36 refused connections", before, after)
}

// idleHTTPHelper opens $LIMIT_N connections to $LIMIT_SOCKET, makes one
// keep-alive HTTP request on each and keeps them open (idle), prints how
// many got 200, 503 or an error ("ok=… refused=… errors=…", then the first
// refusal), prints "holding" and waits for its stdin to close.
func idleHTTPHelper() {
	var n int
	fmt.Sscan(os.Getenv("LIMIT_N"), &n)
	var ok, refused, failed int
	var firstRefusal string
	var conns []net.Conn
	for range n {
		c, err := net.Dial("unix", os.Getenv("LIMIT_SOCKET"))
		if err != nil {
			failed++
			continue
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.WriteString(c, "GET /v1/info HTTP/1.1\r\nHost: vcored\r\n\r\n"); err != nil {
			failed++
			continue
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			failed++
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			ok++
		case http.StatusServiceUnavailable:
			refused++
			if firstRefusal == "" {
				firstRefusal = strings.TrimSpace(string(body))
			}
		default:
			failed++
		}
	}
	fmt.Printf("ok=%d refused=%d errors=%d\nrefusal=%s\nholding\n", ok, refused, failed, firstRefusal)
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// TestLimitGroupMemberConnections: a member of core's socket group holding
// idle HTTP connections is capped at 256 (the rest get a 503 naming the
// cap), core's descriptors stay bounded, and root — a real vcore claiming
// its partition — still gets in. (Before, 19,986 idle connections of a
// group member took core to its fd limit and a vcore's claim failed.)
func TestLimitGroupMemberConnections(t *testing.T) {
	c := newCluster(t)
	g, err := user.LookupGroupId("65534")
	if err != nil {
		t.Skipf("no group 65534 for user nobody: %v", err)
	}
	core := c.startCore(c.coreConfig(fmt.Sprintf("socket_group = %q", g.Name)))
	os.Chmod(c.dir, 0o755)
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := c.path("e2e.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	before := countFDs(t, core.cmd.Process.Pid)
	const n = 300
	cmd := exec.Command(bin, "-test.run=^TestLimitHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), limitHelperEnv+"=http", fmt.Sprintf("LIMIT_N=%d", n), "LIMIT_SOCKET="+c.coreSocket())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Dir = c.dir
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	var out []string
	for sc := bufio.NewScanner(stdout); sc.Scan() && sc.Text() != "holding"; {
		out = append(out, sc.Text())
	}
	if len(out) < 2 || out[0] != fmt.Sprintf("ok=%d refused=%d errors=0", wire.DefaultMaxConnsPerUID, n-wire.DefaultMaxConnsPerUID) ||
		!strings.Contains(out[1], "uid 65534 already has 256 connections open") {
		t.Fatalf("group member's %d idle connections: %q; want %d served, the rest refused naming the per-uid cap", n, out, wire.DefaultMaxConnsPerUID)
	}
	after := countFDs(t, core.cmd.Process.Pid)
	t.Logf("core fds: %d before, %d with the group member's %d connections held", before, after, n)
	if after > before+wire.DefaultMaxConnsPerUID+8 {
		t.Errorf("core descriptors: %d before, %d after; want at most %d more", before, after, wire.DefaultMaxConnsPerUID+8)
	}
	// Root still gets in: a vcore claims its partition and serves.
	c.startVCore(0, c.vcoreConfig(0, ""))
	partition(t, c)
}
