package wire

import (
	"encoding/binary"
	"errors"
	"testing"
)

func header(length uint32, t Type, flags uint16) []byte {
	b := make([]byte, HeaderSize)
	binary.LittleEndian.PutUint32(b, length)
	binary.LittleEndian.PutUint16(b[4:], uint16(t))
	binary.LittleEndian.PutUint16(b[6:], flags)
	return b
}

func TestParseHeader(t *testing.T) {
	cases := []struct {
		name string
		b    []byte
		want error // nil: valid
	}{
		{"ok", header(10, TypeHello, 0), nil},
		{"ok with fd", header(10, TypeUffdAdd, 1), nil},
		{"max payload", header(MaxPayload, TypeHello, 0), nil},
		{"short", []byte{1, 2, 3}, ErrProtocol},
		{"hostile length", header(0xffffffff, TypeHello, 0), ErrTooLarge},
		{"just over", header(MaxPayload+1, TypeForward, 0), ErrTooLarge},
		{"unknown type", header(0, 999, 0), ErrUnknownType},
		{"type zero", header(0, 0, 0), ErrUnknownType},
		{"reserved flags", header(0, TypeHello, 0x10), ErrProtocol},
		{"too many fds", header(0, TypeAttach, 9), ErrTooLarge},
		{"fd on a type without", header(0, TypeHello, 1), ErrProtocol},
		{"missing fd", header(0, TypeUffdAdd, 0), ErrProtocol},
	}
	for _, c := range cases {
		_, err := ParseHeader(c.b)
		if c.want == nil && err != nil || c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: ParseHeader(% x) = %v, want %v", c.name, c.b, err, c.want)
		}
	}
}

func TestHostileHeaderDoesNotAllocate(t *testing.T) {
	b := header(0xffffffff, TypeHello, 0)
	allocs := testing.AllocsPerRun(10, func() {
		if _, _, err := DecodeFrame(b); err == nil {
			t.Fatal("hostile header accepted")
		}
	})
	// The error value itself may allocate; the payload must not be.
	if allocs > 8 {
		t.Fatalf("DecodeFrame of a hostile header: %v allocations", allocs)
	}
}

func TestDecodeFrameTruncated(t *testing.T) {
	b, err := AppendFrame(nil, TypeDetach, []byte(`{"addr":1}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(b); i++ {
		if _, _, err := DecodeFrame(b[:i]); !errors.Is(err, ErrProtocol) {
			t.Fatalf("DecodeFrame of %d/%d bytes: %v", i, len(b), err)
		}
	}
	// Two frames back to back decode one at a time.
	two := append(append([]byte{}, b...), b...)
	f, n, err := DecodeFrame(two)
	if err != nil || n != len(b) || f.Type != TypeDetach {
		t.Fatalf("first of two frames: %v %d %v", f.Type, n, err)
	}
}

func TestAppendFrameLimits(t *testing.T) {
	if _, err := AppendFrame(nil, TypeHello, make([]byte, MaxPayload+1), 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized payload: %v", err)
	}
	if _, err := AppendFrame(nil, TypeAttach, nil, MaxFDs+1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too many fds: %v", err)
	}
}

func TestDecodeChecksFDCount(t *testing.T) {
	f := Frame{Type: TypeUffdAdd, Payload: []byte(`{"uffd_id":1}`)}
	if _, err := Decode(f); !errors.Is(err, ErrProtocol) {
		t.Errorf("UffdAdd without its fd: %v", err)
	}
	f.FDs = []int{-1}
	if _, err := Decode(f); err != nil {
		t.Errorf("UffdAdd with one fd: %v", err)
	}
	if _, err := Decode(Frame{Type: 200}); !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type: %v", err)
	}
}
