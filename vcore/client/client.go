// Package client is what a worker process links to get dataspaces served by
// its vcore. Attach maps a region and hands it, with the process's
// userfaultfd, to the vcore named by $VCORE_SOCKET; from then on the vcore's
// pager threads (on the vcore's own CPUs, or core's in the single-pager
// baseline) supply the region's pages as the worker touches them.
//
//	m, err := client.Attach(ctx, "heap", 64<<20)
//	if err != nil { ... }
//	defer m.Close()
//	buf := m.Bytes() // faults are served by the vcore
//
// The worker must not touch a mapping before Attach has returned: a page
// touched before the vcore registered the range would be a plain kernel
// zero page, bypassing the dataspace's content and placement.
//
// One connection and one userfaultfd serve the whole process. They are made
// lazily by the first Attach; Attach and Close are safe for concurrent use.
// The connection is only a control channel: the vcore serves the mappings
// for as long as the process lives (or until they are closed), whether or
// not it is connected. If the connection drops (the vcore restarted), the
// client notices, redials with backoff (50 ms doubling to 2 s) and re-sends
// the same userfaultfd and every live mapping, so that a restarted vcore
// serves the faults waiting on them; the process keeps its copy of the fd,
// so its pages are never silently zero-filled while no pager holds it. The
// wire protocol is described in docs/PROTOCOL.md.
package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
)

// EnvSocket names the environment variable that holds the vcore's socket
// path; a vcore sets it (with VCORE_NODE and VCORE_SUBSYSTEM) for the
// processes it starts.
const EnvSocket = "VCORE_SOCKET"

// ErrNoSocket is returned when $VCORE_SOCKET is not set: the process was not
// started by a vcore.
var ErrNoSocket = errors.New("client: VCORE_SOCKET is not set (is this process running under a vcore?)")

// Option adjusts one Attach.
type Option func(*options)

type options struct {
	content wire.ContentKind
	seed    uint64
	unbound bool
}

// WithContent states the content kind ("zero", "pattern" with seed, or
// "file") the worker expects. The dataspace's definition decides what the
// pages hold: an Attach whose kind (or pattern seed) differs from it is
// refused (bad-request, naming both); only for a core-owned dataspace whose
// content core's catalogue does not state is the kind used. Without it the
// worker takes whatever the dataspace holds (Mapping.Content).
func WithContent(kind string, seed uint64) Option {
	return func(o *options) { o.content, o.seed = wire.ContentKind(kind), seed }
}

// Unbound skips the mbind to the vcore's node: pages then land on the node
// of whichever CPU resolves the fault. It exists to show placement effects
// (a central pager puts every page on its own node).
func Unbound() Option { return func(o *options) { o.unbound = true } }

// Mapping is an attached dataspace region in this process.
type Mapping struct {
	s    *session
	name string
	mem  []byte // the whole mapping, page-rounded
	size int
	ok   wire.AttachOK
	o    options
	bind bool // asked to bind

	mu     sync.Mutex
	closed bool
}

// Bytes is the dataspace region (size bytes as asked). It must not be used
// after Close.
func (m *Mapping) Bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	return m.mem[:m.size]
}

// Name is the dataspace's name.
func (m *Mapping) Name() string { return m.name }

// Addr is the start address of the mapping.
func (m *Mapping) Addr() uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(m.mem))) }

// Node is the NUMA node of the vcore serving the mapping.
func (m *Mapping) Node() int { return m.ok.Node }

// Bound reports whether the mapping was mbind-ed to Node.
func (m *Mapping) Bound() bool { return m.ok.Bind }

// Content is the dataspace's content kind and seed, as the vcore reported.
func (m *Mapping) Content() (kind string, seed uint64) { return string(m.ok.Content), m.ok.Seed }

// DataspaceSize is the size of the whole dataspace (0: unbounded).
func (m *Mapping) DataspaceSize() uint64 { return m.ok.Size }

