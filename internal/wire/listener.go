package wire

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// ErrInUse is wrapped by Listen when a live process already answers on the
// socket path.
var ErrInUse = errors.New("wire: socket in use by another process")

// SniffTimeout bounds how long an accepted connection may take to send its
// first 4 bytes (Magic, or the start of an HTTP request).
const SniffTimeout = 5 * time.Second

// Listener is a daemon's one unix socket. It serves the framed protocol and
// HTTP on the same path, telling them apart by the first 4 bytes.
type Listener struct {
	path   string
	ul     *net.UnixListener
	access Access
	log    *slog.Logger

	done      chan struct{} // closed by shutdown
	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	closed  bool
	serving bool
	conns   map[*net.UnixConn]struct{} // accepted, not handed to the HTTP server
	httpSrv *http.Server
	cancel  context.CancelFunc
}

// Listen creates the socket at path with the given mode, owned by group gid
// (-1: leave the group alone). The parent directory is created (0755) if
// missing. If path exists, Listen connects to it: when a process answers,
// it fails with ErrInUse; otherwise it removes the stale socket. A path that
// exists and is not a socket is never removed.
func Listen(path string, mode os.FileMode, gid int, log *slog.Logger) (*Listener, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("wire: listen %s: %w", path, err)
	}
	if err := removeStale(path, log); err != nil {
		return nil, err
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("wire: listen %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode.Perm()); err != nil {
		ul.Close()
		return nil, fmt.Errorf("wire: listen %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ul.Close()
			return nil, fmt.Errorf("wire: listen %s: set group %d: %w", path, gid, err)
		}
	}
	return &Listener{
		path:   path,
		ul:     ul,
		access: Access{Gid: gid, ProcRoot: "/proc"},
		log:    log.With("socket", path),
		done:   make(chan struct{}),
		conns:  make(map[*net.UnixConn]struct{}),
	}, nil
}

func removeStale(path string, log *slog.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("wire: listen %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("wire: listen %s: exists and is not a socket (%s)", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s", ErrInUse, path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("wire: remove stale socket %s: %w", path, err)
	}
	log.Info("removed stale socket", "socket", path)
	return nil
}

// Path is the socket's path.
func (l *Listener) Path() string { return l.path }

