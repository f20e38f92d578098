package linux

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sockPair returns two connected unix stream sockets as *net.UnixConn.
func sockPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conv := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "sockpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatalf("FileConn: %v", err)
		}
		return c.(*net.UnixConn)
	}
	a, b := conv(fds[0]), conv(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestSockPeerCred(t *testing.T) {
	a, _ := sockPair(t)
	cred, err := PeerCred(a)
	if err != nil {
		t.Fatal(err)
	}
	want := Ucred{Pid: os.Getpid(), Uid: os.Geteuid(), Gid: os.Getegid()}
	if cred != want {
		t.Fatalf("PeerCred = %+v, want %+v", cred, want)
	}
}

func TestSockRightsRoundTrip(t *testing.T) {
	a, b := sockPair(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, _, err := a.WriteMsgUnix([]byte("x"), UnixRights(int(w.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	w.Close() // the receiver's copy must keep the pipe open

	p := make([]byte, 4)
	oob := make([]byte, RightsSpace(4))
	n, oobn, err := RecvMsg(b, p, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || p[0] != 'x' {
		t.Fatalf("data = %q, want \"x\"", p[:n])
	}
	fds, err := ParseUnixRights(oob[:oobn])
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != 1 {
		t.Fatalf("got %d fds, want 1", len(fds))
	}
	flags, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("received fd %d lacks FD_CLOEXEC", fds[0])
	}
	// The received descriptor is the pipe's write end: write through it.
	if _, err := unix.Write(fds[0], []byte("hello")); err != nil {
		t.Fatal(err)
	}
	CloseFDs(fds)
	got := make([]byte, 16)
	m, err := r.Read(got)
	if err != nil || string(got[:m]) != "hello" {
		t.Fatalf("read through passed fd: %q, %v", got[:m], err)
	}
}

func TestSockRecvMsgTruncatedClosesFDs(t *testing.T) {
	a, b := sockPair(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	// Three descriptors, room for one.
	fd := int(w.Fd())
	if _, _, err := a.WriteMsgUnix([]byte("x"), UnixRights(fd, fd, fd), nil); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 1)
	oob := make([]byte, RightsSpace(1))
	if _, _, err := RecvMsg(b, p, oob, 0); !errors.Is(err, ErrControlTruncated) {
		t.Fatalf("RecvMsg err = %v, want ErrControlTruncated", err)
	}
}

func TestSockParseUnixRightsGarbage(t *testing.T) {
	for _, oob := range [][]byte{{1, 2, 3}, make([]byte, 15), {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 1, 0, 0, 0}} {
		if fds, err := ParseUnixRights(oob); err == nil && len(fds) > 0 {
			t.Errorf("ParseUnixRights(%x) = %v, want no descriptors", oob, fds)
		}
	}
	if fds, err := ParseUnixRights(nil); err != nil || fds != nil {
		t.Errorf("ParseUnixRights(nil) = %v, %v", fds, err)
	}
}

func TestSockRecvPeek(t *testing.T) {
	a, b := sockPair(t)
	if _, err := a.Write([]byte("VC")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	buf := make([]byte, 4)
	go func() {
		_, err := RecvPeek(b, buf)
		done <- err
	}()
	// The peek must wait for the remaining bytes rather than return early.
	select {
	case err := <-done:
		t.Fatalf("RecvPeek returned early: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := a.Write([]byte("W1rest")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if string(buf) != "VCW1" {
		t.Fatalf("peeked %q", buf)
	}
	// Nothing was consumed.
	all := make([]byte, 8)
	n, err := b.Read(all)
	if err != nil || string(all[:n]) != "VCW1rest" {
		t.Fatalf("read after peek: %q, %v", all[:n], err)
	}
}

func TestSockRecvPeekDeadlineAndClose(t *testing.T) {
	a, b := sockPair(t)
	if err := b.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := RecvPeek(b, make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("RecvPeek on idle socket: %v, want deadline exceeded", err)
	}
	if err := b.SetReadDeadline(time.Time{}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if _, err := RecvPeek(b, make([]byte, 4)); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("RecvPeek after close: %v, want ErrPeerClosed", err)
	}
}
