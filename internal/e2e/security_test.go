package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/vcore/client"
)

// The test binary doubles as a helper process: TestMain runs runHelper
// instead of the tests when helperEnv is set. A helper runs as a worker
// subsystem of a vcore (modes "f2", "soak") or as an unprivileged peer of
// core (mode "peer", started as nobody).
const helperEnv = "VCORED_E2E_HELPER"

// helperBin is a copy of the test binary that nobody may execute.
func (c *cluster) helperBin() string {
	c.t.Helper()
	dst := c.path("helper.test")
	if _, err := os.Stat(dst); err == nil {
		return dst
	}
	src, err := os.Open(os.Args[0])
	if err != nil {
		c.t.Fatal(err)
	}
	defer src.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := io.Copy(out, src); err != nil {
		c.t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		c.t.Fatal(err)
	}
	os.Chmod(c.dir, 0o755)
	return dst
}

// helperSubsystem is a [[subsystem]] running this binary as a worker helper
// with env; local declares its dataspaces.
func (c *cluster) helperSubsystem(name string, env map[string]string, local string) string {
	s := fmt.Sprintf(`
[[subsystem]]
name = %q
command = [%q]
memory = "96MiB"
restart = "never"
[subsystem.env]
%s = %q
`, name, c.helperBin(), helperEnv, env["mode"])
	for k, v := range env {
		if k != "mode" {
			s += fmt.Sprintf("%s = %q\n", k, v)
		}
	}
	return s + local
}

// patternDataspaces declares local dataspaces name=seed of pages pages.
func patternDataspaces(pages int, seeds map[string]uint64) string {
	var b strings.Builder
	for _, name := range []string{"a", "b", "c", "d"} {
		seed, ok := seeds[name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "[[subsystem.dataspace]]\nname = %q\nsize = \"%dKiB\"\ncontent = \"pattern\"\nseed = %d\n", name, pages*os.Getpagesize()/1024, seed)
	}
	return b.String()
}

// helperResult is what a worker helper writes when it ends.
type helperResult struct {
	Cycles   int      `json:"cycles"`
	SameAddr bool     `json:"same_addr"`
	BadPages int      `json:"bad_pages"`
	Errors   []string `json:"errors"`
}

func readHelperResult(t *testing.T, path string, timeout time.Duration) helperResult {
	t.Helper()
	var r helperResult
	eventually(t, timeout, "helper result "+path, func() (bool, string) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		return json.Unmarshal(b, &r) == nil, string(b)
	})
	return r
}

// runHelper is the helper process's main.
func runHelper(mode string) int {
	var err error
	switch mode {
	case "f2":
		err = helperF2()
	case "soak":
		err = helperSoak()
	case "peer":
		err = helperPeer()
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	return 0
}

func writeResult(r helperResult) error {
	b, _ := json.Marshal(r)
	tmp := os.Getenv("RESULT") + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, os.Getenv("RESULT"))
}

func waitFile(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s did not appear within %v", path, timeout)
}

// verifyPages checks every page of b against Pattern(seed) and returns the
// number of bad pages and a description of the first. Reading faults the
// pages in.
func verifyPages(b []byte, seed uint64) (bad int, first string) {
	ps := os.Getpagesize()
	for off := 0; off < len(b); off += ps {
		if err := content.VerifyPattern(b[off:off+ps], seed, uint64(off)); err != nil {
			if bad == 0 {
				first = err.Error()
			}
			bad++
		}
	}
	return bad, first
}

