package worker

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/linux"
)

// The raw_xproc reference floor: rawHandler's loop, unchanged, in a
// process of its own. The worker registers its region on a uffd, starts
// `<HandlerCommand> --raw-handler …` with one end of a socketpair as fd 3,
// sends the uffd over it (SCM_RIGHTS) with the region's start and length,
// and waits until the handler has pinned its thread (to the toucher's CPU)
// and says it is ready. The worker then closes its own copy of the uffd:
// the handler holds the only one, as a vcore's pager does, so a handler
// that dies lets the faults fall back to the kernel's zero pages (the
// content check then fails) instead of hanging the toucher. After the
// touch loop the worker writes "stop"; the handler answers with the faults
// it served and its error, and exits. A worker that dies closes the socket,
// which stops the handler too.
//
// This is what a fault costs when the handler lives in another address
// space: the floor of any pager outside the worker (vcored's are in the
// vcore and core daemons). raw_floor (handler thread in the toucher's own
// process) hides that hand-off.

// handlerFD is the socket's descriptor number in the handler process.
const handlerFD = 3

// xprocTimeout bounds every exchange with the handler process.
const xprocTimeout = 30 * time.Second

// handlerMsg is what the handler process writes to the worker, one JSON
// value per message: first {"ready":true} (or an error), then, after
// "stop", the faults served and the handler's error.
type handlerMsg struct {
	Ready  bool   `json:"ready,omitempty"`
	Faults int64  `json:"faults"`
	Error  string `json:"error,omitempty"`
}

// xprocHandler is the worker's side of a handler process.
type xprocHandler struct {
	cmd    *exec.Cmd
	conn   *net.UnixConn
	dec    *json.Decoder
	stderr *lockedBuffer
	waited chan error
}

// lockedBuffer collects the child's stderr (written by exec's copier
// goroutine, read on failure).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.TrimSpace(l.b.String())
}

// socketPair returns a connected unix stream pair: ours as a *net.UnixConn,
// the child's as an *os.File to pass in ExtraFiles.
func socketPair() (*net.UnixConn, *os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "raw-handler-socket")
	theirs := os.NewFile(uintptr(fds[1]), "raw-handler-socket")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return c.(*net.UnixConn), theirs, nil
}

// startXprocHandler registers mem on a new uffd and hands it to a new
// handler process (command is its argv prefix, e.g. [vcored worker])
// pinned to cpu. It returns once the handler serves.
func startXprocHandler(ctx context.Context, command []string, mem []byte, v bench.Verify, faultAround, cpu int) (_ *xprocHandler, err error) {
	if len(command) == 0 {
		return nil, fmt.Errorf("%w: no handler command", bench.ErrUsage)
	}
	u, start, err := registerUffd(mem)
	if err != nil {
		return nil, err
	}
	// Ours is closed whatever happens: once sent, the handler's copy is
	// the only one (see the package comment above).
	defer u.Close()
	conn, theirs, err := socketPair()
	if err != nil {
		return nil, err
	}
	args := append(command[1:len(command):len(command)], "--raw-handler",
		"--cpu", strconv.Itoa(cpu), "--fault-around", strconv.Itoa(faultAround))
	if v.Kind != "" {
		args = append(args, "--verify", v.String())
	}
	x := &xprocHandler{cmd: exec.CommandContext(ctx, command[0], args...), conn: conn, stderr: &lockedBuffer{}, waited: make(chan error, 1)}
	x.cmd.ExtraFiles = []*os.File{theirs} // fd 3 == handlerFD
	x.cmd.Stderr = x.stderr
	x.cmd.Cancel = func() error { return x.cmd.Process.Kill() }
	x.cmd.WaitDelay = xprocTimeout
	err = x.cmd.Start()
	theirs.Close()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start handler process: %w", err)
	}
	go func() { x.waited <- x.cmd.Wait() }()
	defer func() {
		if err != nil {
			err = errors.Join(err, x.abort())
		}
	}()

	var hdr [16]byte
	binary.LittleEndian.PutUint64(hdr[0:], uint64(start))
	binary.LittleEndian.PutUint64(hdr[8:], uint64(len(mem)))
	if err := conn.SetDeadline(time.Now().Add(xprocTimeout)); err != nil {
		return nil, err
	}
	if _, _, err := conn.WriteMsgUnix(hdr[:], linux.UnixRights(u.FD()), nil); err != nil {
		return nil, fmt.Errorf("send uffd to the handler process: %w", err)
	}
	x.dec = json.NewDecoder(conn)
	var m handlerMsg
	if err := x.dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("handler process did not get ready: %w", err)
	}
	if m.Error != "" || !m.Ready {
		return nil, fmt.Errorf("handler process: %s", m.Error)
	}
	return x, nil
}

