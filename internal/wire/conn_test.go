package wire

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// rawPair returns two connected raw unix sockets.
func rawPair(t testing.TB) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pair.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type res struct {
		c   *net.UnixConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.AcceptUnix()
		ch <- res{c, err}
	}()
	a, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

// connPair returns two framed Conns talking to each other.
func connPair(t testing.TB) (*Conn, *Conn) {
	t.Helper()
	a, b := rawPair(t)
	ca, err := NewConn(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := NewConn(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close(); cb.Close() })
	return ca, cb
}

func TestConnFDPassing(t *testing.T) {
	a, b := connPair(t)
	if p := a.Peer(); p.Pid != os.Getpid() || p.Uid != os.Geteuid() {
		t.Fatalf("Peer() = %+v", p)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := &UffdAdd{UffdID: 5, WorkerPid: 42, Regions: []Region{sampleRegion}}
	if err := a.SendMsg(m, int(w.Fd())); err != nil {
		t.Fatal(err)
	}
	w.Close() // only the passed copy keeps the write end open now
	f, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if got.(*UffdAdd).UffdID != 5 || len(f.FDs) != 1 {
		t.Fatalf("got %#v with fds %v", got, f.FDs)
	}
	pw := os.NewFile(uintptr(f.FDs[0]), "passed pipe")
	if _, err := pw.Write([]byte("through the socket")); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	data, err := io.ReadAll(r)
	if err != nil || string(data) != "through the socket" {
		t.Fatalf("read %q, %v", data, err)
	}
}

func TestConnConcurrentSendersLargeFrames(t *testing.T) {
	a, b := connPair(t)
	// Small socket buffers force partial writes of the 64 KiB frames.
	if err := a.uc.SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	if err := b.uc.SetReadBuffer(4096); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	const senders, each = 4, 20
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for i := range each {
				payload := bytes.Repeat([]byte{byte(s), byte(i)}, MaxPayload/2)
				if i%2 == 0 {
					payload = payload[:2+2*i] // mix small and full-size frames
				}
				if err := a.Send(TypeAttach, payload, int(w.Fd())); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	counts := make([]int, senders)
	for range senders * each {
		f, err := b.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(f.FDs) != 1 {
			t.Fatalf("frame with %d fds", len(f.FDs))
		}
		f.CloseFDs()
		s, i := int(f.Payload[0]), int(f.Payload[1])
		if s >= senders || i != counts[s] {
			t.Fatalf("frame (sender %d, #%d) out of order; want #%d", s, i, counts[s])
		}
		for j := 0; j < len(f.Payload); j += 2 {
			if f.Payload[j] != byte(s) || f.Payload[j+1] != byte(i) {
				t.Fatalf("frames interleaved at byte %d of frame (sender %d, #%d)", j, s, i)
			}
		}
		counts[s]++
	}
	wg.Wait()
}

func TestConnRecvClosesFDsOnError(t *testing.T) {
	raw, peer := rawPair(t)
	b, err := NewConn(peer)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// A Detach frame (no descriptors allowed) that carries one anyway.
	frame, _ := AppendFrame(nil, TypeDetach, []byte(`{"addr":1}`), 0)
	if _, _, err := raw.WriteMsgUnix(frame, linux.UnixRights(int(w.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := b.Recv(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Recv = %v, want ErrProtocol", err)
	}
	// Every write end is closed again: the reader sees end of file.
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("pipe read after the bad frame: %d, %v (the received fd leaked)", n, err)
	}
	// Reading is over after a protocol error (the write side stays open for
	// an Error answer).
	if _, err := b.Recv(); !errors.Is(err, ErrProtocol) {
		t.Fatalf("Recv after a protocol error: %v, want the protocol error again", err)
	}
}

func TestConnRecvHostileLength(t *testing.T) {
	raw, peer := rawPair(t)
	b, err := NewConn(peer)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := raw.Write(header(0xfffffff0, TypeHello, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recv(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Recv = %v, want ErrTooLarge", err)
	}
}

func TestConnEOFAndTruncation(t *testing.T) {
	a, b := connPair(t)
	if err := a.SendMsg(&Detach{Addr: 1}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := a.SendMsg(&Detach{Addr: 2}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send on closed conn: %v", err)
	}
	if _, err := b.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recv(); err != io.EOF {
		t.Fatalf("Recv at end of stream = %v, want io.EOF", err)
	}

	raw, peer := rawPair(t)
	c, err := NewConn(peer)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	frame, _ := AppendFrame(nil, TypeDetach, []byte(`{"addr":1}`), 0)
	raw.Write(frame[:len(frame)-3])
	raw.Close()
	if _, err := c.Recv(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("Recv of a truncated frame = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestConnRecvContext(t *testing.T) {
	a, b := connPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	if _, err := b.RecvContext(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("RecvContext = %v, want context.Canceled", err)
	}
	// The connection stays usable: nothing of a frame had been read.
	if err := a.SendMsg(&Ack{Of: TypeRelease}); err != nil {
		t.Fatal(err)
	}
	f, err := b.RecvContext(context.Background())
	if err != nil || f.Type != TypeAck {
		t.Fatalf("RecvContext after a cancelled one: %v %v", f.Type, err)
	}
}

func TestConnCloseUnblocksRecv(t *testing.T) {
	_, b := connPair(t)
	done := make(chan error, 1)
	go func() {
		_, err := b.Recv()
		done <- err
	}()
	time.Sleep(10 * time.Millisecond)
	b.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Recv after Close = %v, want ErrClosed", err)
	}
}

func TestConnSendChecks(t *testing.T) {
	a, _ := connPair(t)
	if err := a.Send(300, nil); !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type: %v", err)
	}
	if err := a.SendMsg(&UffdAdd{}); !errors.Is(err, ErrProtocol) {
		t.Errorf("UffdAdd without fd: %v", err)
	}
	if err := a.Send(TypeHello, make([]byte, MaxPayload+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized: %v", err)
	}
}
