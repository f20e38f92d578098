package wire

import (
	"errors"
	"testing"
	"time"
)

// TestConnTrySendMsg: on an idle connection the frame is written at once;
// while another sender writes (wmu held) or the socket cannot take the
// frame, nothing is written and false comes back, and the stream stays
// aligned (every frame that was sent arrives whole, in order).
func TestConnTrySendMsg(t *testing.T) {
	a, b := connPair(t)
	fw := &Forward{UffdID: 3, Addr: 0x7000, Offset: 0x1000, SeqNo: 1, TID: 9, Dataspace: "shared"}
	if sent, err := a.TrySendMsg(fw); !sent || err != nil {
		t.Fatalf("idle connection: sent %v, err %v; want sent", sent, err)
	}
	f, err := b.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var got Forward
	if f.Type != TypeForward || got.Unmarshal(f.Payload) != nil || got != *fw {
		t.Fatalf("received %s %+v, want %+v", f.Type, got, *fw)
	}

	// Another sender holds the connection: no waiting.
	a.wmu.Lock()
	sent, err := a.TrySendMsg(fw)
	a.wmu.Unlock()
	if sent || err != nil {
		t.Fatalf("with another sender writing: sent %v, err %v; want not sent, no error", sent, err)
	}

	// Fill the socket (nobody reads b): TrySendMsg must return, not wait.
	n := uint64(0)
	start := time.Now()
	for {
		n++
		fw.SeqNo = n
		sent, err := a.TrySendMsg(fw)
		if err != nil {
			t.Fatal(err)
		}
		if !sent {
			break
		}
		if time.Since(start) > time.Minute {
			t.Fatal("the socket never filled up")
		}
	}
	// Every frame written arrives whole and in order; the refused one was
	// not written at all.
	for want := uint64(1); want < n; want++ {
		f, err := b.Recv()
		if err != nil {
			t.Fatalf("frame %d: %v", want, err)
		}
		if got.Unmarshal(f.Payload) != nil || got.SeqNo != want {
			t.Fatalf("frame %d: got %+v", want, got)
		}
	}
	// Drained: it is written again.
	fw.SeqNo = n
	if sent, err := a.TrySendMsg(fw); !sent || err != nil {
		t.Fatalf("after draining: sent %v, err %v", sent, err)
	}
	if f, err := b.Recv(); err != nil || got.Unmarshal(f.Payload) != nil || got.SeqNo != n {
		t.Fatalf("after draining: got %+v, %v; want seqno %d", got, err, n)
	}

	a.Close()
	if sent, err := a.TrySendMsg(fw); sent || !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: sent %v, err %v; want ErrClosed", sent, err)
	}
}

// TestConnPoll: Poll reports a frame that is there (or arrives while it
// polls) and gives up after its window when none comes; it reports the
// end of the stream as readable (Recv then returns it).
func TestConnPoll(t *testing.T) {
	a, b := connPair(t)
	start := time.Now()
	if b.Poll(2 * time.Millisecond) {
		t.Fatal("Poll reported data on an empty connection")
	}
	if waited := time.Since(start); waited < 2*time.Millisecond {
		t.Fatalf("Poll gave up after %v, before its 2ms window", waited)
	}
	if err := a.SendMsg(&ForwardDone{SeqNo: 1}); err != nil {
		t.Fatal(err)
	}
	if !b.Poll(0) {
		t.Fatal("Poll missed a frame already there")
	}
	if f, err := b.Recv(); err != nil || f.Type != TypeForwardDone {
		t.Fatalf("Recv after Poll: %v %v", f.Type, err)
	}
	go func() {
		time.Sleep(time.Millisecond)
		_ = a.SendMsg(&ForwardDone{SeqNo: 2})
	}()
	if !b.Poll(time.Minute) {
		t.Fatal("Poll missed a frame that arrived while it polled")
	}
	if _, err := b.Recv(); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if !b.Poll(time.Minute) {
		t.Fatal("Poll did not report the end of the stream")
	}
	b.Close()
	if b.Poll(time.Minute) {
		t.Fatal("Poll on a closed connection reported data")
	}
}

// TestConnPollDoesNotAllocate: Poll spins back to back; it must not make
// garbage per poll.
func TestConnPollDoesNotAllocate(t *testing.T) {
	_, b := connPair(t)
	if n := testing.AllocsPerRun(20, func() { b.Poll(100 * time.Microsecond) }); n > 0 {
		t.Fatalf("Poll allocates %v times per call", n)
	}
}