// attachRetry attaches name, retrying while the vcore is away (killed and
// not yet restarted).
func attachRetry(ctx context.Context, name string, size int) (*client.Mapping, error) {
	deadline := time.Now().Add(90 * time.Second)
	for {
		m, err := client.Attach(ctx, name, size)
		if err == nil {
			return m, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// helperF2: attach a, verify it, detach; attach b at the same address; say
// ready; wait for the gate (the test kills the vcore meanwhile); verify b.
func helperF2() error {
	ctx := context.Background()
	pages, _ := strconv.Atoi(os.Getenv("PAGES"))
	size := pages * os.Getpagesize()
	r := helperResult{}
	var mb *client.Mapping
	for try := 0; try < 20 && !r.SameAddr; try++ {
		ma, err := client.Attach(ctx, "a", size)
		if err != nil {
			return err
		}
		if bad, first := verifyPages(ma.Bytes(), 3); bad > 0 {
			r.Errors = append(r.Errors, "a before detach: "+first)
		}
		addr := ma.Addr()
		if err := ma.Close(); err != nil {
			return err
		}
		if mb, err = client.Attach(ctx, "b", size); err != nil {
			return err
		}
		if r.SameAddr = mb.Addr() == addr; !r.SameAddr {
			mb.Close()
		}
	}
	if !r.SameAddr {
		return writeResult(r)
	}
	if err := os.WriteFile(os.Getenv("READY"), nil, 0o644); err != nil {
		return err
	}
	if err := waitFile(os.Getenv("GATE"), 60*time.Second); err != nil {
		return err
	}
	bad, first := verifyPages(mb.Bytes(), 5)
	r.BadPages = bad
	if bad > 0 {
		r.Errors = append(r.Errors, fmt.Sprintf("b after failover: %d of %d pages wrong, first: %s", bad, pages, first))
	}
	return writeResult(r)
}

// helperSoak: attach a random dataspace, verify every page, detach; again
// until STOP exists (at most CYCLES times); the vcore is killed and
// restarted meanwhile. PROGRESS gets the number of cycles done.
func helperSoak() error {
	ctx := context.Background()
	pages, _ := strconv.Atoi(os.Getenv("PAGES"))
	cycles, _ := strconv.Atoi(os.Getenv("CYCLES"))
	size := pages * os.Getpagesize()
	names := []string{"a", "b", "c"}
	seeds := map[string]uint64{"a": 3, "b": 5, "c": 7}
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 1))
	r := helperResult{}
	for i := 0; i < cycles; i++ {
		if _, err := os.Stat(os.Getenv("STOP")); err == nil {
			break
		}
		name := names[rng.IntN(len(names))]
		m, err := attachRetry(ctx, name, size)
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("cycle %d: attach %s: %v", i, name, err))
			break
		}
		if bad, first := verifyPages(m.Bytes(), seeds[name]); bad > 0 {
			r.BadPages += bad
			r.Errors = append(r.Errors, fmt.Sprintf("cycle %d: %s at %#x: %d of %d pages wrong, first: %s", i, name, m.Addr(), bad, pages, first))
		}
		m.Close()
		r.Cycles = i + 1
		os.WriteFile(os.Getenv("PROGRESS"), []byte(strconv.Itoa(r.Cycles)), 0o644)
	}
	return writeResult(r)
}

