package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// Conn is one framed-protocol connection. Any number of goroutines may Send
// at once (frames never interleave); only one may Recv at a time.
type Conn struct {
	uc   *net.UnixConn
	raw  syscall.RawConn  // uc's, for TrySendMsg
	rdy  *linux.Readiness // for Poll (reader-owned)
	peer linux.Ucred

	wmu  sync.Mutex // serialises senders; guards wbuf
	wbuf []byte

	rhdr [HeaderSize]byte // reader-owned
	roob []byte
	// rerr is set when a malformed header made the stream unreadable: the
	// write side stays open so that the receiver can answer Error before it
	// closes (reader-owned).
	rerr error

	// wtimeout bounds every write (DefaultWriteTimeout unless set);
	// wdeadline is an explicit deadline (SetWriteDeadline). Under wmu.
	wtimeout  time.Duration
	wdeadline time.Time

	closed   atomic.Bool
	closeErr error
	once     sync.Once
}

// NewConn wraps a connected unix stream socket whose Magic has already been
// exchanged, taking ownership of it. It records the peer's credentials.
func NewConn(uc *net.UnixConn) (*Conn, error) {
	cred, err := linux.PeerCred(uc)
	if err != nil {
		return nil, fmt.Errorf("wire: %w", err)
	}
	return newConn(uc, cred), nil
}

func newConn(uc *net.UnixConn, cred linux.Ucred) *Conn {
	raw, _ := uc.SyscallConn() // fails only for a nil conn
	return &Conn{uc: uc, raw: raw, rdy: linux.NewReadiness(raw), peer: cred, roob: make([]byte, linux.RightsSpace(MaxFDs)), wtimeout: DefaultWriteTimeout}
}

// DefaultWriteTimeout bounds every frame a Conn writes: a peer that does not
// read for this long (stopped, wedged) makes Send fail instead of blocking
// its caller forever.
const DefaultWriteTimeout = 10 * time.Second

// Dial connects to a vcored socket and selects the framed protocol by
// sending Magic. The caller then sends Hello.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("wire: dial %s: %w", path, err)
	}
	uc := nc.(*net.UnixConn)
	// The magic goes alone, with no descriptors: the server consumes
	// exactly these 4 bytes before reading frames.
	if _, err := uc.Write([]byte(Magic)); err != nil {
		uc.Close()
		return nil, fmt.Errorf("wire: dial %s: send magic: %w", path, err)
	}
	c, err := NewConn(uc)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("wire: dial %s: %w", path, err)
	}
	return c, nil
}

// Peer is the identity of the process at the other end (SO_PEERCRED, taken
// when the connection was set up).
func (c *Conn) Peer() linux.Ucred { return c.peer }

// Close closes the connection. It is idempotent and safe to call while
// another goroutine is blocked in Recv or Send (which then fail).
func (c *Conn) Close() error {
	c.once.Do(func() {
		c.closed.Store(true)
		c.closeErr = c.uc.Close()
	})
	return c.closeErr
}

// SetReadDeadline bounds the next Recv calls (zero: no deadline).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.uc.SetReadDeadline(t) }

// SetWriteDeadline bounds the next Send calls (zero: only the write
// timeout applies).
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wdeadline = t
	return nil
}

