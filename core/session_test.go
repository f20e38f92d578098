package core

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

// testCore is a Core with just what session handling needs: a real pager
// and the tables (no cgroups, no ledger, no socket).
func testCore(t *testing.T) *Core {
	t.Helper()
	pg, err := pager.New(pager.Options{Threads: 1, Forward: func(pager.Fault) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Close() })
	return &Core{
		log: slog.New(slog.DiscardHandler), mode: wire.PagerLocal, pg: pg,
		dataspaces: map[string]*dataspace{"shared": {src: content.Pattern(11)}},
		sessions:   map[string]*session{}, held: map[string]map[uint64]bool{}, owner: map[uint64]string{},
		failover: map[string]bool{}, regions: map[uint64][]wire.Region{}, locals: map[string]*holderContent{},
	}
}

// testSession is a vcore session of c named id; peer reads what core
// answers.
type testSession struct {
	s    *session
	peer *wire.Conn
}

func newTestSession(t *testing.T, id string) *testSession {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cu, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	su, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := wire.NewConn(su)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := wire.NewConn(cu)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close(); pc.Close() })
	return &testSession{s: &session{conn: sc, id: id, log: slog.New(slog.DiscardHandler)}, peer: pc}
}

// send hands m (with fds) to core as if ts's vcore had sent it.
func (c *Core) send(t *testing.T, ts *testSession, m wire.Message, fds ...int) {
	t.Helper()
	p, err := m.AppendMarshal(nil)
	if err != nil {
		t.Fatal(err)
	}
	if done := c.handle(ts.s, wire.Frame{Type: m.Type(), Payload: p, FDs: fds}); done {
		t.Fatalf("%s ended the session", m.Type())
	}
}

// answer reads core's next message to ts (nil when none comes soon).
func (ts *testSession) answer(t *testing.T) wire.Message {
	t.Helper()
	ts.peer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	f, err := ts.peer.Recv()
	if err != nil {
		return nil
	}
	m, err := wire.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// workerMemory maps length bytes and opens a uffd for this process.
func workerMemory(t *testing.T, length int) ([]byte, uint64, *linux.Uffd) {
	t.Helper()
	mem, err := linux.Mmap(length, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { linux.Munmap(mem) })
	u, err := linux.OpenUffd()
	if err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	t.Cleanup(func() { u.Close() })
	return mem, uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem)))), u
}

func dupFD(t *testing.T, u *linux.Uffd) int {
	t.Helper()
	d, err := u.Dup()
	if err != nil {
		t.Fatal(err)
	}
	return d.FD()
}

