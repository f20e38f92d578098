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
	"sync/atomic"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// ErrInUse is wrapped by Listen when a live process already answers on the
// socket path.
var ErrInUse = errors.New("wire: socket in use by another process")

// SniffTimeout bounds how long an accepted connection may take to send its
// first 4 bytes (Magic, or the start of an HTTP request).
const SniffTimeout = 5 * time.Second

// Defaults of Limits.
const (
	DefaultMaxConnsPerUID   = 256
	DefaultMaxConns         = 1024
	DefaultHTTPIdleTimeout  = 60 * time.Second
	DefaultHTTPReadTimeout  = 30 * time.Second
	DefaultHTTPWriteTimeout = 60 * time.Second
)

// Limits bound what peers may hold open on a Listener. Zero fields take the
// defaults above.
//
// Connections are counted from accept to close, framed and HTTP alike, per
// peer uid. Root and the daemon's own euid are never counted nor refused:
// they must always be able to connect (vcore workers, which run as root, are
// bounded per subsystem by the vcore instead). Every other uid — a member of
// the socket's group — may hold MaxConnsPerUID connections, and all of them
// together MaxConns, which leaves the daemon's remaining descriptors to root.
// A connection beyond a cap gets a "limit" Error (framed) or a 503 (HTTP)
// naming the cap, and is closed.
type Limits struct {
	MaxConnsPerUID int
	MaxConns       int
	// HTTPIdleTimeout closes a keep-alive HTTP connection idle this long;
	// HTTPReadTimeout and HTTPWriteTimeout bound reading one request and
	// writing its response (http.Server's timeouts).
	HTTPIdleTimeout  time.Duration
	HTTPReadTimeout  time.Duration
	HTTPWriteTimeout time.Duration
}

func (lim Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&lim.MaxConnsPerUID, DefaultMaxConnsPerUID)
	def(&lim.MaxConns, DefaultMaxConns)
	defDur(&lim.HTTPIdleTimeout, DefaultHTTPIdleTimeout)
	defDur(&lim.HTTPReadTimeout, DefaultHTTPReadTimeout)
	defDur(&lim.HTTPWriteTimeout, DefaultHTTPWriteTimeout)
	return lim
}

// maxRefusing bounds the refusals being explained at once (each waits up
// to refusePeek for the first bytes to pick the answer's protocol, and a
// framed one up to refusePeek more for its Hello); beyond it an over-limit
// connection is closed without a word.
const (
	maxRefusing = 32
	refusePeek  = 2 * time.Second
)

// Listener is a daemon's one unix socket. It serves the framed protocol and
// HTTP on the same path, telling them apart by the first 4 bytes.
type Listener struct {
	path    string
	ul      *net.UnixListener
	access  Access
	log     *slog.Logger
	madeDir []string // directories Listen created, deepest first

	refusing  atomic.Int32 // refusals being explained
	refuseLog logEvery
	acceptLog logEvery

	done      chan struct{} // closed by shutdown
	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	closed  bool
	serving bool
	conns   map[*net.UnixConn]struct{} // accepted, not handed to the HTTP server
	httpSrv *http.Server
	cancel  context.CancelFunc
	lim     Limits
	perUID  map[int]int // live connections of each counted (unprivileged) uid
	counted int         // their sum
}

// Listen creates the socket at path with the given mode, owned by group gid
// (-1: leave the group alone). The parent directory is created (0755) if
// missing; Close removes the directories Listen created, if they are empty
// then. If path exists, Listen connects to it: when a process answers, it
// fails with ErrInUse; otherwise it removes the stale socket. A path that
// exists and is not a socket is never removed. The Listener has the default
// Limits; see SetLimits.
func Listen(path string, mode os.FileMode, gid int, log *slog.Logger) (*Listener, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	made, err := mkdirAll(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("wire: listen %s: %w", path, err)
	}
	fail := func(err error) (*Listener, error) {
		removeDirs(made)
		return nil, err
	}
	if err := removeStale(path, log); err != nil {
		return fail(err)
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fail(fmt.Errorf("wire: listen %s: %w", path, err))
	}
	ul.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode.Perm()); err != nil {
		ul.Close()
		return fail(fmt.Errorf("wire: listen %s: %w", path, err))
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ul.Close()
			return fail(fmt.Errorf("wire: listen %s: set group %d: %w", path, gid, err))
		}
	}
	return &Listener{
		path:    path,
		ul:      ul,
		access:  Access{Gid: gid, ProcRoot: "/proc"},
		log:     log.With("socket", path),
		madeDir: made,
		done:    make(chan struct{}),
		conns:   make(map[*net.UnixConn]struct{}),
		lim:     Limits{}.withDefaults(),
		perUID:  make(map[int]int),
	}, nil
}

// SetLimits replaces the Listener's limits (zero fields: defaults). The
// connection caps apply to connections accepted afterwards; the HTTP
// timeouts are taken when Serve starts.
func (l *Listener) SetLimits(lim Limits) {
	l.mu.Lock()
	l.lim = lim.withDefaults()
	l.mu.Unlock()
}

// mkdirAll is os.MkdirAll(dir, 0755) that also returns the directories it
// created, deepest first.
func mkdirAll(dir string) ([]string, error) {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return missing, nil
}

