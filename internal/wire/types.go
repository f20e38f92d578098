package wire

import "fmt"

// Type identifies a message. The numbering is part of the protocol: never
// reuse or renumber a value (docs/PROTOCOL.md lists them).
type Type uint16

// Message types. 1-15: session; 16-31: vcore <-> core; 32-47: worker <-> vcore.
const (
	TypeHello        Type = 1  // JSON, client -> server: first message on a connection
	TypeHelloOK      Type = 2  // JSON, server -> client: answer to Hello
	TypeError        Type = 3  // JSON, either way: a request failed
	TypeAck          Type = 4  // JSON, either way: a control request succeeded
	TypeClaim        Type = 16 // JSON, vcore -> core
	TypeClaimOK      Type = 17 // JSON, core -> vcore
	TypeRelease      Type = 18 // JSON, vcore -> core
	TypeUffdAdd      Type = 19 // JSON + 1 fd, vcore -> core
	TypeRegionAdd    Type = 20 // JSON, vcore -> core, core -> vcore
	TypeUffdRemove   Type = 21 // JSON, vcore -> core
	TypeForward      Type = 22 // binary, vcore -> core
	TypeForwardDone  Type = 23 // binary, core -> vcore
	TypeTakeBack     Type = 24 // JSON + 1 fd, core -> vcore
	TypeDataspaceAdd Type = 25 // JSON (+ 1 fd for file content), vcore -> core
	TypeRegionRemove Type = 26 // JSON, vcore -> core
	TypeReplicaPage  Type = 27 // binary, core -> vcore
	TypeAttach       Type = 32 // JSON (+ 1 fd on the first Attach), worker -> vcore
	TypeAttachOK     Type = 33 // JSON, vcore -> worker
	TypeAttachErr    Type = 34 // JSON, vcore -> worker
	TypeDetach       Type = 35 // JSON, worker -> vcore
)

// typeInfo is one row of the message table.
type typeInfo struct {
	name   string
	new    func() Message
	minFDs int // descriptors a frame of this type must carry ...
	maxFDs int // ... at least minFDs and at most maxFDs
}

// table is the one list of message types. A frame of a type not listed here
// is a protocol error.
var table = map[Type]typeInfo{
	TypeHello:        {"Hello", func() Message { return new(Hello) }, 0, 0},
	TypeHelloOK:      {"HelloOK", func() Message { return new(HelloOK) }, 0, 0},
	TypeError:        {"Error", func() Message { return new(Error) }, 0, 0},
	TypeAck:          {"Ack", func() Message { return new(Ack) }, 0, 0},
	TypeClaim:        {"Claim", func() Message { return new(Claim) }, 0, 0},
	TypeClaimOK:      {"ClaimOK", func() Message { return new(ClaimOK) }, 0, 0},
	TypeRelease:      {"Release", func() Message { return new(Release) }, 0, 0},
	TypeUffdAdd:      {"UffdAdd", func() Message { return new(UffdAdd) }, 1, 1},
	TypeRegionAdd:    {"RegionAdd", func() Message { return new(RegionAdd) }, 0, 0},
	TypeUffdRemove:   {"UffdRemove", func() Message { return new(UffdRemove) }, 0, 0},
	TypeForward:      {"Forward", func() Message { return new(Forward) }, 0, 0},
	TypeForwardDone:  {"ForwardDone", func() Message { return new(ForwardDone) }, 0, 0},
	TypeTakeBack:     {"TakeBack", func() Message { return new(TakeBack) }, 1, 1},
	TypeDataspaceAdd: {"DataspaceAdd", func() Message { return new(DataspaceAdd) }, 0, 1},
	TypeRegionRemove: {"RegionRemove", func() Message { return new(RegionRemove) }, 0, 0},
	TypeReplicaPage:  {"ReplicaPage", func() Message { return new(ReplicaPage) }, 0, 0},
	TypeAttach:       {"Attach", func() Message { return new(Attach) }, 0, 1},
	TypeAttachOK:     {"AttachOK", func() Message { return new(AttachOK) }, 0, 0},
	TypeAttachErr:    {"AttachErr", func() Message { return new(AttachErr) }, 0, 0},
	TypeDetach:       {"Detach", func() Message { return new(Detach) }, 0, 0},
}

// Known reports whether t is a message type of this protocol version.
func (t Type) Known() bool { _, ok := table[t]; return ok }

// String is the message's name, or "Type(n)" for an unknown type.
func (t Type) String() string {
	if ti, ok := table[t]; ok {
		return ti.name
	}
	return fmt.Sprintf("Type(%d)", uint16(t))
}

// FDs is how many descriptors a frame of type t may carry: at least min,
// at most max. Unknown types carry none.
func (t Type) FDs() (min, max int) {
	ti := table[t]
	return ti.minFDs, ti.maxFDs
}