// helperPeer runs as an unprivileged member of socket_group: it reads
// core's status over HTTP, then tries the framed protocol as a vcore
// (Hello, Claim as HOLDER, Release). It prints one JSON line per step.
func helperPeer() error {
	socket := os.Getenv("SOCKET")
	out := json.NewEncoder(os.Stdout)
	var info api.Info
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := api.NewClient(socket).Get(ctx, "/v1/info", &info)
	out.Encode(map[string]string{"step": "http", "err": errString(err)})

	conn, err := wire.Dial(ctx, socket)
	if err != nil {
		out.Encode(map[string]string{"step": "dial", "err": err.Error()})
		return nil
	}
	defer conn.Close()
	step := func(name string, m wire.Message) bool {
		// A refusing core may answer and close before this send: read its
		// answer even when the send fails.
		sendErr := conn.SendMsg(m)
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		f, err := conn.Recv()
		if err != nil {
			out.Encode(map[string]string{"step": name, "err": fmt.Sprintf("send: %v, recv: %v", sendErr, err)})
			return false
		}
		f.CloseFDs()
		got, err := wire.Decode(f)
		if e, ok := got.(*wire.Error); ok {
			out.Encode(map[string]string{"step": name, "err": string(e.Code) + ": " + e.Msg})
			return false
		}
		out.Encode(map[string]string{"step": name, "answer": f.Type.String(), "err": errString(err)})
		return err == nil
	}
	node, _ := strconv.Atoi(os.Getenv("NODE"))
	if !step("hello", &wire.Hello{Role: wire.RoleVCore, Pid: os.Getpid(), Node: node, Version: wire.Version}) {
		return nil
	}
	if !step("claim", &wire.Claim{Node: node, VCoreID: os.Getenv("HOLDER"), Socket: os.Getenv("HOLDER")}) {
		return nil
	}
	step("release", &wire.Release{Reason: "nobody"})
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// runPeer runs the peer helper as nobody (uid/gid 65534) and returns its
// steps by name.
func (c *cluster) runPeer(t *testing.T, holder string) map[string]map[string]string {
	t.Helper()
	cmd := exec.Command(c.helperBin())
	cmd.Env = append(os.Environ(), helperEnv+"=peer", "SOCKET="+c.coreSocket(), "HOLDER="+holder, "NODE=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("peer helper as nobody: %v\n%s%s", err, out, stderr.String())
	}
	steps := map[string]map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var s map[string]string
		if err := dec.Decode(&s); err != nil {
			break
		}
		steps[s["step"]] = s
	}
	t.Logf("as nobody (holder %q): %s", holder, bytes.TrimSpace(out))
	return steps
}

// TestSecurityGroupMemberIsReadOnly: a member of socket_group (nobody, in
// its primary group) reads core's status but cannot speak the framed
// protocol: no claim of a free node, no re-claim of an orphaned partition
// under its vcore's id (which would hand it a root worker's uffds), no
// Release. The real vcore re-claims its partition afterwards.
func TestSecurityGroupMemberIsReadOnly(t *testing.T) {
	c := newCluster(t)
	core := c.startCore(strings.Replace(c.coreConfig(`socket_group = "65534"`), `orphan_grace = "30s"`, `orphan_grace = "10m"`, 1))
	c.helperBin() // the directory must be reachable by nobody

	// A free node: the member cannot claim it.
	steps := c.runPeer(t, "/tmp/evil.sock")
	if steps["http"] == nil || steps["http"]["err"] != "" {
		t.Errorf("group member could not read the status: %v", steps["http"])
	}
	if h := steps["hello"]; h == nil || !strings.HasPrefix(h["err"], "denied") {
		t.Errorf("group member's Hello as a vcore: %v, want denied", h)
	}
	if steps["claim"] != nil {
		t.Errorf("group member got to Claim: %v", steps["claim"])
	}
	for _, p := range get[[]api.Partition](t, c.coreSocket(), "/v1/partitions") {
		if p.Node == 0 && p.State != "free" {
			t.Errorf("node 0 after the member's attempt: %+v", p)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(cgroups.DefaultRoot, "*", c.cgroup, "node0*")); len(m) > 0 {
		t.Errorf("the member's attempt created cgroups %v", m)
	}

	// An orphaned partition with a running subsystem: the member cannot
	// re-claim it under the vcore's id, nor release it.
	v := c.startVCore(0, c.vcoreConfig(0, sleeper))
	spid := sleeperPid(t, c.vcoreSocket(0))
	holder := partition(t, c).Holder.ID
	c.signal(v, syscall.SIGKILL)
	eventually(t, 10*time.Second, "partition orphaned", func() (bool, string) {
		p := partition(t, c)
		return p.State == "orphaned", p.State
	})
	steps = c.runPeer(t, holder)
	if h := steps["hello"]; h == nil || !strings.HasPrefix(h["err"], "denied") {
		t.Errorf("group member's re-claim: Hello answered %v, want denied", h)
	}
	if p := partition(t, c); p.State != "orphaned" || p.Holder.ID != holder {
		t.Errorf("partition after the member's re-claim attempt: %+v", p)
	}
	if !alive(spid) {
		t.Errorf("the subsystem died")
	}
	if !bytes.Contains(core.log.Bytes(), []byte("refused a framed-protocol peer")) {
		t.Errorf("core did not log the refusal:\n%s", core.log)
	}
	// The real vcore comes back and re-claims.
	c.startVCore(0, c.vcoreConfig(0, sleeper))
	eventually(t, 15*time.Second, "partition live again", func() (bool, string) {
		p := partition(t, c)
		return p.State == "live", p.State
	})
}

// fakeVCore is the test process speaking core's framed protocol as root.
type fakeVCore struct {
	conn *wire.Conn
}

func (c *cluster) dialFakeVCore(t *testing.T, holder string) *fakeVCore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := wire.Dial(ctx, c.coreSocket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeVCore{conn: conn}
	f.roundTrip(t, &wire.Hello{Role: wire.RoleVCore, Pid: os.Getpid(), Node: 0, Version: wire.Version})
	ok := f.roundTrip(t, &wire.Claim{Node: 0, CPUs: hw.NewSet(hw.CPU(c.partitionCPU)), VCoreID: holder, Socket: holder})
	if _, isOK := ok.(*wire.ClaimOK); !isOK {
		t.Fatalf("claim: %#v", ok)
	}
	return f
}

// roundTrip sends m and returns the answer (nil if none within a second).
func (f *fakeVCore) roundTrip(t *testing.T, m wire.Message, fds ...int) wire.Message {
	t.Helper()
	if err := f.conn.SendMsg(m, fds...); err != nil {
		t.Fatal(err)
	}
	return f.answer(t)
}

func (f *fakeVCore) answer(t *testing.T) wire.Message {
	t.Helper()
	f.conn.SetReadDeadline(time.Now().Add(time.Second))
	fr, err := f.conn.Recv()
	if err != nil {
		return nil
	}
	fr.CloseFDs()
	m, err := wire.Decode(fr)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// coreOpens reports whether core's process has path open.
func coreOpens(t *testing.T, pid int, path string) bool {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name())); err == nil && l == path {
			return true
		}
	}
	return false
}