// SetWriteTimeout sets how long each Send may wait for the peer to take the
// frame (DefaultWriteTimeout by default; d <= 0 restores it). A Send that
// times out having written part of a frame closes the connection; one that
// wrote nothing leaves it usable and returns an error Is
// os.ErrDeadlineExceeded.
func (c *Conn) SetWriteTimeout(d time.Duration) {
	if d <= 0 {
		d = DefaultWriteTimeout
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wtimeout = d
}

// Send writes one frame of type t. The descriptors (at most MaxFDs, as many
// as t allows) are duplicated into the peer; the caller keeps its own.
func (c *Conn) Send(t Type, payload []byte, fds ...int) error {
	if err := checkSend(t, len(payload), len(fds)); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	buf, err := AppendFrame(c.wbuf[:0], t, payload, len(fds))
	if err != nil {
		return err
	}
	c.wbuf = buf[:0]
	return c.write(t, buf, fds)
}

// SendMsg marshals m and sends it as one frame with the given descriptors.
// Binary messages are encoded without allocating.
func (c *Conn) SendMsg(m Message, fds ...int) error {
	t := m.Type()
	if err := checkSend(t, 0, len(fds)); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var h [HeaderSize]byte
	buf, err := m.AppendMarshal(append(c.wbuf[:0], h[:]...))
	if err != nil {
		return err
	}
	c.wbuf = buf[:0]
	n := len(buf) - HeaderSize
	if n > MaxPayload {
		return fmt.Errorf("%w: %s payload of %d bytes (max %d)", ErrTooLarge, t, n, MaxPayload)
	}
	PutHeader(buf, Header{Length: uint32(n), Type: t, NFDs: len(fds)})
	return c.write(t, buf, fds)
}

// TrySendMsg sends m (no descriptors) only if that needs no waiting:
// another sender is not writing and the socket takes the frame at once.
// Otherwise it returns false having written nothing, and the caller sends
// it later (SendMsg). It lets a thread that must never block (a pager
// thread) write a frame itself on an idle connection. In the unlikely case
// that the socket takes only part of the frame, the rest is written as by
// SendMsg (the write timeout applies); a unix stream socket takes a small
// frame whole or not at all, so a caller that must not block does not.
func (c *Conn) TrySendMsg(m Message) (bool, error) {
	t := m.Type()
	if err := checkSend(t, 0, 0); err != nil {
		return false, err
	}
	if !c.wmu.TryLock() {
		return false, nil
	}
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return false, ErrClosed
	}
	var h [HeaderSize]byte
	buf, err := m.AppendMarshal(append(c.wbuf[:0], h[:]...))
	if err != nil {
		return false, err
	}
	c.wbuf = buf[:0]
	n := len(buf) - HeaderSize
	if n > MaxPayload {
		return false, fmt.Errorf("%w: %s payload of %d bytes (max %d)", ErrTooLarge, t, n, MaxPayload)
	}
	PutHeader(buf, Header{Length: uint32(n), Type: t})
	w, err := linux.SendNow(c.raw, buf)
	switch {
	case errors.Is(err, linux.EAGAIN):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("wire: send %s: %w", t, err)
	case w < len(buf):
		if err := c.write(t, buf[w:], nil); err != nil {
			c.Close() // part of the frame is on the wire
			return true, err
		}
	}
	return true, nil
}

func checkSend(t Type, n, nfds int) error {
	if !t.Known() {
		return fmt.Errorf("wire: send: %w %d", ErrUnknownType, uint16(t))
	}
	if n > MaxPayload {
		return fmt.Errorf("wire: send: %w: %s payload of %d bytes (max %d)", ErrTooLarge, t, n, MaxPayload)
	}
	if lo, hi := t.FDs(); nfds < lo || nfds > hi {
		return fmt.Errorf("wire: send %s with %d descriptors: %w (want %d..%d)", t, nfds, ErrProtocol, lo, hi)
	}
	return nil
}

// write sends buf with fds attached to its first byte. Called with wmu held.
func (c *Conn) write(t Type, buf []byte, fds []int) error {
	if c.closed.Load() {
		return ErrClosed
	}
	dl := time.Now().Add(c.wtimeout)
	if !c.wdeadline.IsZero() && c.wdeadline.Before(dl) {
		dl = c.wdeadline
	}
	if err := c.uc.SetWriteDeadline(dl); err != nil {
		return fmt.Errorf("wire: send %s: %w", t, err)
	}
	n, _, err := c.uc.WriteMsgUnix(buf, linux.UnixRights(fds...), nil)
	if err == nil && n < len(buf) {
		// A stream socket may take part of the frame; the descriptors went
		// with the first byte, the rest follows as plain data.
		var m int
		m, err = c.uc.Write(buf[n:])
		n += m
	}
	if err != nil {
		if n > 0 {
			// Part of a frame is on the wire: the stream is unusable.
			c.Close()
		}
		return fmt.Errorf("wire: send %s: %w", t, err)
	}
	return nil
}

