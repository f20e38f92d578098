package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Protocol constants.
const (
	// Magic is the 4 bytes a client sends first (alone, with no descriptors
	// attached) to select the framed protocol; any other start is HTTP.
	Magic = "VCW1"
	// Version is the protocol version carried in Hello.
	Version = 1
	// HeaderSize is the size of a frame header.
	HeaderSize = 8
	// MaxPayload bounds a frame's payload. A header announcing more is a
	// protocol error, detected before anything is allocated.
	MaxPayload = 64 << 10
	// MaxFDs bounds the descriptors attached to one frame.
	MaxFDs = 8
	// MaxName bounds names (dataspaces, subsystems) in binary messages.
	MaxName = 255

	flagFDMask = 0x000f // flags bits 0-3: number of attached descriptors
)

// Errors, matched with errors.Is.
var (
	// ErrProtocol is wrapped by every malformed-input error: bad header,
	// oversized payload, unknown type, bad message encoding, wrong
	// descriptor count.
	ErrProtocol = errors.New("wire: protocol error")
	// ErrTooLarge is wrapped when a payload exceeds MaxPayload (on send or
	// receive) or a frame would carry more than MaxFDs descriptors.
	ErrTooLarge = fmt.Errorf("%w: frame too large", ErrProtocol)
	// ErrUnknownType is wrapped when a frame has a type not in the table.
	ErrUnknownType = fmt.Errorf("%w: unknown message type", ErrProtocol)
	// ErrClosed is returned by operations on a closed Conn or Listener.
	ErrClosed = errors.New("wire: closed")
)

// Header is a decoded frame header.
type Header struct {
	Length uint32 // payload bytes that follow the header
	Type   Type
	NFDs   int // descriptors attached to the frame (flags bits 0-3)
}

// PutHeader encodes h into b[:HeaderSize].
func PutHeader(b []byte, h Header) {
	binary.LittleEndian.PutUint32(b[0:4], h.Length)
	binary.LittleEndian.PutUint16(b[4:6], uint16(h.Type))
	binary.LittleEndian.PutUint16(b[6:8], uint16(h.NFDs)&flagFDMask)
}

// ParseHeader decodes and validates a frame header: the payload length is
// at most MaxPayload, the type is known, the descriptor count is at most
// MaxFDs and the reserved flag bits are zero.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: short header (%d bytes)", ErrProtocol, len(b))
	}
	h := Header{
		Length: binary.LittleEndian.Uint32(b[0:4]),
		Type:   Type(binary.LittleEndian.Uint16(b[4:6])),
	}
	flags := binary.LittleEndian.Uint16(b[6:8])
	if flags&^flagFDMask != 0 {
		return h, fmt.Errorf("%w: reserved header flags %#04x set", ErrProtocol, flags)
	}
	h.NFDs = int(flags & flagFDMask)
	if h.Length > MaxPayload {
		return h, fmt.Errorf("%w: %s payload of %d bytes (max %d)", ErrTooLarge, h.Type, h.Length, MaxPayload)
	}
	if h.NFDs > MaxFDs {
		return h, fmt.Errorf("%w: %s announces %d descriptors (max %d)", ErrTooLarge, h.Type, h.NFDs, MaxFDs)
	}
	if !h.Type.Known() {
		return h, fmt.Errorf("%w %d", ErrUnknownType, uint16(h.Type))
	}
	if lo, hi := h.Type.FDs(); h.NFDs < lo || h.NFDs > hi {
		return h, fmt.Errorf("%w: %s with %d descriptors (want %d..%d)", ErrProtocol, h.Type, h.NFDs, lo, hi)
	}
	return h, nil
}

// Frame is one received (or to-be-sent) protocol unit.
type Frame struct {
	Type    Type
	Payload []byte
	// FDs are the descriptors that came with the frame. They belong to
	// whoever holds the Frame: adopt them (e.g. linux.NewUffd) or close
	// them (CloseFDs).
	FDs []int
}

// AppendFrame appends the encoding of a frame carrying nfds descriptors to
// dst. The descriptors themselves travel out of band (SCM_RIGHTS).
func AppendFrame(dst []byte, t Type, payload []byte, nfds int) ([]byte, error) {
	if len(payload) > MaxPayload {
		return dst, fmt.Errorf("%w: %s payload of %d bytes (max %d)", ErrTooLarge, t, len(payload), MaxPayload)
	}
	if nfds > MaxFDs {
		return dst, fmt.Errorf("%w: %s with %d descriptors (max %d)", ErrTooLarge, t, nfds, MaxFDs)
	}
	var h [HeaderSize]byte
	PutHeader(h[:], Header{Length: uint32(len(payload)), Type: t, NFDs: nfds})
	dst = append(dst, h[:]...)
	return append(dst, payload...), nil
}

// DecodeFrame decodes one frame from the start of b (descriptors aside: the
// returned Frame has none). It returns the frame, whose Payload aliases b,
// and the number of bytes consumed. An incomplete frame is an error wrapping
// ErrProtocol, as is any invalid header.
func DecodeFrame(b []byte) (Frame, int, error) {
	h, err := ParseHeader(b)
	if err != nil {
		return Frame{}, 0, err
	}
	end := HeaderSize + int(h.Length)
	if len(b) < end {
		return Frame{}, 0, fmt.Errorf("%w: %s frame truncated: %d of %d payload bytes", ErrProtocol, h.Type, len(b)-HeaderSize, h.Length)
	}
	return Frame{Type: h.Type, Payload: b[HeaderSize:end:end]}, end, nil
}

// Decode unmarshals f's payload into a new message of f's type and checks
// that f carries as many descriptors as that type allows. It does not take
// or close f.FDs. For the hot path, switch on f.Type and Unmarshal into a
// reused value instead.
func Decode(f Frame) (Message, error) {
	ti, ok := table[f.Type]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownType, uint16(f.Type))
	}
	if len(f.FDs) < ti.minFDs || len(f.FDs) > ti.maxFDs {
		return nil, fmt.Errorf("%w: %s with %d descriptors (want %d..%d)", ErrProtocol, f.Type, len(f.FDs), ti.minFDs, ti.maxFDs)
	}
	m := ti.new()
	if err := m.Unmarshal(f.Payload); err != nil {
		return nil, err
	}
	return m, nil
}
