package client

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
)

const helperEnv = "VCORED_CLIENT_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

// patternWord is the fake vcore's content: the 8-byte word at dataspace
// offset off.
func patternWord(seed, off uint64) uint64 { return (off ^ seed) * 0x9E3779B97F4A7C15 }

// fakeVCore is a minimal vcore: it greets workers, takes the uffd from the
// first Attach, and (when serve is set) does UFFDIO_API + UFFDIO_REGISTER
// and resolves every fault with the pattern of the dataspace offset.
type fakeVCore struct {
	t     *testing.T
	serve bool
	seed  uint64
	// dropAfterAttach closes a connection right after the AttachOK of an
	// address the fake has not seen before (a re-sent one does not).
	dropAfterAttach bool
	seen            map[uint64]bool
	refuse          string // dataspace name answered with AttachErr

	mu       sync.Mutex
	conns    int
	fds      int // uffds received
	attaches []wire.Attach
	detaches []uint64
	faults   int
}

func (v *fakeVCore) start(t *testing.T) (path string) {
	path = filepath.Join(t.TempDir(), fmt.Sprintf("vcore-%d.sock", os.Getpid()))
	l, err := wire.Listen(path, 0o600, -1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Serve(context.Background(), v.handle, nil) }()
	t.Cleanup(func() {
		l.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

func (v *fakeVCore) handle(ctx context.Context, c *wire.Conn) {
	v.mu.Lock()
	v.conns++
	v.mu.Unlock()
	f, err := c.Recv()
	if err != nil {
		return
	}
	var h wire.Hello
	if f.Type != wire.TypeHello || h.Unmarshal(f.Payload) != nil || h.Role != wire.RoleWorker || h.Pid != c.Peer().Pid {
		c.SendMsg(&wire.Error{Code: wire.CodeBadRequest, Msg: "bad Hello"})
		return
	}
	c.SendMsg(&wire.HelloOK{Server: "vcore", Pid: os.Getpid(), Node: 0, Version: wire.Version})

	var (
		uffd    *linux.Uffd
		pager   *fakePager
		regions = map[uint64]uint64{} // addr -> length
	)
	defer func() {
		if pager != nil {
			pager.stop()
		}
		if uffd != nil {
			uffd.Close()
		}
	}()
	for {
		f, err := c.Recv()
		if err != nil {
			return
		}
		m, err := wire.Decode(f)
		if err != nil {
			f.CloseFDs()
			c.SendMsg(&wire.Error{Code: wire.CodeBadRequest, Msg: err.Error()})
			return
		}
		switch m := m.(type) {
		case *wire.Attach:
			if len(f.FDs) == 1 {
				v.mu.Lock()
				v.fds++
				v.mu.Unlock()
				if uffd != nil {
					linux.CloseFDs(f.FDs) // already have it
				} else {
					uffd = linux.NewUffd(f.FDs[0])
					if v.serve {
						if _, err := uffd.API(0); err != nil {
							v.t.Errorf("UFFDIO_API: %v", err)
							return
						}
						if pager, err = startPager(uffd, v); err != nil {
							v.t.Errorf("pager: %v", err)
							return
						}
					}
				}
			}
			v.mu.Lock()
			v.attaches = append(v.attaches, *m)
			v.mu.Unlock()
			if uffd == nil {
				c.SendMsg(&wire.AttachErr{Name: m.Name, Addr: m.Addr, Code: wire.CodeBadRequest, Msg: "the first Attach must carry the userfaultfd"})
				continue
			}
			if m.Name == v.refuse {
				c.SendMsg(&wire.AttachErr{Name: m.Name, Addr: m.Addr, Code: wire.CodeNotFound, Msg: "no such dataspace"})
				continue
			}
			if v.serve {
				if _, err := uffd.Register(uintptr(m.Addr), uintptr(m.Length), linux.UFFDIO_REGISTER_MODE_MISSING); err != nil {
					c.SendMsg(&wire.AttachErr{Name: m.Name, Addr: m.Addr, Code: wire.CodeInternal, Msg: err.Error()})
					continue
				}
				pager.add(m.Addr, m.Length)
			}
			regions[m.Addr] = m.Length
			c.SendMsg(&wire.AttachOK{Name: m.Name, Addr: m.Addr, Node: 0, Size: m.Length, Content: wire.ContentPattern, Seed: v.seed, Bind: true})
			v.mu.Lock()
			if v.seen == nil {
				v.seen = map[uint64]bool{}
			}
			fresh := !v.seen[m.Addr]
			v.seen[m.Addr] = true
			v.mu.Unlock()
			if v.dropAfterAttach && fresh {
				return
			}
		case *wire.Detach:
			v.mu.Lock()
			v.detaches = append(v.detaches, m.Addr)
			v.mu.Unlock()
			if n, ok := regions[m.Addr]; ok && v.serve {
				pager.remove(m.Addr)
				uffd.Unregister(uintptr(m.Addr), uintptr(n)) // the range may already be unmapped
			}
			delete(regions, m.Addr)
		default:
			f.CloseFDs()
		}
	}
}

// fakePager resolves faults on one uffd until stopped (epoll on the uffd
// and an eventfd).
type fakePager struct {
	u      *linux.Uffd
	v      *fakeVCore
	ep     *linux.Epoll
	stopFD *linux.EventFD
	done   chan struct{}

	mu      sync.Mutex
	regions map[uint64]uint64
}

func startPager(u *linux.Uffd, v *fakeVCore) (*fakePager, error) {
	ep, err := linux.NewEpoll()
	if err != nil {
		return nil, err
	}
	ev, err := linux.NewEventFD()
	if err != nil {
		ep.Close()
		return nil, err
	}
	p := &fakePager{u: u, v: v, ep: ep, stopFD: ev, done: make(chan struct{}), regions: map[uint64]uint64{}}
	if err := ep.Add(u.FD(), linux.EPOLLIN, 1); err != nil {
		p.close()
		return nil, err
	}
	if err := ep.Add(ev.FD(), linux.EPOLLIN, 2); err != nil {
		p.close()
		return nil, err
	}
	go p.loop()
	return p, nil
}

func (p *fakePager) add(addr, length uint64) {
	p.mu.Lock()
	p.regions[addr] = length
	p.mu.Unlock()
}

func (p *fakePager) remove(addr uint64) {
	p.mu.Lock()
	delete(p.regions, addr)
	p.mu.Unlock()
}

func (p *fakePager) region(a uint64) (start uint64, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for s, n := range p.regions {
		if a >= s && a < s+n {
			return s, true
		}
	}
	return 0, false
}

func (p *fakePager) loop() {
	defer close(p.done)
	ps := uint64(linux.PageSize())
	page := make([]byte, ps)
	evs := make([]linux.EpollEvent, 4)
	msgs := make([]linux.UffdMsg, 16)
	for {
		n, err := p.ep.Wait(evs, -1)
		if err != nil {
			p.v.t.Errorf("epoll: %v", err)
			return
		}
		for _, ev := range evs[:n] {
			if ev.Token() == 2 {
				return
			}
		}
		for {
			k, err := p.u.ReadMsgs(msgs)
			if errors.Is(err, linux.EAGAIN) || k == 0 {
				break
			}
			if err != nil {
				p.v.t.Errorf("read uffd: %v", err)
				return
			}
			for i := range msgs[:k] {
				if msgs[i].Event != linux.UFFD_EVENT_PAGEFAULT {
					continue
				}
				addr := uint64(msgs[i].PagefaultAddr()) &^ (ps - 1)
				start, ok := p.region(addr)
				if !ok {
					p.v.t.Errorf("fault at %#x outside every region", addr)
					continue
				}
				for off := uint64(0); off < ps; off += 8 {
					binary.LittleEndian.PutUint64(page[off:], patternWord(p.v.seed, addr-start+off))
				}
				if _, err := p.u.Copy(uintptr(addr), page, 0); err != nil && !errors.Is(err, linux.EEXIST) {
					p.v.t.Errorf("UFFDIO_COPY %#x: %v", addr, err)
				}
				p.v.mu.Lock()
				p.v.faults++
				p.v.mu.Unlock()
			}
		}
	}
}

func (p *fakePager) stop() {
	p.stopFD.Signal()
	<-p.done
	p.close()
}

func (p *fakePager) close() {
	p.ep.Close()
	p.stopFD.Close()
}

// TestHelperWorker is not a test: re-executed with helperEnv set, it is a
// worker that attaches dataspaces through $VCORE_SOCKET, touches and
// verifies every page, and prints a summary line.
func TestHelperWorker(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("helper process only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	seed := uint64(0x5eed)
	var pages int
	for i, size := range []int{1<<20 + 123, 3 * linux.PageSize()} {
		var opts []Option
		if i == 1 {
			opts = append(opts, Unbound())
		}
		m, err := Attach(ctx, fmt.Sprintf("ds%d", i), size, opts...)
		if err != nil {
			fmt.Println("FAIL attach:", err)
			return
		}
		b := m.Bytes()
		if len(b) != size {
			fmt.Println("FAIL len", len(b))
			return
		}
		// The mempolicy the client set (or not) before any page exists.
		mode, nodes, err := linux.GetMempolicy(m.Addr(), linux.MPOL_F_ADDR)
		if err != nil {
			fmt.Println("FAIL get_mempolicy:", err)
			return
		}
		wantMode := linux.MPOL_BIND
		if i == 1 {
			wantMode = linux.MPOL_DEFAULT
		}
		if mode != wantMode || (i == 0 && nodes.String() != "0") {
			fmt.Printf("FAIL mempolicy of %s: mode %d nodes %s, want mode %d\n", m.Name(), mode, nodes, wantMode)
			return
		}
		for off := 0; off+8 <= size; off += 8 {
			if got, want := binary.LittleEndian.Uint64(b[off:]), patternWord(seed, uint64(off)); got != want {
				fmt.Printf("FAIL %s offset %d: %#x, want %#x\n", m.Name(), off, got, want)
				return
			}
		}
		pages += (size + linux.PageSize() - 1) / linux.PageSize()
		if err := m.Close(); err != nil || m.Close() != nil || m.Bytes() != nil {
			fmt.Println("FAIL close:", err)
			return
		}
	}
	fmt.Printf("OK pages=%d\n", pages)
}

func runWorker(t *testing.T, socket string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWorker$", "-test.count=1", "-test.v=false")
	cmd.Env = append(os.Environ(), helperEnv+"=1", EnvSocket+"="+socket, "VCORE_NODE=0", "VCORE_SUBSYSTEM=test")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("worker: %v\n%s", err, out)
	}
	return string(out)
}

// TestAttachServedAcrossProcesses runs a worker process against a fake
// vcore that does UFFDIO_API/REGISTER on the received fd and serves the
// faults with UFFDIO_COPY: every page the worker reads has the pattern.
func TestAttachServedAcrossProcesses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("userfaultfd needs root here (vm.unprivileged_userfaultfd=0)")
	}
	if _, err := os.Stat("/dev/userfaultfd"); err != nil {
		if u, err := linux.OpenUffd(); err != nil {
			t.Skipf("no userfaultfd: %v", err)
		} else {
			u.Close()
		}
	}
	v := &fakeVCore{t: t, serve: true, seed: 0x5eed}
	out := runWorker(t, v.start(t))
	ps := linux.PageSize()
	wantPages := (1<<20+123+ps-1)/ps + 3
	if !strings.Contains(out, fmt.Sprintf("OK pages=%d", wantPages)) {
		t.Fatalf("worker output:\n%s", out)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.faults < wantPages {
		t.Errorf("the fake vcore resolved %d faults for %d pages", v.faults, wantPages)
	}
	if v.fds != 1 || v.conns != 1 || len(v.attaches) != 2 || len(v.detaches) != 2 {
		t.Errorf("conns=%d fds=%d attaches=%d detaches=%d, want 1 1 2 2", v.conns, v.fds, len(v.attaches), len(v.detaches))
	}
	if len(v.attaches) == 2 && (!v.attaches[0].Bind || v.attaches[1].Bind) {
		t.Errorf("Bind flags %v %v, want true false (second is Unbound)", v.attaches[0].Bind, v.attaches[1].Bind)
	}
}

// The remaining tests exercise the protocol in-process; the fake vcore does
// not register the ranges and nothing touches them.

func testSession(path string) *session {
	return &session{socket: func() (string, error) { return path, nil }, quit: make(chan struct{})}
}

func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.quit)
	s.dropLink()
	if s.uffd != nil {
		s.uffd.Close()
		s.uffd = nil
	}
}

