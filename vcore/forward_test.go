package vcore

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

// wirePair returns two framed connections talking to each other.
func wirePair(t *testing.T) (*wire.Conn, *wire.Conn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pair.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	acc := make(chan *net.UnixConn, 1)
	go func() {
		c, _ := l.AcceptUnix()
		acc <- c
	}()
	a, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	ca, err := wire.NewConn(a)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := wire.NewConn(b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ca.Close(); cb.Close() })
	return ca, cb
}

// forwardVCore is a VCore with only what forwarding needs, connected to
// "core" (the returned end).
func forwardVCore(t *testing.T) (*VCore, *wire.Conn) {
	toCore, core := wirePair(t)
	v := &VCore{
		log:     slog.New(slog.DiscardHandler),
		conn:    toCore,
		pending: map[uint64]pendingForward{},
		fwdLat:  map[string]*hist.Histogram{},
	}
	return v, core
}

func fault(page uintptr) pager.Fault {
	return pager.Fault{Uffd: 7, Addr: 0x7f0000000000 + page*4096, Dataspace: "shared", Offset: uint64(page * 4096), TID: 42, Start: time.Now()}
}

// recvForward reads the next frame at core, which must be a Forward.
func recvForward(t *testing.T, core *wire.Conn) wire.Forward {
	t.Helper()
	_ = core.SetReadDeadline(time.Now().Add(30 * time.Second))
	f, err := core.Recv()
	if err != nil {
		t.Fatalf("core: %v", err)
	}
	var fw wire.Forward
	if f.Type != wire.TypeForward || fw.Unmarshal(f.Payload) != nil {
		t.Fatalf("core got %s, want a Forward", f.Type)
	}
	return fw
}

// TestTryForwardWritesOnIdleConnection: with nothing queued for core, the
// pager thread's TryForward writes the Forward itself — no sendLoop runs
// here — and records it as pending; the same page again (a re-raised
// fault) is taken without a second Forward.
func TestTryForwardWritesOnIdleConnection(t *testing.T) {
	v, core := forwardVCore(t)
	if !v.tryForward(fault(3)) {
		t.Fatal("tryForward did not take the fault on an idle connection")
	}
	fw := recvForward(t, core)
	if fw.UffdID != 7 || fw.Addr != 0x7f0000003000 || fw.Offset != 3*4096 || fw.Dataspace != "shared" || fw.TID != 42 || fw.SeqNo != 1 {
		t.Fatalf("Forward %+v", fw)
	}
	if _, ok := v.pending[1]; !ok || len(v.pending) != 1 {
		t.Fatalf("pending %v, want seqno 1 (replayed after a reconnect until answered)", v.pending)
	}
	if !v.tryForward(fault(3)) {
		t.Fatal("a re-raised fault of a page on its way to core was not taken")
	}
	if core.Poll(50 * time.Millisecond) {
		t.Fatal("the same page was forwarded twice")
	}
	if len(v.out.q) != 0 || v.out.busy {
		t.Fatalf("outbox left with %d queued, busy %v", len(v.out.q), v.out.busy)
	}
}

// TestTryForwardBehindQueued: a Forward never overtakes a message queued
// for core before it (the RegionAdd of the region it faulted in): with the
// outbox holding one, TryForward queues the Forward behind it.
func TestTryForwardBehindQueued(t *testing.T) {
	v, core := forwardVCore(t)
	v.mu.Lock()
	v.queueLocked(&wire.RegionAdd{UffdID: 7, Region: wire.Region{Start: 0x7f0000000000, Length: 1 << 20, Dataspace: "shared", Forward: true}}, nil)
	v.mu.Unlock()
	if !v.tryForward(fault(1)) {
		t.Fatal("tryForward did not take the fault")
	}
	if core.Poll(50 * time.Millisecond) {
		t.Fatal("the Forward was written ahead of the queued RegionAdd")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); v.sendLoop(ctx) }()
	defer func() { cancel(); <-done }()
	_ = core.SetReadDeadline(time.Now().Add(30 * time.Second))
	f, err := core.Recv()
	if err != nil || f.Type != wire.TypeRegionAdd {
		t.Fatalf("first frame %s, %v; want the RegionAdd", f.Type, err)
	}
	if fw := recvForward(t, core); fw.SeqNo != 1 {
		t.Fatalf("Forward %+v", fw)
	}
}

// TestTryForwardNeverWaits: TryForward gives up at once when v.mu is busy
// (a registration under way; nothing is recorded, the pager queues the
// fault for forward) and when the connection cannot take the frame (core
// does not read): the Forward is queued, and every forward reaches core,
// in order, once it reads again.
func TestTryForwardNeverWaits(t *testing.T) {
	v, core := forwardVCore(t)
	v.mu.Lock()
	took := v.tryForward(fault(0))
	v.mu.Unlock()
	if took || len(v.pending) != 0 {
		t.Fatalf("with v.mu busy: took %v, %d pending; want neither", took, len(v.pending))
	}
	// Core does not read: forward until the socket is full and one more
	// than that is queued.
	var n uintptr
	for {
		n++
		if !v.tryForward(fault(n)) {
			t.Fatalf("fault %d not taken", n)
		}
		v.out.mu.Lock()
		queued := len(v.out.q)
		v.out.mu.Unlock()
		if queued >= 3 {
			break
		}
		if n > 1<<20 {
			t.Fatal("the socket never filled up")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); v.sendLoop(ctx) }()
	defer func() { cancel(); <-done }()
	for want := uint64(1); want <= uint64(n); want++ {
		if fw := recvForward(t, core); fw.SeqNo != want || fw.Addr != uint64(fault(uintptr(want)).Addr) {
			t.Fatalf("Forward %+v, want seqno %d", fw, want)
		}
	}
}
