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
// If the connection to the vcore drops, the next Attach reconnects and hands
// over the same userfaultfd again (the worker keeps its copy, so its pages
// are never silently zero-filled while no pager holds the fd). The wire
// protocol is described in docs/PROTOCOL.md.
package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
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

// WithContent asks for a content kind ("zero", "pattern" with seed, or
// "file") for a dataspace the vcore's configuration does not define. It is a
// hint: a dataspace defined by the configuration keeps its own content, and
// the vcore's answer (Mapping.Content) is what counts.
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

// process is the one session of this process.
var process = &session{socket: func() (string, error) {
	p := os.Getenv(EnvSocket)
	if p == "" {
		return "", ErrNoSocket
	}
	return p, nil
}}

// session is a connection to a vcore plus the process's userfaultfd.
type session struct {
	socket func() (string, error)

	mu     sync.Mutex // serialises Attach/Detach exchanges
	conn   *wire.Conn
	uffd   *linux.Uffd
	fdSent bool // the uffd went over conn already
}

// connect makes sure s has a live, greeted connection. Called with s.mu held.
func (s *session) connect(ctx context.Context) error {
	if s.conn != nil {
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
	case wire.TypeError:
		c.Close()
		return fmt.Errorf("client: %s: hello refused: %w", path, decodeError(f))
	default:
		f.CloseFDs()
		c.Close()
		return fmt.Errorf("client: %s: %w: %s in answer to Hello", path, wire.ErrProtocol, f.Type)
	}
	s.conn, s.fdSent = c, false
	return nil
}

// drop forgets a broken connection. Called with s.mu held.
func (s *session) drop() {
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
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
	m := &Mapping{s: s, name: name, mem: mem, size: size}
	req := &wire.Attach{Name: name, Addr: uint64(m.Addr()), Length: uint64(length), Bind: !o.unbound, Content: o.content, Seed: o.seed}

	ok, err := s.exchange(ctx, req)
	if err != nil {
		linux.Munmap(mem)
		return nil, fmt.Errorf("client: attach %q: %w", name, err)
	}
	m.ok = *ok
	m.ok.Bind = ok.Bind && req.Bind
	if m.ok.Bind {
		if err := linux.Mbind(m.Addr(), uintptr(length), linux.MPOL_BIND, hw.NewSet(hw.Node(ok.Node)), linux.MPOL_MF_STRICT); err != nil {
			s.detachLocked(req.Addr)
			linux.Munmap(mem)
			return nil, fmt.Errorf("client: attach %q: bind to node %d: %w", name, ok.Node, err)
		}
	}
	return m, nil
}

// exchange sends req (with the uffd if this connection has not had it) and
// waits for the answer, reconnecting once if the connection turns out to be
// dead. Called with s.mu held.
func (s *session) exchange(ctx context.Context, req *wire.Attach) (*wire.AttachOK, error) {
	for attempt := 0; ; attempt++ {
		if err := s.connect(ctx); err != nil {
			return nil, err
		}
		var fds []int
		if !s.fdSent {
			fds = []int{s.uffd.FD()}
		}
		err := s.conn.SendMsg(req, fds...)
		var f wire.Frame
		if err == nil {
			s.fdSent = true
			f, err = s.conn.RecvContext(ctx)
		}
		if err != nil {
			s.drop()
			if ctx.Err() == nil && attempt == 0 {
				continue // the vcore went away (and maybe came back): retry once
			}
			return nil, err
		}
		switch f.Type {
		case wire.TypeAttachOK:
			var ok wire.AttachOK
			if err := ok.Unmarshal(f.Payload); err != nil {
				s.drop()
				return nil, err
			}
			if ok.Addr != req.Addr {
				s.drop()
				return nil, fmt.Errorf("%w: AttachOK for %#x, asked for %#x", wire.ErrProtocol, ok.Addr, req.Addr)
			}
			return &ok, nil
		case wire.TypeAttachErr:
			var ae wire.AttachErr
			if err := ae.Unmarshal(f.Payload); err != nil {
				s.drop()
				return nil, err
			}
			return nil, &ae
		case wire.TypeError:
			return nil, decodeError(f)
		default:
			f.CloseFDs()
			s.drop()
			return nil, fmt.Errorf("%w: %s in answer to Attach", wire.ErrProtocol, f.Type)
		}
	}
}

func (s *session) detach(addr uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.detachLocked(addr)
}

// detachLocked sends Detach if connected. A send failure only drops the
// connection: a vcore that is gone has nothing to unregister.
func (s *session) detachLocked(addr uint64) {
	if s.conn == nil {
		return
	}
	if err := s.conn.SendMsg(&wire.Detach{Addr: addr}); err != nil {
		s.drop()
	}
}

func decodeError(f wire.Frame) error {
	var e wire.Error
	if err := e.Unmarshal(f.Payload); err != nil {
		return err
	}
	return &e
}