// stop asks the handler to stop and returns the faults it served and the
// first error it or its process hit.
func (x *xprocHandler) stop() (int64, error) {
	if err := x.conn.SetDeadline(time.Now().Add(xprocTimeout)); err != nil {
		return 0, errors.Join(err, x.abort())
	}
	if _, err := x.conn.Write([]byte("stop\n")); err != nil {
		return 0, errors.Join(fmt.Errorf("stop the handler process: %w", err), x.abort())
	}
	var m handlerMsg
	if err := x.dec.Decode(&m); err != nil {
		return 0, errors.Join(fmt.Errorf("handler process's answer: %w", err), x.abort())
	}
	x.conn.Close()
	var errs []error
	if m.Error != "" {
		errs = append(errs, errors.New(m.Error))
	}
	if err := x.wait(); err != nil {
		errs = append(errs, err)
	}
	return m.Faults, errors.Join(errs...)
}

// abort closes the socket (the handler stops on EOF) and waits for the
// process, killing it if it does not exit in time.
func (x *xprocHandler) abort() error {
	x.conn.Close()
	return x.wait()
}

func (x *xprocHandler) wait() error {
	select {
	case err := <-x.waited:
		return x.exitErr(err)
	case <-time.After(xprocTimeout):
		x.cmd.Process.Kill()
		return x.exitErr(<-x.waited)
	}
}

func (x *xprocHandler) exitErr(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("handler process: %w: %s", err, x.stderr.String())
}

// ServeRawHandler is the handler process's side (`vcored worker
// --raw-handler`): it receives the uffd on fd 3, serves it like raw_floor's
// handler thread pinned to cpu until the worker says stop (or goes away),
// and reports the faults it served.
func ServeRawHandler(ctx context.Context, v bench.Verify, faultAround, cpu int) error {
	f := os.NewFile(handlerFD, "raw-handler-socket")
	if f == nil {
		return fmt.Errorf("%w: --raw-handler needs the worker's socket as fd %d", bench.ErrUsage, handlerFD)
	}
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%w: --raw-handler: fd %d is not the worker's socket: %w", bench.ErrUsage, handlerFD, err)
	}
	conn, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return fmt.Errorf("%w: --raw-handler: fd %d is not a unix socket", bench.ErrUsage, handlerFD)
	}
	defer conn.Close()
	enc := json.NewEncoder(conn)
	reply := func(m handlerMsg) error {
		if err := conn.SetWriteDeadline(time.Now().Add(xprocTimeout)); err != nil {
			return err
		}
		return enc.Encode(m)
	}
	h, err := receiveAndServe(conn, v, faultAround, cpu)
	if err != nil {
		return errors.Join(err, reply(handlerMsg{Error: err.Error()}))
	}
	if err := reply(handlerMsg{Ready: true}); err != nil {
		_, herr := h.stop()
		return errors.Join(err, herr)
	}
	// Any byte ("stop") or the worker closing the socket ends the service.
	stopped := make(chan struct{})
	go func() {
		conn.SetReadDeadline(time.Time{})
		var b [8]byte
		conn.Read(b[:])
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
	}
	faults, herr := h.stop()
	m := handlerMsg{Faults: faults}
	if herr != nil {
		m.Error = herr.Error()
	}
	// The worker may be gone (it closed the socket): then nobody reads
	// the answer, and that is no error of the handler.
	_ = reply(m)
	conn.Close()
	<-stopped
	return herr
}

// receiveAndServe reads the region and its uffd from conn and starts the
// handler thread on them.
func receiveAndServe(conn *net.UnixConn, v bench.Verify, faultAround, cpu int) (*rawHandler, error) {
	if err := conn.SetReadDeadline(time.Now().Add(xprocTimeout)); err != nil {
		return nil, err
	}
	var hdr [16]byte
	oob := make([]byte, linux.RightsSpace(1))
	n, oobn, err := linux.RecvMsg(conn, hdr[:], oob, 0)
	if err != nil {
		return nil, fmt.Errorf("receive the uffd: %w", err)
	}
	fds, err := linux.ParseUnixRights(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("receive the uffd: %w", err)
	}
	if len(fds) != 1 {
		linux.CloseFDs(fds)
		return nil, fmt.Errorf("receive the uffd: got %d descriptors, want 1", len(fds))
	}
	u := linux.NewUffd(fds[0])
	if n < len(hdr) {
		if _, err := io.ReadFull(conn, hdr[n:]); err != nil {
			u.Close()
			return nil, fmt.Errorf("receive the region: %w", err)
		}
	}
	start := uintptr(binary.LittleEndian.Uint64(hdr[0:]))
	length := binary.LittleEndian.Uint64(hdr[8:])
	ps := uint64(linux.PageSize())
	if start == 0 || length == 0 || length%ps != 0 || uint64(start)%ps != 0 {
		u.Close()
		return nil, fmt.Errorf("bad region %#x+%d", start, length)
	}
	h, err := serveRawHandler(u, start, int(length), v, faultAround, cpu)
	if err != nil {
		u.Close()
		return nil, err
	}
	return h, nil
}