func TestAttachProtocol(t *testing.T) {
	v := &fakeVCore{t: t, refuse: "nope"}
	s := testSession(v.start(t))
	defer s.close()
	ctx := context.Background()
	m, err := s.attach(ctx, "heap", 5000, WithContent("pattern", 7))
	if errors.Is(err, linux.ErrNotSupported) {
		t.Skipf("attach: %v", err) // no userfaultfd on this host
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Bytes()) != 5000 || m.Name() != "heap" || m.Node() != 0 || !m.Bound() {
		t.Fatalf("mapping %q len %d node %d bound %v", m.Name(), len(m.Bytes()), m.Node(), m.Bound())
	}
	if _, err := s.attach(ctx, "nope", 4096); err == nil {
		t.Fatal("refused dataspace attached")
	} else {
		var ae *wire.AttachErr
		if !errors.As(err, &ae) || ae.Code != wire.CodeNotFound || !strings.Contains(err.Error(), `"nope"`) {
			t.Fatalf("refusal: %v", err)
		}
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Detach is asynchronous; wait until the vcore has seen it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		v.mu.Lock()
		n := len(v.detaches)
		v.mu.Unlock()
		if n == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fds != 1 || len(v.attaches) != 2 || len(v.detaches) != 1 || v.detaches[0] != uint64(m.Addr()) {
		t.Fatalf("fds=%d attaches=%+v detaches=%v", v.fds, v.attaches, v.detaches)
	}
	if a := v.attaches[0]; a.Content != wire.ContentPattern || a.Seed != 7 || a.Length != 8192 || !a.Bind {
		t.Fatalf("Attach sent: %+v", a)
	}
}

func TestAttachReconnects(t *testing.T) {
	v := &fakeVCore{t: t, dropAfterAttach: true}
	s := testSession(v.start(t))
	defer s.close()
	ctx := context.Background()
	for i := range 3 {
		m, err := s.attach(ctx, "heap", 4096)
		if err != nil {
			t.Fatalf("attach %d: %v", i, err)
		}
		defer m.Close()
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	// Each new connection got the uffd again with its first Attach.
	if v.conns < 3 || v.fds != v.conns {
		t.Fatalf("conns=%d fds=%d: want one uffd per connection, >= 3 connections", v.conns, v.fds)
	}
}

// TestLostConnectionResends: when the vcore closes the connection, the
// client redials by itself and re-sends the uffd and every live mapping
// (no new Attach needed): a restarted vcore gets them back.
func TestLostConnectionResends(t *testing.T) {
	v := &fakeVCore{t: t, dropAfterAttach: true}
	s := testSession(v.start(t))
	defer s.close()
	ctx := context.Background()
	var addrs []uint64
	for i := range 2 {
		m, err := s.attach(ctx, "heap", 4096)
		if errors.Is(err, linux.ErrNotSupported) {
			t.Skipf("attach: %v", err)
		}
		if err != nil {
			t.Fatalf("attach %d: %v", i, err)
		}
		defer m.Close()
		addrs = append(addrs, uint64(m.Addr()))
	}
	// The second attach's connection was dropped after its AttachOK: a new
	// connection must come with the uffd and both mappings, unasked.
	deadline := time.Now().Add(20 * time.Second)
	for {
		v.mu.Lock()
		conns, fds := v.conns, v.fds
		var last []uint64
		for _, a := range v.attaches[max(0, len(v.attaches)-2):] {
			last = append(last, a.Addr)
		}
		v.mu.Unlock()
		if conns >= 3 && fds == conns && len(last) == 2 && last[0] == min(addrs[0], addrs[1]) && last[1] == max(addrs[0], addrs[1]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no re-send after the connection was lost: conns=%d fds=%d last attaches %#x, mappings %#x", conns, fds, last, addrs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAttachErrors(t *testing.T) {
	t.Setenv(EnvSocket, "")
	if _, err := Attach(context.Background(), "x", 4096); !errors.Is(err, ErrNoSocket) || !strings.Contains(err.Error(), "VCORE_SOCKET") {
		t.Fatalf("Attach without VCORE_SOCKET: %v", err)
	}
	s := testSession(filepath.Join(t.TempDir(), "absent.sock"))
	defer s.close()
	if _, err := s.attach(context.Background(), "x", 4096); err == nil || !strings.Contains(err.Error(), "absent.sock") {
		t.Fatalf("Attach to a missing socket: %v", err)
	}
	if _, err := s.attach(context.Background(), "", 4096); err == nil {
		t.Fatal("empty name accepted")
	}
	if _, err := s.attach(context.Background(), "x", 0); err == nil {
		t.Fatal("zero size accepted")
	}
}

func TestAttachContextCancelled(t *testing.T) {
	// A "vcore" that greets and then never answers.
	path := filepath.Join(t.TempDir(), "mute.sock")
	l, err := wire.Listen(path, 0o600, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- l.Serve(context.Background(), func(ctx context.Context, c *wire.Conn) {
			if _, err := c.Recv(); err != nil {
				return
			}
			c.SendMsg(&wire.HelloOK{Server: "vcore", Version: wire.Version})
			for {
				f, err := c.Recv()
				if err != nil {
					return
				}
				f.CloseFDs()
			}
		}, nil)
	}()
	defer func() {
		l.Close()
		<-done
	}()
	s := testSession(path)
	defer s.close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.attach(ctx, "x", 4096); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("attach with a silent vcore: %v, want deadline exceeded", err)
	}
}
