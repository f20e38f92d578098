package wire

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// TestConnHeaderErrorLeavesWriteSide: after a malformed header the receiver
// can still answer Error before closing; reading stays broken.
func TestConnHeaderErrorLeavesWriteSide(t *testing.T) {
	a, b := rawPair(t)
	cb := newConn(b, linux.Ucred{})
	ca := newConn(a, linux.Ucred{})
	// Reserved flag bits set.
	if _, err := a.Write([]byte{0, 0, 0, 0, byte(TypeDetach), 0, 0x10, 0}); err != nil {
		t.Fatal(err)
	}
	_, err := cb.Recv()
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("Recv of a bad header: %v", err)
	}
	if _, err2 := cb.Recv(); !errors.Is(err2, ErrProtocol) {
		t.Fatalf("second Recv: %v, want the same protocol error", err2)
	}
	if err := cb.SendMsg(&Error{Code: CodeBadRequest, Msg: err.Error()}); err != nil {
		t.Fatalf("answer after a bad header: %v", err)
	}
	ca.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := ca.Recv()
	if err != nil || f.Type != TypeError {
		t.Fatalf("the peer got %v %v, want the Error frame", f.Type, err)
	}
}

// TestConnWriteTimeout: a peer that never reads makes Send fail within the
// write timeout instead of blocking forever.
func TestConnWriteTimeout(t *testing.T) {
	a, _ := rawPair(t)
	ca := newConn(a, linux.Ucred{})
	ca.SetWriteTimeout(200 * time.Millisecond)
	payload := make([]byte, MaxPayload)
	start := time.Now()
	var err error
	for time.Since(start) < 30*time.Second {
		if err = ca.Send(TypeAck, payload); err != nil {
			break
		}
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Send to a peer that does not read: %v after %v, want a deadline error", err, time.Since(start))
	}
}