// Recv reads the next frame. The returned descriptors (received with
// O_CLOEXEC) belong to the caller; on error every descriptor received for
// the failed frame is closed. At a clean end of stream Recv returns io.EOF.
// An error in the middle of a frame (deadline, peer gone) closes the
// connection: the stream cannot be resynchronised. A malformed header (an
// error Is ErrProtocol) ends reading but leaves the write side open, so that
// the receiver can answer Error before it closes the connection; every later
// Recv returns the same error.
func (c *Conn) Recv() (Frame, error) {
	if c.closed.Load() {
		return Frame{}, ErrClosed
	}
	if c.rerr != nil {
		return Frame{}, c.rerr
	}
	var fds []int
	fail := func(err error) (Frame, error) {
		linux.CloseFDs(fds)
		c.Close()
		return Frame{}, err
	}
	broken := func(err error) (Frame, error) {
		linux.CloseFDs(fds)
		c.rerr = err
		return Frame{}, err
	}
	got, err := c.readFull(c.rhdr[:], &fds)
	if err != nil {
		if got == 0 && len(fds) == 0 {
			// Nothing of a new frame consumed: the stream is still aligned.
			if errors.Is(err, io.EOF) {
				return Frame{}, io.EOF
			}
			return Frame{}, c.recvErr(err)
		}
		return fail(c.recvErr(err))
	}
	h, err := ParseHeader(c.rhdr[:])
	if err != nil {
		return broken(fmt.Errorf("wire: recv: %w", err))
	}
	payload := make([]byte, h.Length)
	if _, err := c.readFull(payload, &fds); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fail(c.recvErr(fmt.Errorf("%s payload: %w", h.Type, err)))
	}
	if len(fds) != h.NFDs {
		return broken(fmt.Errorf("wire: recv %s: %w: %d descriptors arrived, header announced %d", h.Type, ErrProtocol, len(fds), h.NFDs))
	}
	return Frame{Type: h.Type, Payload: payload, FDs: fds}, nil
}

// Poll waits up to d for the next frame to start arriving by polling the
// socket, without sleeping: the calling thread keeps its CPU awake (other
// goroutines run between polls; other threads preempt it as the kernel's
// scheduler decides — it does not sched_yield, which on a busy CPU would
// hand the CPU away for a whole time slice and defeat the poll). It reports
// whether data (or the end of the stream) is there; Recv then reads it
// without waiting for a wake-up. For a reader that expects its peer to
// answer within microseconds, when waking a sleeping CPU costs more than
// that. Keep d short: the CPU is busy for all of it.
func (c *Conn) Poll(d time.Duration) bool {
	if c.closed.Load() || c.rerr != nil {
		return false
	}
	end := time.Now().Add(d)
	for {
		if c.rdy.Ready() {
			return true
		}
		if !time.Now().Before(end) {
			return false
		}
		runtime.Gosched()
	}
}

func (c *Conn) recvErr(err error) error {
	if c.closed.Load() {
		return ErrClosed
	}
	return fmt.Errorf("wire: recv: %w", err)
}

// readFull fills b from the socket, appending any descriptors that arrive
// to *fds. A premature end of stream is io.EOF when nothing was read and
// io.ErrUnexpectedEOF otherwise.
func (c *Conn) readFull(b []byte, fds *[]int) (int, error) {
	got := 0
	for got < len(b) {
		n, oobn, err := linux.RecvMsg(c.uc, b[got:], c.roob, 0)
		if oobn > 0 {
			more, perr := linux.ParseUnixRights(c.roob[:oobn])
			*fds = append(*fds, more...)
			if perr == nil && len(*fds) > MaxFDs {
				perr = fmt.Errorf("%w: more than %d descriptors in one frame", ErrTooLarge, MaxFDs)
			}
			if perr != nil && err == nil {
				err = perr
			}
		}
		got += n
		if err != nil {
			return got, err
		}
		if n == 0 {
			if got == 0 {
				return 0, io.EOF
			}
			return got, io.ErrUnexpectedEOF
		}
	}
	return got, nil
}

// RecvContext is Recv that gives up when ctx ends (the connection is then
// closed if a frame was partly read, as with any mid-frame error). It uses
// the read deadline and clears it afterwards when ctx fired.
func (c *Conn) RecvContext(ctx context.Context) (Frame, error) {
	if err := ctx.Err(); err != nil {
		return Frame{}, fmt.Errorf("wire: recv: %w", err)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(fired)
		c.uc.SetReadDeadline(time.Unix(1, 0)) // in the past: wakes the reader
	})
	f, err := c.Recv()
	if !stop() {
		<-fired
		c.uc.SetReadDeadline(time.Time{})
		if err != nil {
			return Frame{}, fmt.Errorf("wire: recv: %w", context.Cause(ctx))
		}
	}
	return f, err
}

// CloseFDs closes the frame's descriptors (for frames whose descriptors the
// receiver does not adopt) and forgets them.
func (f *Frame) CloseFDs() {
	linux.CloseFDs(f.FDs)
	f.FDs = nil
}