// TestForeignUffdRefused: a uffd id belongs to the vcore that added it. Another
// vcore's RegionAdd, RegionRemove, UffdRemove, Forward and UffdAdd naming it
// are refused and change nothing.
func TestForeignUffdRefused(t *testing.T) {
	c := testCore(t)
	a, b := newTestSession(t, "/run/a.sock"), newTestSession(t, "/run/b.sock")
	ps := os.Getpagesize()
	_, addr, u := workerMemory(t, 4*ps)
	t.Cleanup(func() { c.pg.Close() }) // before the munmap: nobody else reads the uffd's UNMAP event
	const id = 42
	c.send(t, a, &wire.DataspaceAdd{Subsystem: "s", Name: "heap", Content: wire.ContentPattern, Seed: 3})
	region := wire.Region{Start: addr, Length: uint64(4 * ps), Dataspace: "heap", Subsystem: "s"}
	c.send(t, a, &wire.UffdAdd{UffdID: id, WorkerPid: os.Getpid(), Serve: true, Regions: []wire.Region{region}}, dupFD(t, u))
	if m := a.answer(t); m != nil {
		t.Fatalf("owner got %#v", m)
	}
	before, err := c.pg.Regions(id)
	if err != nil || len(before) != 1 {
		t.Fatalf("regions %v, %v", before, err)
	}

	c.send(t, b, &wire.DataspaceAdd{Subsystem: "s", Name: "evil", Content: wire.ContentPattern, Seed: 99})
	for _, m := range []wire.Message{
		&wire.RegionAdd{UffdID: id, Region: wire.Region{Start: addr, Length: uint64(ps), Dataspace: "evil", Subsystem: "s"}},
		&wire.RegionRemove{UffdID: id, Start: addr, Length: uint64(ps)},
		&wire.UffdRemove{UffdID: id},
	} {
		c.send(t, b, m)
		if e, ok := b.answer(t).(*wire.Error); !ok || e.Code != wire.CodeDenied {
			t.Errorf("%s of a's uffd from b: answer %#v, want Error denied", m.Type(), e)
		}
	}
	c.send(t, b, &wire.Forward{UffdID: id, Addr: addr, Dataspace: "heap", SeqNo: 7})
	if d, ok := b.answer(t).(*wire.ForwardDone); !ok || d.SeqNo != 7 || d.Errno == 0 {
		t.Errorf("Forward for a's uffd from b: answer %#v, want ForwardDone with an errno", d)
	}
	fd := dupFD(t, u)
	c.send(t, b, &wire.UffdAdd{UffdID: id, WorkerPid: os.Getpid()}, fd)
	if e, ok := b.answer(t).(*wire.Error); !ok || e.Code != wire.CodeConflict {
		t.Errorf("UffdAdd of a's id from b: answer %#v, want Error conflict", e)
	}
	if !closed(fd) {
		t.Errorf("core kept the descriptor of a refused UffdAdd")
	}
	after, err := c.pg.Regions(id)
	if err != nil || len(after) != 1 || after[0] != before[0] {
		t.Errorf("a's regions changed: %+v (err %v), want %+v", after, err, before)
	}
	if c.owner[id] != a.s.id {
		t.Errorf("uffd %d owned by %q", id, c.owner[id])
	}
}

// TestRegionAddIsAuthoritative: the vcore's view wins. Detaching a region
// (RegionRemove) and attaching another dataspace at the same address
// (RegionAdd) leaves core serving the new dataspace; an identical re-send
// changes nothing; a region naming a dataspace neither core owns nor the
// vcore declared is refused.
func TestRegionAddIsAuthoritative(t *testing.T) {
	c := testCore(t)
	a := newTestSession(t, "/run/a.sock")
	ps := os.Getpagesize()
	const pages = 4
	mem, addr, u := workerMemory(t, pages*ps)
	t.Cleanup(func() { c.pg.Close() })
	const id = 7
	c.send(t, a, &wire.DataspaceAdd{Subsystem: "w", Name: "a", Content: wire.ContentPattern, Seed: 3})
	c.send(t, a, &wire.DataspaceAdd{Subsystem: "w", Name: "b", Content: wire.ContentPattern, Seed: 5})
	ra := wire.Region{Start: addr, Length: pages * uint64(ps), Dataspace: "a", Subsystem: "w"}
	rb := ra
	rb.Dataspace = "b"
	c.send(t, a, &wire.UffdAdd{UffdID: id, WorkerPid: os.Getpid(), Serve: true, Regions: []wire.Region{ra}}, dupFD(t, u))

	// Replace without a RegionRemove (the vcore's message was lost or the
	// region is re-sent after a reconnect): b wins.
	c.send(t, a, &wire.RegionAdd{UffdID: id, Region: rb})
	// An identical re-send is a no-op.
	c.send(t, a, &wire.RegionAdd{UffdID: id, Region: rb})
	if m := a.answer(t); m != nil {
		t.Fatalf("core answered %#v", m)
	}
	rs, _ := c.pg.Regions(id)
	if len(rs) != 1 || rs[0].Dataspace != "b" {
		t.Fatalf("core's regions %+v, want b only", rs)
	}
	if err := c.pg.Resolve(id, uintptr(addr)); err != nil {
		t.Fatal(err)
	}
	if err := content.VerifyPattern(mem[:ps], 5, 0); err != nil {
		t.Errorf("page served after the replace: %v", err)
	}

	// Detach: core forgets the range, so nothing serves it from b any more.
	c.send(t, a, &wire.RegionRemove{UffdID: id, Start: rb.Start, Length: rb.Length})
	if rs, _ := c.pg.Regions(id); len(rs) != 0 {
		t.Errorf("after RegionRemove core still has %+v", rs)
	}
	if d := c.regions[id]; len(d) != 0 {
		t.Errorf("after RegionRemove core still describes %+v", d)
	}
	// Re-attach a at the same address.
	c.send(t, a, &wire.RegionAdd{UffdID: id, Region: ra})
	if err := c.pg.Resolve(id, uintptr(addr)+uintptr(ps)); err != nil {
		t.Fatal(err)
	}
	if err := content.VerifyPattern(mem[ps:2*ps], 3, uint64(ps)); err != nil {
		t.Errorf("page served after re-attaching a: %v", err)
	}

	for _, bad := range []wire.Region{
		{Start: addr, Length: uint64(ps), Dataspace: "nobody-declared", Subsystem: "w"},
		{Start: addr, Length: uint64(ps), Dataspace: "a", Subsystem: "other"},
		{Start: addr, Length: uint64(ps), Dataspace: "not-core-owned", Forward: true},
	} {
		c.send(t, a, &wire.RegionAdd{UffdID: id, Region: bad})
		if _, ok := a.answer(t).(*wire.Error); !ok {
			t.Errorf("RegionAdd %+v was not refused", bad)
		}
	}
	if rs, _ := c.pg.Regions(id); len(rs) != 1 || rs[0].Dataspace != "a" {
		t.Errorf("refused regions changed core's table: %+v", rs)
	}
}