// Close tells the vcore the region goes away (Detach) and unmaps it. It is
// idempotent.
func (m *Mapping) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.s.detach(uint64(m.Addr()))
	if err := linux.Munmap(m.mem); err != nil {
		return fmt.Errorf("client: close %q: %w", m.name, err)
	}
	return nil
}

// Attach maps size bytes of the dataspace name and has the vcore serve them.
// It returns once the vcore has registered the range (and, unless Unbound,
// the range is bound to the vcore's node); only then may the worker touch it.
func Attach(ctx context.Context, name string, size int, opts ...Option) (*Mapping, error) {
	return process.attach(ctx, name, size, opts...)
}

// Disconnect closes the process's connection to its vcore, as a lost
// connection would, but without redialing: the attached mappings stay
// served (the vcore holds the process's userfaultfd until the process exits
// or unmaps them). The next Attach connects again and re-sends the uffd and
// every live mapping.
func Disconnect() { process.disconnect() }

// process is the one session of this process.
var process = &session{socket: func() (string, error) {
	p := os.Getenv(EnvSocket)
	if p == "" {
		return "", ErrNoSocket
	}
	return p, nil
}}

// Reconnection backoff: the first redial comes after redialMin, doubling up
// to redialMax.
const (
	redialMin = 50 * time.Millisecond
	redialMax = 2 * time.Second
	// resendTimeout bounds one reconnection (dial, Hello, re-sent Attaches).
	resendTimeout = 30 * time.Second
)

// session is a connection to a vcore plus the process's userfaultfd and the
// live mappings. When the connection is lost (the vcore restarted, or closed
// it), a background goroutine redials with backoff and re-sends the uffd and
// every live mapping, so that the restarted vcore serves the faults waiting
// on them; the next Attach does the same if it comes first.
type session struct {
	socket func() (string, error)

	mu        sync.Mutex // serialises Attach/Detach exchanges; guards the fields below
	link      *link      // nil while not connected
	uffd      *linux.Uffd
	maps      map[uint64]*Mapping // live mappings by address
	redialing bool
	quit      chan struct{} // closed to stop redialing (tests); nil: never
}

// link is one connection to the vcore. Its reader goroutine hands the
// answers to the waiting exchange and notices the end of the connection.
type link struct {
	conn    *wire.Conn
	replies chan wire.Frame
	dead    chan struct{} // closed when the reader stops
	fdSent  bool          // the uffd went over conn already (under session.mu)
}

// connect makes sure s has a live, greeted connection; a new one gets the
// uffd and every live mapping again. Called with s.mu held.
func (s *session) connect(ctx context.Context) error {
	if s.link != nil {
		return nil
	}
	path, err := s.socket()
	if err != nil {
		return err
	}
	c, err := wire.Dial(ctx, path)
	if err != nil {
		return fmt.Errorf("client: %s=%s: %w", EnvSocket, path, err)
	}
	node := -1
	if v, err := strconv.Atoi(os.Getenv("VCORE_NODE")); err == nil {
		node = v
	}
	hello := &wire.Hello{Role: wire.RoleWorker, Pid: os.Getpid(), Node: node, Subsystem: os.Getenv("VCORE_SUBSYSTEM"), Version: wire.Version}
	if err := c.SendMsg(hello); err != nil {
		c.Close()
		return fmt.Errorf("client: %s: hello: %w", path, err)
	}
	f, err := c.RecvContext(ctx)
	if err != nil {
		c.Close()
		return fmt.Errorf("client: %s: hello: %w", path, err)
	}
	switch f.Type {
	case wire.TypeHelloOK:
		var ok wire.HelloOK
		if err := ok.Unmarshal(f.Payload); err != nil {
			c.Close()
			return fmt.Errorf("client: %s: %w", path, err)
		}
		if ok.Version != wire.Version {
			c.Close()
			return fmt.Errorf("client: %s: %w: the vcore speaks protocol version %d, this client %d", path, wire.ErrProtocol, ok.Version, wire.Version)
		}
	case wire.TypeError:
		c.Close()
		return fmt.Errorf("client: %s: hello refused: %w", path, decodeError(f))
	default:
		f.CloseFDs()
		c.Close()
		return fmt.Errorf("client: %s: %w: %s in answer to Hello", path, wire.ErrProtocol, f.Type)
	}
	l := &link{conn: c, replies: make(chan wire.Frame, 4), dead: make(chan struct{})}
	s.link = l
	go s.read(l)
	// Re-send the live mappings (in address order): the vcore may be a new
	// one, or may have lost the uffd with its previous process.
	addrs := make([]uint64, 0, len(s.maps))
	for a := range s.maps {
		addrs = append(addrs, a)
	}
	slices.Sort(addrs)
	for _, a := range addrs {
		m := s.maps[a]
		_, err := s.exchange(ctx, l, m.request())
		var ae *wire.AttachErr
		if errors.As(err, &ae) {
			continue // the vcore will not serve it; nothing else to do
		}
		if err != nil {
			s.breakLink()
			return fmt.Errorf("client: %s: re-attach %q at %#x: %w", path, m.name, a, err)
		}
	}
	return nil
}