// removeDirs removes the directories Listen created, deepest first, as long
// as they are empty (os.Remove refuses a non-empty one; it and its parents
// stay).
func removeDirs(dirs []string) {
	for _, d := range dirs {
		if os.Remove(d) != nil {
			return
		}
	}
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
// closed), then counted against the Limits (see SetLimits). A connection that starts with Magic has the magic consumed and is
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
	l.mu.Lock()
	lim := l.lim
	l.mu.Unlock()
	srv := &http.Server{
		Handler:           httpHandler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       lim.HTTPReadTimeout,
		WriteTimeout:      lim.HTTPWriteTimeout,
		IdleTimeout:       lim.HTTPIdleTimeout,
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
			// EMFILE and friends: back off instead of spinning, and
			// log once a second at most.
			if ok, n := l.acceptLog.allow(time.Second); ok {
				l.log.Warn("accept failed", "err", err, "suppressed", n)
			}
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
	release, why := l.acquire(cred.Uid)
	if why != "" {
		l.refuseOverLimit(uc, cred, why)
		return
	}
	defer func() {
		if !handedOff {
			release()
		}
	}()
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
		// The HTTP server owns the connection now; closing it ends the count.
		if !hl.push(&peerConn{UnixConn: uc, cred: cred, release: release}) {
			uc.Close()
			release()
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

// acquire counts a connection of uid against the caps. It returns the
// function that ends the count (idempotent), or why the connection is
// refused. Root and the daemon's euid are not counted.
func (l *Listener) acquire(uid int) (release func(), why string) {
	if uid == 0 || uid == os.Geteuid() {
		return func() {}, ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.perUID[uid] >= l.lim.MaxConnsPerUID:
		return nil, fmt.Sprintf("uid %d already has %d connections open (the per-uid limit); close some", uid, l.perUID[uid])
	case l.counted >= l.lim.MaxConns:
		return nil, fmt.Sprintf("%d connections of non-root users are open (the limit for all of them together); try again later", l.counted)
	}
	l.perUID[uid]++
	l.counted++
	return sync.OnceFunc(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.perUID[uid]--; l.perUID[uid] <= 0 {
			delete(l.perUID, uid)
		}
		l.counted--
	}), ""
}

// refuseOverLimit logs (rate-limited) and answers a connection over a cap:
// a "limit" Error when it speaks the framed protocol, a 503 when HTTP. Its
// first bytes are awaited briefly, and only for maxRefusing connections at
// once; the caller closes uc.
//
// A framed client writes the magic and its Hello separately, then reads;
// the Error is sent only once the Hello (its first frame) has arrived, or
// refusePeek passed without it. Answering right after the magic and
// closing made a client descheduled between its two writes meet a closed
// socket: its Hello failed with EPIPE ("broken pipe") instead of it
// reading the refusal. (An HTTP client writes its request at once.)
func (l *Listener) refuseOverLimit(uc *net.UnixConn, cred linux.Ucred, why string) {
	if ok, n := l.refuseLog.allow(time.Second); ok {
		l.log.Warn("refused connection: over the connection limit", "pid", cred.Pid, "uid", cred.Uid, "reason", why, "suppressed", n)
	}
	defer l.refusing.Add(-1)
	if l.refusing.Add(1) > maxRefusing {
		return
	}
	var first [len(Magic)]byte
	uc.SetReadDeadline(time.Now().Add(refusePeek))
	n, err := linux.RecvPeek(uc, first[:])
	if err != nil || n == 0 {
		return
	}
	uc.SetWriteDeadline(time.Now().Add(time.Second))
	msg := "connection limit: " + why
	if n == len(Magic) && string(first[:]) == Magic {
		c := newConn(uc, cred)
		var fds []int
		if _, err := c.readFull(first[:], &fds); err == nil && len(fds) == 0 {
			uc.SetReadDeadline(time.Now().Add(refusePeek))
			if f, err := c.Recv(); err == nil {
				f.CloseFDs()
			}
		}
		linux.CloseFDs(fds)
		c.SetWriteDeadline(time.Now().Add(time.Second))
		_ = c.SendMsg(&Error{Code: CodeLimit, Msg: msg})
		return
	}
	body := msg + "\n"
	_, _ = fmt.Fprintf(uc, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// logEvery lets a repeated log line through at most once per interval and
// counts what it held back.
type logEvery struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (e *logEvery) allow(interval time.Duration) (ok bool, suppressed int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	if !e.last.IsZero() && now.Sub(e.last) < interval {
		e.suppressed++
		return false, 0
	}
	e.last, suppressed, e.suppressed = now, e.suppressed, 0
	return true, suppressed
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
		removeDirs(l.madeDir)
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
// removes the socket file (and the directories Listen created, if empty). A running Serve returns once its goroutines have
// finished. Close is idempotent and may be called from a handler.
func (l *Listener) Close() error {
	l.shutdown()
	if l.closeErr != nil && !errors.Is(l.closeErr, net.ErrClosed) {
		return fmt.Errorf("wire: close %s: %w", l.path, l.closeErr)
	}
	return nil
}

// peerConn is an HTTP connection with its peer's credentials. Closing it
// ends its count against the Listener's limits.
type peerConn struct {
	*net.UnixConn
	cred    linux.Ucred
	release func()
}

func (pc *peerConn) Close() error {
	err := pc.UnixConn.Close()
	pc.release()
	return err
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