// TestDataspaceAddFile: file content arrives as a descriptor and is served
// from it; without one it is refused. Core opens no path.
func TestDataspaceAddFile(t *testing.T) {
	c := testCore(t)
	a := newTestSession(t, "/run/a.sock")
	path := filepath.Join(t.TempDir(), "blob")
	data := make([]byte, os.Getpagesize())
	for i := range data {
		data[i] = byte(i*7 + 1)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c.send(t, a, &wire.DataspaceAdd{Subsystem: "w", Name: "f", Content: wire.ContentFile})
	if e, ok := a.answer(t).(*wire.Error); !ok || e.Code != wire.CodeBadRequest {
		t.Errorf("file DataspaceAdd without a descriptor: %#v", e)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Dup(int(f.Fd()))
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c.send(t, a, &wire.DataspaceAdd{Subsystem: "w", Name: "f", Content: wire.ContentFile}, fd)
	if m := a.answer(t); m != nil {
		t.Fatalf("core answered %#v", m)
	}
	d := c.locals[a.s.id].ds[localKey{"w", "f"}]
	if d == nil {
		t.Fatal("not declared")
	}
	got := make([]byte, len(data))
	if err := d.src.Fill(got, 0); err != nil || string(got) != string(data) {
		t.Errorf("file content served from the descriptor differs (err %v)", err)
	}
	c.mu.Lock()
	c.dropLocalsLocked(a.s.id)
	c.mu.Unlock()
	if !closed(fd) {
		t.Errorf("descriptor %d still open after the holder's content was dropped", fd)
	}
}

// closed reports whether fd is not open in this process.
func closed(fd int) bool {
	var st syscall.Stat_t
	return syscall.Fstat(fd, &st) == syscall.EBADF
}

// TestReclaimNeedsSameNode: an orphaned lease (whose uffds a re-claim
// receives) goes back only to a claim of the same holder for the same node
// and CPUs.
func TestReclaimNeedsSameNode(t *testing.T) {
	l, _, err := OpenLedger(filepath.Join(t.TempDir(), "ledger.json"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := Claim{Node: 0, CPUs: hw.MustParse[hw.CPU]("1"), Holder: "/run/v.sock", Pid: 10}
	if _, _, err := l.Grant(a); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := l.Orphan(a.Holder); !ok || err != nil {
		t.Fatalf("not orphaned (err %v)", err)
	}
	other := a
	other.Node = 1
	if _, _, err := l.Grant(other); !errors.Is(err, ErrConflict) {
		t.Errorf("re-claim on another node: %v, want a conflict", err)
	}
	if _, re, err := l.Grant(a); err != nil || !re {
		t.Errorf("re-claim on the same node: reclaimed=%v err=%v", re, err)
	}
}