// read receives on l until the connection ends, then lets s redial.
func (s *session) read(l *link) {
	for {
		f, err := l.conn.Recv()
		if err != nil {
			close(l.dead)
			s.lost(l)
			return
		}
		select {
		case l.replies <- f:
		default:
			f.CloseFDs() // nobody asked
		}
	}
}

// lost forgets l if it is still the session's connection and starts
// redialing when mappings wait to be served.
func (s *session) lost(l *link) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.link != l {
		return // dropped on purpose
	}
	s.link = nil
	l.conn.Close()
	s.startRedial()
}

// redial reconnects with backoff until it succeeds or no mapping is left.
func (s *session) redial() {
	delay := redialMin
	s.mu.Lock()
	quit := s.quit
	s.mu.Unlock()
	for {
		select {
		case <-time.After(delay):
		case <-quit:
			s.mu.Lock()
			s.redialing = false
			s.mu.Unlock()
			return
		}
		delay = min(2*delay, redialMax)
		s.mu.Lock()
		if len(s.maps) == 0 || s.link != nil {
			s.redialing = false
			s.mu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), resendTimeout)
		err := s.connect(ctx)
		cancel()
		if err == nil {
			s.redialing = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// dropLink closes the connection without redialing. Called with s.mu held.
func (s *session) dropLink() {
	if s.link != nil {
		s.link.conn.Close()
		s.link = nil
	}
}

// breakLink drops a connection that failed and redials in the background
// while mappings wait to be served. Called with s.mu held.
func (s *session) breakLink() {
	s.dropLink()
	s.startRedial()
}

// startRedial starts the redial goroutine unless it runs or nothing needs
// it. Called with s.mu held.
func (s *session) startRedial() {
	if len(s.maps) > 0 && !s.redialing {
		s.redialing = true
		go s.redial()
	}
}

func (s *session) disconnect() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropLink()
}

// request is the Attach that registers m.
func (m *Mapping) request() *wire.Attach {
	return &wire.Attach{Name: m.name, Addr: uint64(m.Addr()), Length: uint64(len(m.mem)), Bind: m.bind, Content: m.o.content, Seed: m.o.seed}
}

func (s *session) attach(ctx context.Context, name string, size int, opts ...Option) (*Mapping, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if name == "" || len(name) > wire.MaxName {
		return nil, fmt.Errorf("client: attach %q: name must have 1..%d bytes", name, wire.MaxName)
	}
	if size <= 0 {
		return nil, fmt.Errorf("client: attach %q: size %d", name, size)
	}
	ps := linux.PageSize()
	length := (size + ps - 1) / ps * ps

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.uffd == nil {
		u, err := linux.OpenUffd()
		if err != nil {
			return nil, fmt.Errorf("client: attach %q: %w", name, err)
		}
		s.uffd = u
	}
	mem, err := linux.Mmap(length, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_ANONYMOUS|linux.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("client: attach %q: %w", name, err)
	}
	m := &Mapping{s: s, name: name, mem: mem, size: size, o: o, bind: !o.unbound}
	req := m.request()

	var ok *wire.AttachOK
	for attempt := 0; ; attempt++ {
		if err = s.connect(ctx); err == nil {
			ok, err = s.exchange(ctx, s.link, req)
		}
		var ae *wire.AttachErr
		var we *wire.Error
		if err == nil || errors.As(err, &ae) || errors.As(err, &we) || ctx.Err() != nil || attempt > 0 {
			break
		}
		s.breakLink() // the vcore went away (and maybe came back): retry once
	}
	if err != nil {
		linux.Munmap(mem)
		if s.link == nil {
			s.startRedial() // the live mappings still need a vcore
		}
		return nil, fmt.Errorf("client: attach %q: %w", name, err)
	}
	m.ok = *ok
	m.ok.Bind = ok.Bind && req.Bind
	if m.ok.Bind {
		if err := linux.Mbind(m.Addr(), uintptr(length), linux.MPOL_BIND, hw.NewSet(hw.Node(ok.Node)), linux.MPOL_MF_STRICT); err != nil {
			s.sendDetach(req.Addr)
			linux.Munmap(mem)
			return nil, fmt.Errorf("client: attach %q: bind to node %d: %w", name, ok.Node, err)
		}
	}
	if s.maps == nil {
		s.maps = map[uint64]*Mapping{}
	}
	s.maps[req.Addr] = m
	return m, nil
}

// exchange sends req on l (with the uffd if l has not carried it yet) and
// waits for the answer. An AttachErr or Error answer is returned as the
// error (*wire.AttachErr, *wire.Error); a broken connection is dropped.
// Called with s.mu held.
func (s *session) exchange(ctx context.Context, l *link, req *wire.Attach) (*wire.AttachOK, error) {
	var fds []int
	if !l.fdSent {
		fds = []int{s.uffd.FD()}
	}
	if err := l.conn.SendMsg(req, fds...); err != nil {
		s.breakLink()
		return nil, err
	}
	l.fdSent = true
	var f wire.Frame
	select {
	case f = <-l.replies:
	case <-l.dead:
		// The reader queues a frame before it marks the link dead: an
		// answer that arrived just before the close is still the answer.
		select {
		case f = <-l.replies:
		default:
			s.breakLink()
			return nil, fmt.Errorf("%w: the vcore closed the connection", wire.ErrClosed)
		}
	case <-ctx.Done():
		s.breakLink() // the answer may still come: the exchange is out of step
		return nil, ctx.Err()
	}
	switch f.Type {
	case wire.TypeAttachOK:
		var ok wire.AttachOK
		if err := ok.Unmarshal(f.Payload); err != nil {
			s.breakLink()
			return nil, err
		}
		if ok.Addr != req.Addr {
			s.breakLink()
			return nil, fmt.Errorf("%w: AttachOK for %#x, asked for %#x", wire.ErrProtocol, ok.Addr, req.Addr)
		}
		return &ok, nil
	case wire.TypeAttachErr:
		var ae wire.AttachErr
		if err := ae.Unmarshal(f.Payload); err != nil {
			s.breakLink()
			return nil, err
		}
		return nil, &ae
	case wire.TypeError:
		s.breakLink() // the vcore closes the connection after an Error
		return nil, decodeError(f)
	default:
		f.CloseFDs()
		s.breakLink()
		return nil, fmt.Errorf("%w: %s in answer to Attach", wire.ErrProtocol, f.Type)
	}
}

func (s *session) detach(addr uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.maps, addr)
	s.sendDetach(addr)
}

// sendDetach sends Detach if connected. A send failure only drops the
// connection: a vcore that is gone has nothing to unregister. Called with
// s.mu held.
func (s *session) sendDetach(addr uint64) {
	if s.link == nil {
		return
	}
	if err := s.link.conn.SendMsg(&wire.Detach{Addr: addr}); err != nil {
		s.breakLink()
	}
}

func decodeError(f wire.Frame) error {
	var e wire.Error
	if err := e.Unmarshal(f.Payload); err != nil {
		return err
	}
	return &e
}