// Serve accepts connections until ctx ends or Close is called, then closes
// the listener and waits for every goroutine it started. Each connection's
// peer is checked first (see Access; refusals are logged and the connection
// closed). A connection that starts with Magic has the magic consumed and is
// passed, as a *Conn, to wireHandler in its own goroutine; the Conn is closed
// when wireHandler returns, or earlier when the listener shuts down (so a
// handler blocked in Recv returns). Any other connection is served by
// httpHandler; HTTP handlers find the caller with PeerFromContext. Serve
// returns nil after a shutdown, ErrClosed if the listener was already closed.
func (l *Listener) Serve(ctx context.Context, wireHandler func(context.Context, *Conn), httpHandler http.Handler) error {
	if httpHandler == nil {
		httpHandler = http.NotFoundHandler()
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hl := &chanListener{addr: l.ul.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}
	srv := &http.Server{
		Handler:           httpHandler,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(l.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return sctx },
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				return context.WithValue(ctx, peerKey{}, pc.cred)
			}
			return ctx
		},
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if l.serving {
		l.mu.Unlock()
		return fmt.Errorf("wire: %s: Serve called twice", l.path)
	}
	l.serving, l.httpSrv, l.cancel = true, srv, cancel
	l.mu.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			l.log.Error("http server stopped", "err", err)
		}
	})
	wg.Go(func() {
		select {
		case <-sctx.Done():
		case <-l.done:
		}
		l.shutdown()
	})
	for {
		uc, err := l.ul.AcceptUnix()
		if err != nil {
			if l.isClosed() {
				break
			}
			// EMFILE and friends: back off instead of spinning.
			l.log.Warn("accept failed", "err", err)
			select {
			case <-l.done:
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if !l.track(uc) {
			uc.Close()
			break
		}
		wg.Go(func() { l.handle(sctx, uc, hl, wireHandler) })
	}
	l.shutdown()
	wg.Wait()
	return nil
}

// handle checks the peer, sniffs the protocol and dispatches one connection.
func (l *Listener) handle(ctx context.Context, uc *net.UnixConn, hl *chanListener, wireHandler func(context.Context, *Conn)) {
	handedOff := false
	defer func() {
		if !handedOff {
			l.untrack(uc)
			uc.Close()
		}
	}()
	cred, err := linux.PeerCred(uc)
	if err != nil {
		l.log.Warn("refused connection: no peer credentials", "err", err)
		return
	}
	if ok, why := l.access.Allowed(cred); !ok {
		l.log.Warn("refused connection", "pid", cred.Pid, "uid", cred.Uid, "gid", cred.Gid, "reason", why)
		return
	}
	var first [len(Magic)]byte
	uc.SetReadDeadline(time.Now().Add(SniffTimeout))
	n, err := linux.RecvPeek(uc, first[:])
	uc.SetReadDeadline(time.Time{})
	if err != nil {
		l.log.Debug("connection ended before its first bytes", "pid", cred.Pid, "got", n, "err", err)
		return
	}
	if string(first[:]) != Magic {
		l.untrack(uc)
		handedOff = true
		if !hl.push(&peerConn{UnixConn: uc, cred: cred}) {
			uc.Close()
		}
		return
	}
	c := newConn(uc, cred)
	// Consume the magic; it must come without descriptors.
	var fds []int
	if _, err := c.readFull(first[:], &fds); err != nil || len(fds) != 0 {
		linux.CloseFDs(fds)
		l.log.Warn("bad protocol preamble", "pid", cred.Pid, "fds", len(fds), "err", err)
		return
	}
	wireHandler(ctx, c)
	c.Close()
}

func (l *Listener) track(uc *net.UnixConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[uc] = struct{}{}
	return true
}

func (l *Listener) untrack(uc *net.UnixConn) {
	l.mu.Lock()
	delete(l.conns, uc)
	l.mu.Unlock()
}

func (l *Listener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// shutdown stops accepting, removes the socket file, closes the HTTP
// server and every framed connection. Idempotent.
func (l *Listener) shutdown() {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		conns := l.conns
		l.conns = nil
		srv, cancel := l.httpSrv, l.cancel
		l.mu.Unlock()
		close(l.done)
		l.closeErr = l.ul.Close() // unlinks the socket file
		if srv != nil {
			srv.Close()
		}
		for uc := range conns {
			uc.Close()
		}
		if cancel != nil {
			cancel()
		}
	})
}

// Close stops accepting, closes the HTTP server and all connections and
// removes the socket file. A running Serve returns once its goroutines have
// finished. Close is idempotent and may be called from a handler.
func (l *Listener) Close() error {
	l.shutdown()
	if l.closeErr != nil && !errors.Is(l.closeErr, net.ErrClosed) {
		return fmt.Errorf("wire: close %s: %w", l.path, l.closeErr)
	}
	return nil
}

// peerConn is an HTTP connection with its peer's credentials.
type peerConn struct {
	*net.UnixConn
	cred linux.Ucred
}

// chanListener is an in-memory net.Listener that hands the HTTP server the
// connections the sniffer classified as HTTP.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (cl *chanListener) push(c net.Conn) bool {
	select {
	case cl.ch <- c:
		return true
	case <-cl.done:
		return false
	}
}

func (cl *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-cl.ch:
		return c, nil
	case <-cl.done:
		return nil, net.ErrClosed
	}
}

func (cl *chanListener) Close() error {
	cl.once.Do(func() { close(cl.done) })
	return nil
}

func (cl *chanListener) Addr() net.Addr { return cl.addr }