// TestSecurityNoPathOnTheWire: even a root peer cannot make core open a
// file by naming it: a region with "content":"file","path":... (the old
// encoding) is decoded without the path and refused, because it names a
// dataspace the vcore never declared; core never opens the file. A file
// dataspace reaches core only as a descriptor (DataspaceAdd), and Release
// is refused while the partition still runs a process.
func TestSecurityNoPathOnTheWire(t *testing.T) {
	c := newCluster(t)
	core := c.startCore(c.coreConfig(""))
	secret := c.path("secret")
	if err := os.WriteFile(secret, bytes.Repeat([]byte("S"), 4*os.Getpagesize()), 0o600); err != nil {
		t.Fatal(err)
	}
	f := c.dialFakeVCore(t, c.path("fake.sock"))

	ps := os.Getpagesize()
	mem, err := linux.Mmap(4*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	u, err := linux.OpenUffd()
	if err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	addr := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
	region := fmt.Sprintf(`{"start":%d,"length":%d,"dataspace":"x","offset":0,"content":"file","path":%q}`, addr, 4*ps, secret)
	dup, err := u.Dup()
	if err != nil {
		t.Fatal(err)
	}
	id := uint64(os.Getpid())<<32 | 1
	// Raw frames: what an old or hostile vcore would send.
	if err := f.conn.Send(wire.TypeUffdAdd, fmt.Appendf(nil, `{"uffd_id":%d,"worker_pid":%d,"serve":false,"regions":[%s]}`, id, os.Getpid(), region), dup.FD()); err != nil {
		t.Fatal(err)
	}
	dup.Close()
	if err := f.conn.Send(wire.TypeRegionAdd, fmt.Appendf(nil, `{"uffd_id":%d,"region":%s}`, id, region)); err != nil {
		t.Fatal(err)
	}
	if e, ok := f.answer(t).(*wire.Error); !ok || !strings.Contains(e.Msg, "not declared") {
		t.Errorf("RegionAdd with a path: answer %#v, want a refusal (dataspace not declared)", e)
	}
	if coreOpens(t, core.cmd.Process.Pid, secret) {
		t.Errorf("core opened %s, named by a peer", secret)
	}
	if p := get[api.Pager](t, c.coreSocket(), "/v1/pager"); p.TrackedPages != 0 {
		t.Errorf("core registered the refused region: %+v", p)
	}

	// A declared file dataspace arrives as a descriptor: core has the file
	// open (the same inode), never by a path it resolved itself.
	sf, err := os.Open(secret)
	if err != nil {
		t.Fatal(err)
	}
	if a := f.roundTrip(t, &wire.DataspaceAdd{Subsystem: "s", Name: "f", Content: wire.ContentFile, Size: uint64(4 * ps)}, int(sf.Fd())); a != nil {
		t.Errorf("DataspaceAdd: %#v", a)
	}
	sf.Close()
	if a := f.roundTrip(t, &wire.RegionAdd{UffdID: id, Region: wire.Region{Start: addr, Length: uint64(4 * ps), Dataspace: "f", Subsystem: "s"}}); a != nil {
		t.Errorf("RegionAdd of the declared dataspace: %#v", a)
	}
	if p := get[api.Pager](t, c.coreSocket(), "/v1/pager"); p.TrackedPages != 4 {
		t.Errorf("core tracks %d pages, want the 4 of the declared region", p.TrackedPages)
	}

	// Release is refused while a process runs in the partition.
	cgm, err := cgroups.New(cgroups.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := cgm.Load(partition(t, c).Cgroup)
	if err != nil {
		t.Fatal(err)
	}
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleep.Process.Kill()
	if err := g.AddProc(sleep.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if e, ok := f.roundTrip(t, &wire.Release{Reason: "test"}).(*wire.Error); !ok || e.Code != wire.CodeConflict {
		t.Errorf("Release with a process in the partition: %#v, want conflict", e)
	}
	if p := partition(t, c); p.State != "live" {
		t.Errorf("partition %q after a refused Release", p.State)
	}
	sleep.Process.Kill()
	sleep.Wait()
	eventually(t, 10*time.Second, "partition empty", func() (bool, string) {
		pids, err := g.Procs()
		return err == nil && len(pids) == 0, fmt.Sprint(pids, err)
	})
	if a, ok := f.roundTrip(t, &wire.Release{Reason: "test"}).(*wire.Ack); !ok || a.Of != wire.TypeRelease {
		t.Errorf("Release of an empty partition: %#v, want Ack", a)
	}
	// Core dropped the uffd and the file with the lease: the munmap below
	// does not wait for a reader of the uffd's UNMAP event.
	eventually(t, 10*time.Second, "core closed the file", func() (bool, string) {
		return !coreOpens(t, core.cmd.Process.Pid, secret), "still open"
	})
	u.Close()
	linux.Munmap(mem)
}

// TestFailoverAfterReattachServesNewDataspace (issue F.2): a worker attaches
// local dataspace a (seed 3), detaches it, attaches b (seed 5) at the same
// address; the vcore is killed; core serves b's pages from b, never a's.
func TestFailoverAfterReattachServesNewDataspace(t *testing.T) {
	c := newCluster(t)
	c.startCore(strings.Replace(c.coreConfig(""), `orphan_grace = "30s"`, `orphan_grace = "10m"`, 1))
	const pages = 16
	ready, gate, res := c.path("ready"), c.path("gate"), c.path("result.json")
	cfg := c.vcoreConfig(0, c.helperSubsystem("w", map[string]string{
		"mode": "f2", "PAGES": strconv.Itoa(pages), "READY": ready, "GATE": gate, "RESULT": res,
	}, patternDataspaces(pages, map[string]uint64{"a": 3, "b": 5})))
	v := c.startVCore(0, cfg)
	eventually(t, 120*time.Second, "worker re-attached", func() (bool, string) {
		if _, err := os.Stat(res); err == nil {
			return true, ""
		}
		_, err := os.Stat(ready)
		return err == nil, fmt.Sprint(err)
	})
	if _, err := os.Stat(res); err == nil {
		r := readHelperResult(t, res, time.Second)
		t.Skipf("the kernel did not map b at a's address in 20 tries: %+v", r)
	}
	c.signal(v, syscall.SIGKILL)
	os.WriteFile(gate, nil, 0o644)
	r := readHelperResult(t, res, 60*time.Second)
	if r.BadPages != 0 || len(r.Errors) != 0 {
		t.Fatalf("after failover: %+v", r)
	}
	for _, ds := range get[api.Pager](t, c.coreSocket(), "/v1/pager").Dataspaces {
		if ds.Dataspace == "a" && ds.Faults > 0 {
			t.Errorf("core served %d faults from a after it was detached", ds.Faults)
		}
	}
	// A vcore takes the partition back and releases it cleanly.
	v = c.startVCore(0, cfg)
	eventually(t, 15*time.Second, "partition live", func() (bool, string) {
		p := partition(t, c)
		return p.State == "live", p.State
	})
	c.signal(v, syscall.SIGTERM)
	for _, p := range get[[]api.Partition](t, c.coreSocket(), "/v1/partitions") {
		if p.Node == 0 && p.State != "free" {
			t.Errorf("partition after the vcore stopped: %+v\ncore log:\n%s\nvcore log:\n%s", p, c.core.log, v.log)
		}
	}
}

// TestReattachSoakWithVCoreKills: a worker attaches, verifies and detaches
// a random one of three dataspaces (distinct seeds) in a loop while the
// vcore is killed with SIGKILL at random moments and restarted; every page
// of every cycle holds its own dataspace's pattern.
func TestReattachSoakWithVCoreKills(t *testing.T) {
	if testing.Short() {
		t.Skip("soak: skipped under -short")
	}
	c := newCluster(t)
	c.startCore(strings.Replace(c.coreConfig(""), `orphan_grace = "30s"`, `orphan_grace = "10m"`, 1))
	const pages, maxCycles, kills = 16, 5000, 10
	res, progress, stop := c.path("result.json"), c.path("progress"), c.path("stop")
	cfg := c.vcoreConfig(0, c.helperSubsystem("w", map[string]string{
		"mode": "soak", "PAGES": strconv.Itoa(pages), "CYCLES": strconv.Itoa(maxCycles), "RESULT": res, "PROGRESS": progress, "STOP": stop,
	}, patternDataspaces(pages, map[string]uint64{"a": 3, "b": 5, "c": 7})))
	v := c.startVCore(0, cfg)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	done := func() int {
		b, _ := os.ReadFile(progress)
		n, _ := strconv.Atoi(string(b))
		return n
	}
	// progressed waits until the worker finished another cycle (scaled by
	// progress, not by time: a slow day only makes the test longer).
	progressed := func() {
		start := done()
		eventually(t, 120*time.Second, "worker progress", func() (bool, string) {
			_, err := os.Stat(res)
			return err == nil || done() > start, fmt.Sprintf("%d cycles", done())
		})
		if _, err := os.Stat(res); err == nil {
			t.Fatalf("the worker ended early: %+v", readHelperResult(t, res, time.Second))
		}
	}
	killed := 0
	for ; killed < kills; killed++ {
		progressed()
		time.Sleep(time.Duration(rng.IntN(100)) * time.Millisecond) // a random point of a cycle
		c.signal(v, syscall.SIGKILL)
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		v = c.startVCore(0, cfg)
	}
	progressed()
	os.WriteFile(stop, nil, 0o644)
	r := readHelperResult(t, res, 120*time.Second)
	t.Logf("soak: %d attach/verify/detach cycles, %d vcore kills", r.Cycles, killed)
	if r.Cycles < kills || r.BadPages != 0 || len(r.Errors) != 0 {
		t.Fatalf("soak result: %+v", r)
	}
}
