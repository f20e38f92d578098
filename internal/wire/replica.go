package wire

import (
	"encoding/binary"
	"fmt"
)

// ReplicaPageSize is the fixed part of a ReplicaPage payload; the
// dataspace name and the page follow it.
const ReplicaPageSize = 24

// MaxReplicaPage bounds a ReplicaPage's page (64 KiB pages at most).
const MaxReplicaPage = 64 << 10

// ReplicaPage carries the bytes core mapped for a forwarded fault of a
// read-only dataspace with file content (core -> vcore), so that the vcore
// can keep the page in its node-local replica: a vcore never opens the
// file itself. Core sends it, right before the ForwardDone of that
// Forward, only to a vcore whose Claim had ReplicaPages. Binary layout
// (little-endian): SeqNo u64, Offset u64, name length u16, reserved u16
// (0), page length u32, then the dataspace name (at most MaxName bytes)
// and the page.
type ReplicaPage struct {
	SeqNo     uint64 // the Forward's
	Offset    uint64 // page-aligned offset of Page in the dataspace
	Dataspace string
	Page      []byte
}

// Type implements Message.
func (*ReplicaPage) Type() Type { return TypeReplicaPage }

// AppendMarshal implements Message.
func (m *ReplicaPage) AppendMarshal(dst []byte) ([]byte, error) {
	if len(m.Dataspace) > MaxName {
		return dst, fmt.Errorf("%w: ReplicaPage: name of %d bytes", ErrProtocol, len(m.Dataspace))
	}
	if len(m.Page) == 0 || len(m.Page) > MaxReplicaPage {
		return dst, fmt.Errorf("%w: ReplicaPage: page of %d bytes", ErrProtocol, len(m.Page))
	}
	var b [ReplicaPageSize]byte
	binary.LittleEndian.PutUint64(b[0:], m.SeqNo)
	binary.LittleEndian.PutUint64(b[8:], m.Offset)
	binary.LittleEndian.PutUint16(b[16:], uint16(len(m.Dataspace)))
	binary.LittleEndian.PutUint32(b[20:], uint32(len(m.Page)))
	dst = append(dst, b[:]...)
	dst = append(dst, m.Dataspace...)
	return append(dst, m.Page...), nil
}

// Marshal returns the payload encoding.
func (m *ReplicaPage) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message. Page aliases b.
func (m *ReplicaPage) Unmarshal(b []byte) error {
	if len(b) < ReplicaPageSize {
		return fmt.Errorf("%w: ReplicaPage: %d bytes (min %d)", ErrProtocol, len(b), ReplicaPageSize)
	}
	if rsv := binary.LittleEndian.Uint16(b[18:]); rsv != 0 {
		return fmt.Errorf("%w: ReplicaPage: reserved field %#x", ErrProtocol, rsv)
	}
	n := int(binary.LittleEndian.Uint16(b[16:]))
	pl := int(binary.LittleEndian.Uint32(b[20:]))
	if n > MaxName || pl == 0 || pl > MaxReplicaPage || len(b) != ReplicaPageSize+n+pl {
		return fmt.Errorf("%w: ReplicaPage: name of %d bytes and page of %d in a %d-byte payload", ErrProtocol, n, pl, len(b))
	}
	m.SeqNo = binary.LittleEndian.Uint64(b[0:])
	m.Offset = binary.LittleEndian.Uint64(b[8:])
	m.Dataspace = string(b[ReplicaPageSize : ReplicaPageSize+n])
	m.Page = b[ReplicaPageSize+n:]
	return nil
}
