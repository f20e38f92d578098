package wire

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
)

// Message is implemented by every protocol message.
type Message interface {
	// Type is the frame type that carries the message.
	Type() Type
	// AppendMarshal appends the message's payload encoding to dst.
	AppendMarshal(dst []byte) ([]byte, error)
	// Unmarshal replaces the message with the decoding of payload b and
	// validates it. Errors wrap ErrProtocol.
	Unmarshal(b []byte) error
}

// Role is what a client says it is in Hello.
type Role string

// Roles.
const (
	RoleWorker Role = "worker" // a process of a subsystem, speaking to its vcore
	RoleVCore  Role = "vcore"  // a vcore, speaking to core
)

// ContentKind is what a dataspace's pages are filled with (the one enum of
// internal/content).
type ContentKind = content.Kind

// Content kinds.
const (
	ContentZero    = content.KindZero    // zero pages
	ContentPattern = content.KindPattern // a deterministic pattern per offset, from Seed
	ContentFile    = content.KindFile    // a read-only file, passed as a descriptor (DataspaceAdd)
)

// PagerMode says where a partition's faults are served.
type PagerMode string

// Pager modes.
const (
	PagerLocal   PagerMode = "local"   // by the vcore, on its own CPUs
	PagerCentral PagerMode = "central" // by one pager thread in core (baseline)
)

// ErrCode classifies an Error or AttachErr.
type ErrCode string

// Error codes.
const (
	CodeBadRequest  ErrCode = "bad-request" // malformed or out-of-order message
	CodeDenied      ErrCode = "denied"      // the peer may not do that
	CodeConflict    ErrCode = "conflict"    // e.g. a claim overlapping a live lease
	CodeNotFound    ErrCode = "not-found"   // unknown dataspace, uffd, region
	CodeUnsupported ErrCode = "unsupported" // the kernel or build cannot
	CodeVersion     ErrCode = "version"     // protocol version mismatch
	CodeInternal    ErrCode = "internal"    // anything else
	CodeLimit       ErrCode = "limit"       // a configured cap (connections, regions) is reached; the message names it
)

func validContent(k ContentKind) bool { return k.Valid() }

// ---------------------------------------------------------------- session

// Hello is the first message a client sends after Magic.
type Hello struct {
	Role      Role   `json:"role"`
	Pid       int    `json:"pid"`                 // the sender's pid; the server checks it against SO_PEERCRED
	Node      int    `json:"node"`                // vcore: the NUMA node it serves; worker: VCORE_NODE or -1
	Subsystem string `json:"subsystem,omitempty"` // worker: VCORE_SUBSYSTEM
	Version   int    `json:"version"`             // protocol Version
}

// HelloOK answers Hello.
type HelloOK struct {
	Server  string `json:"server"` // "core" or "vcore"
	Pid     int    `json:"pid"`
	Node    int    `json:"node"` // the vcore's node; -1 from core
	Version int    `json:"version"`
}

// Error reports a failed request. It is an error value too.
type Error struct {
	Code ErrCode `json:"code"`
	Msg  string  `json:"msg"`
}

// Error formats the code and message.
func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Msg) }

// Ack acknowledges a control request that has no dedicated answer
// (Release, UffdAdd, RegionAdd, UffdRemove, TakeBack).
type Ack struct {
	Of Type   `json:"of"`           // the type of the acknowledged request
	ID uint64 `json:"id,omitempty"` // its UffdID, where it has one
}

// ------------------------------------------------------------ vcore <-> core

// SubsystemState describes a running subsystem, sent in Claim when a vcore
// re-registers with a restarted core.
type SubsystemState struct {
	Name   string    `json:"name"`
	Cgroup string    `json:"cgroup"`
	Pids   []int     `json:"pids,omitempty"`
	CPUs   hw.CPUSet `json:"cpus"`
	Memory uint64    `json:"memory"` // limit in bytes; 0 = none
}

// Claim asks core for a partition (vcore -> core).
type Claim struct {
	Node       int              `json:"node"`
	CPUs       hw.CPUSet        `json:"cpus"`   // empty: the node's CPUs that core does not keep
	Memory     uint64           `json:"memory"` // bytes; 0: no explicit quota
	VCoreID    string           `json:"vcore_id"`
	Socket     string           `json:"socket"`               // the vcore's own socket (workers', status)
	Subsystems []SubsystemState `json:"subsystems,omitempty"` // non-empty when re-registering
	// ReplicaPages: the vcore keeps node-local replicas and asks for the
	// bytes of the forwarded faults of read-only file dataspaces
	// (ReplicaPage). Omitted (false) by vcores that keep none.
	ReplicaPages bool `json:"replica_pages,omitempty"`
}

// DataspaceInfo is one entry of core's dataspace catalogue. It names no
// file: forwarded faults are served by core, which alone opens its sources.
type DataspaceInfo struct {
	Name    string      `json:"name"`
	Size    uint64      `json:"size"`
	Content ContentKind `json:"content,omitempty"` // "" = zero
	Seed    uint64      `json:"seed,omitempty"`    // ContentPattern
	// Writable: workers write to the dataspace; vcores keep no replica.
	Writable bool `json:"writable,omitempty"`
}

// ClaimOK grants a partition (core -> vcore).
type ClaimOK struct {
	Node        int             `json:"node"`
	CPUs        hw.CPUSet       `json:"cpus"`
	Mems        hw.NodeSet      `json:"mems"`
	Memory      uint64          `json:"memory"`
	Cgroup      string          `json:"cgroup"` // the partition's cgroup path, relative to the hierarchy root
	Pager       PagerMode       `json:"pager"`
	FaultAround int             `json:"fault_around"` // pages per fault, >= 1
	Dataspaces  []DataspaceInfo `json:"dataspaces,omitempty"`
	// MovedOut names the subsystems of the vcore's file that core moved
	// to another node: the vcore does not start them. MovedIn are the
	// subsystems it runs for other vcores (core's ledger of moves).
	MovedOut []string         `json:"moved_out,omitempty"`
	MovedIn  []MovedSubsystem `json:"moved_in,omitempty"`
}

// MovedSubsystem is a subsystem a vcore runs for another vcore: its
// configuration as its home vcore gave it (JSON of config.Subsystem) and
// the image directories of its persistent dataspaces.
type MovedSubsystem struct {
	Name     string            `json:"name"`
	FromNode int               `json:"from_node"`
	Mode     string            `json:"mode"`
	Spec     json.RawMessage   `json:"spec"`
	Images   map[string]string `json:"images,omitempty"`
}

// Release gives the partition back (vcore -> core); core answers Ack.
type Release struct {
	Reason string `json:"reason,omitempty"`
}

// Region is a registered range of a worker's address space and the
// dataspace that backs it. It names the dataspace, never a file: core
// resolves a forwarded region from its own configuration and a local one
// from the vcore's DataspaceAdd for (Subsystem, Dataspace).
type Region struct {
	Start     uint64 `json:"start"`
	Length    uint64 `json:"length"`
	Dataspace string `json:"dataspace"`
	Offset    uint64 `json:"offset"`              // offset of Start in the dataspace
	Subsystem string `json:"subsystem,omitempty"` // local regions: the subsystem whose dataspace it is
	Forward   bool   `json:"forward,omitempty"`   // a core-owned dataspace
}

func (r *Region) validate() error {
	switch {
	case r.Length == 0:
		return fmt.Errorf("%w: region at %#x has zero length", ErrProtocol, r.Start)
	case r.Start+r.Length < r.Start:
		return fmt.Errorf("%w: region %#x+%#x wraps around", ErrProtocol, r.Start, r.Length)
	case r.Dataspace == "" || len(r.Dataspace) > MaxName:
		return fmt.Errorf("%w: region at %#x: dataspace name of %d bytes (want 1..%d)", ErrProtocol, r.Start, len(r.Dataspace), MaxName)
	case len(r.Subsystem) > MaxName:
		return fmt.Errorf("%w: region at %#x: subsystem name of %d bytes (max %d)", ErrProtocol, r.Start, len(r.Subsystem), MaxName)
	}
	return nil
}

// Overlaps reports whether r and o share an address.
func (r Region) Overlaps(o Region) bool {
	return r.Start < o.Start+o.Length && o.Start < r.Start+r.Length
}

// DataspaceAdd declares a local dataspace of one of the vcore's subsystems
// (vcore -> core), once per session before the first region naming it.
// ContentFile carries the vcore's open read-only file as the frame's one
// descriptor: a capability, not a path. Core serves the dataspace's regions
// from it when it serves the vcore's faults (central mode, failover).
type DataspaceAdd struct {
	Subsystem string      `json:"subsystem"`
	Name      string      `json:"name"`
	Content   ContentKind `json:"content"`
	Seed      uint64      `json:"seed,omitempty"`
	Size      uint64      `json:"size"` // bytes; 0 = unbounded
}

// RegionRemove tells core that the regions of a uffd overlapping
// [Start, Start+Length) are gone (vcore -> core): the worker detached or
// unmapped them. Core forgets them; a region the vcore still serves there is
// re-sent as RegionAdd.
type RegionRemove struct {
	UffdID uint64 `json:"uffd_id"`
	Start  uint64 `json:"start"`
	Length uint64 `json:"length"`
}

// UffdAdd hands core a dup of a worker's userfaultfd (the frame carries it)
// with the regions registered so far (vcore -> core). Serve asks core to
// poll it itself (pager = "central"); otherwise core only holds it for
// forwarded faults and failover. Regions that do not fit in one frame follow
// as RegionAdd messages.
type UffdAdd struct {
	UffdID    uint64   `json:"uffd_id"`
	WorkerPid int      `json:"worker_pid"`
	Serve     bool     `json:"serve"`
	Regions   []Region `json:"regions,omitempty"`
}

// RegionAdd adds a region to a uffd the receiver already holds.
type RegionAdd struct {
	UffdID uint64 `json:"uffd_id"`
	Region Region `json:"region"`
}

// UffdRemove tells core to drop its dup of a uffd (vcore -> core).
type UffdRemove struct {
	UffdID uint64 `json:"uffd_id"`
}

// TakeBack hands a uffd core held for a dead vcore to its successor
// (core -> vcore; the frame carries the fd). Further regions follow as
// RegionAdd messages.
type TakeBack struct {
	UffdID    uint64   `json:"uffd_id"`
	WorkerPid int      `json:"worker_pid"`
	Regions   []Region `json:"regions,omitempty"`
}

// ------------------------------------------------------------ worker <-> vcore

// Attach asks the vcore to serve a freshly mapped, untouched region
// (worker -> vcore). The first Attach on a connection carries the worker's
// userfaultfd; the vcore does UFFDIO_API and UFFDIO_REGISTER on it.
type Attach struct {
	Name    string      `json:"name"`
	Addr    uint64      `json:"addr"`
	Length  uint64      `json:"length"`
	Bind    bool        `json:"bind"`              // the worker will mbind the range to the vcore's node if told so
	Content ContentKind `json:"content,omitempty"` // a hint for dataspaces the vcore does not define
	Seed    uint64      `json:"seed,omitempty"`
}

// AttachOK answers Attach: the range is registered and served.
type AttachOK struct {
	Name    string      `json:"name"`
	Addr    uint64      `json:"addr"`
	Node    int         `json:"node"` // the node whose pager serves the range
	Size    uint64      `json:"size"` // the dataspace's size (0 = unbounded)
	Content ContentKind `json:"content"`
	Seed    uint64      `json:"seed,omitempty"`
	Bind    bool        `json:"bind"` // mbind(MPOL_BIND, Node) before touching the range
}

// AttachErr refuses an Attach. It is an error value too.
type AttachErr struct {
	Name string  `json:"name"`
	Addr uint64  `json:"addr"`
	Code ErrCode `json:"code"`
	Msg  string  `json:"msg"`
}

// Error formats the refusal.
func (e *AttachErr) Error() string {
	return fmt.Sprintf("attach %q at %#x: %s: %s", e.Name, e.Addr, e.Code, e.Msg)
}

// Detach tells the vcore that the worker is unmapping the region at Addr
// (worker -> vcore). There is no answer.
type Detach struct {
	Addr uint64 `json:"addr"`
}

// ------------------------------------------------------------ binary messages

// ForwardSize is the fixed part of a Forward payload; the dataspace name
// follows it.
const ForwardSize = 40

// Forward asks core to resolve a fault in a core-owned dataspace
// (vcore -> core). Binary layout (little-endian): UffdID u64, Addr u64,
// Offset u64, SeqNo u64, TID u32, name length u16, reserved u16 (0), then
// the dataspace name (at most MaxName bytes).
type Forward struct {
	UffdID    uint64
	Addr      uint64 // page-aligned fault address in the worker
	Dataspace string
	Offset    uint64 // offset of Addr in the dataspace
	TID       uint32 // faulting thread (UFFD_FEATURE_THREAD_ID), 0 if unknown
	SeqNo     uint64 // echoed in ForwardDone
}

// ForwardDoneSize is the size of a ForwardDone payload.
const ForwardDoneSize = 24

// ForwardDone answers Forward (core -> vcore). Binary layout
// (little-endian): SeqNo u64, Errno i32 (0 = resolved), reserved u32 (0),
// ServeNanos i64.
type ForwardDone struct {
	SeqNo      uint64
	Errno      int32 // 0, or the errno that resolving failed with
	ServeNanos int64 // time core spent resolving, in nanoseconds
}

// ---------------------------------------------------------------- codecs

func appendJSON(dst []byte, t Type, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return dst, fmt.Errorf("wire: marshal %s: %w", t, err)
	}
	if len(b) > MaxPayload {
		return dst, fmt.Errorf("%w: %s payload of %d bytes (max %d)", ErrTooLarge, t, len(b), MaxPayload)
	}
	return append(dst, b...), nil
}

func decodeJSON(t Type, b []byte, v any) error {
	if len(b) > MaxPayload {
		return fmt.Errorf("%w: %s payload of %d bytes (max %d)", ErrTooLarge, t, len(b), MaxPayload)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrProtocol, t, err)
	}
	return nil
}

func checkName(t Type, what, s string, required bool) error {
	min := 0
	if required {
		min = 1
	}
	if len(s) < min || len(s) > MaxName {
		return fmt.Errorf("%w: %s: %s of %d bytes (want %d..%d)", ErrProtocol, t, what, len(s), min, MaxName)
	}
	return nil
}

// Type implements Message.
func (*Hello) Type() Type { return TypeHello }

// AppendMarshal implements Message.
func (m *Hello) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *Hello) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *Hello) Unmarshal(b []byte) error {
	*m = Hello{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	if m.Role != RoleWorker && m.Role != RoleVCore {
		return fmt.Errorf("%w: Hello: unknown role %q", ErrProtocol, m.Role)
	}
	if m.Version < 1 {
		return fmt.Errorf("%w: Hello: version %d", ErrProtocol, m.Version)
	}
	return checkName(m.Type(), "subsystem", m.Subsystem, false)
}

// Type implements Message.
func (*HelloOK) Type() Type { return TypeHelloOK }

// AppendMarshal implements Message.
func (m *HelloOK) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *HelloOK) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *HelloOK) Unmarshal(b []byte) error {
	*m = HelloOK{}
	return decodeJSON(m.Type(), b, m)
}

// Type implements Message.
func (*Error) Type() Type { return TypeError }

// AppendMarshal implements Message.
func (m *Error) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *Error) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message. An unknown code is kept: newer peers may
// send codes this version does not know.
func (m *Error) Unmarshal(b []byte) error {
	*m = Error{}
	return decodeJSON(m.Type(), b, m)
}

// Type implements Message.
func (*Ack) Type() Type { return TypeAck }

// AppendMarshal implements Message.
func (m *Ack) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *Ack) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *Ack) Unmarshal(b []byte) error {
	*m = Ack{}
	return decodeJSON(m.Type(), b, m)
}

// Type implements Message.
func (*Claim) Type() Type { return TypeClaim }

// AppendMarshal implements Message.
func (m *Claim) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *Claim) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *Claim) Unmarshal(b []byte) error {
	*m = Claim{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	if m.Node < 0 {
		return fmt.Errorf("%w: Claim: node %d", ErrProtocol, m.Node)
	}
	return nil
}

// Type implements Message.
func (*ClaimOK) Type() Type { return TypeClaimOK }

// AppendMarshal implements Message.
func (m *ClaimOK) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *ClaimOK) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *ClaimOK) Unmarshal(b []byte) error {
	*m = ClaimOK{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	if m.Pager != PagerLocal && m.Pager != PagerCentral {
		return fmt.Errorf("%w: ClaimOK: unknown pager mode %q", ErrProtocol, m.Pager)
	}
	if m.FaultAround < 1 {
		return fmt.Errorf("%w: ClaimOK: fault_around %d (want >= 1)", ErrProtocol, m.FaultAround)
	}
	return nil
}

// Type implements Message.
func (*Release) Type() Type { return TypeRelease }

// AppendMarshal implements Message.
func (m *Release) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *Release) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *Release) Unmarshal(b []byte) error {
	*m = Release{}
	return decodeJSON(m.Type(), b, m)
}

// Type implements Message.
func (*UffdAdd) Type() Type { return TypeUffdAdd }

// AppendMarshal implements Message.
func (m *UffdAdd) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *UffdAdd) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *UffdAdd) Unmarshal(b []byte) error {
	*m = UffdAdd{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	return validateRegions(m.Type(), m.Regions)
}

func validateRegions(t Type, rs []Region) error {
	for i := range rs {
		if err := rs[i].validate(); err != nil {
			return fmt.Errorf("%s region %d: %w", t, i, err)
		}
	}
	return nil
}

// Type implements Message.
func (*RegionAdd) Type() Type { return TypeRegionAdd }

// AppendMarshal implements Message.
func (m *RegionAdd) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *RegionAdd) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *RegionAdd) Unmarshal(b []byte) error {
	*m = RegionAdd{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	if err := m.Region.validate(); err != nil {
		return fmt.Errorf("RegionAdd: %w", err)
	}
	return nil
}

// Type implements Message.
func (*DataspaceAdd) Type() Type { return TypeDataspaceAdd }

// AppendMarshal implements Message.
func (m *DataspaceAdd) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *DataspaceAdd) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message. Whether a descriptor came with it (exactly
// one for ContentFile, none otherwise) is the receiver's check.
func (m *DataspaceAdd) Unmarshal(b []byte) error {
	*m = DataspaceAdd{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	if err := checkName(m.Type(), "name", m.Name, true); err != nil {
		return err
	}
	if err := checkName(m.Type(), "subsystem", m.Subsystem, false); err != nil {
		return err
	}
	if !validContent(m.Content) {
		return fmt.Errorf("%w: DataspaceAdd %q: unknown content kind %q", ErrProtocol, m.Name, m.Content)
	}
	return nil
}

// Type implements Message.
func (*RegionRemove) Type() Type { return TypeRegionRemove }

// AppendMarshal implements Message.
func (m *RegionRemove) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *RegionRemove) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *RegionRemove) Unmarshal(b []byte) error {
	*m = RegionRemove{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	if m.Length == 0 || m.Start+m.Length < m.Start {
		return fmt.Errorf("%w: RegionRemove: bad range %#x+%#x", ErrProtocol, m.Start, m.Length)
	}
	return nil
}

// Type implements Message.
func (*UffdRemove) Type() Type { return TypeUffdRemove }

// AppendMarshal implements Message.
func (m *UffdRemove) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *UffdRemove) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *UffdRemove) Unmarshal(b []byte) error {
	*m = UffdRemove{}
	return decodeJSON(m.Type(), b, m)
}

// Type implements Message.
func (*TakeBack) Type() Type { return TypeTakeBack }

// AppendMarshal implements Message.
func (m *TakeBack) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *TakeBack) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *TakeBack) Unmarshal(b []byte) error {
	*m = TakeBack{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	return validateRegions(m.Type(), m.Regions)
}

// Type implements Message.
func (*Attach) Type() Type { return TypeAttach }

// AppendMarshal implements Message.
func (m *Attach) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *Attach) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *Attach) Unmarshal(b []byte) error {
	*m = Attach{}
	if err := decodeJSON(m.Type(), b, m); err != nil {
		return err
	}
	if err := checkName(m.Type(), "name", m.Name, true); err != nil {
		return err
	}
	if m.Length == 0 || m.Addr+m.Length < m.Addr {
		return fmt.Errorf("%w: Attach %q: bad range %#x+%#x", ErrProtocol, m.Name, m.Addr, m.Length)
	}
	if m.Content != "" && !validContent(m.Content) {
		return fmt.Errorf("%w: Attach %q: unknown content kind %q", ErrProtocol, m.Name, m.Content)
	}
	return nil
}

// Type implements Message.
func (*AttachOK) Type() Type { return TypeAttachOK }

// AppendMarshal implements Message.
func (m *AttachOK) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *AttachOK) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *AttachOK) Unmarshal(b []byte) error {
	*m = AttachOK{}
	return decodeJSON(m.Type(), b, m)
}

// Type implements Message.
func (*AttachErr) Type() Type { return TypeAttachErr }

// AppendMarshal implements Message.
func (m *AttachErr) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *AttachErr) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *AttachErr) Unmarshal(b []byte) error {
	*m = AttachErr{}
	return decodeJSON(m.Type(), b, m)
}

// Type implements Message.
func (*Detach) Type() Type { return TypeDetach }

// AppendMarshal implements Message.
func (m *Detach) AppendMarshal(dst []byte) ([]byte, error) { return appendJSON(dst, m.Type(), m) }

// Marshal returns the payload encoding.
func (m *Detach) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *Detach) Unmarshal(b []byte) error {
	*m = Detach{}
	return decodeJSON(m.Type(), b, m)
}

// Type implements Message.
func (*Forward) Type() Type { return TypeForward }

// AppendMarshal implements Message.
func (m *Forward) AppendMarshal(dst []byte) ([]byte, error) {
	if len(m.Dataspace) > MaxName {
		return dst, fmt.Errorf("%w: Forward: dataspace name of %d bytes (max %d)", ErrProtocol, len(m.Dataspace), MaxName)
	}
	var b [ForwardSize]byte
	binary.LittleEndian.PutUint64(b[0:], m.UffdID)
	binary.LittleEndian.PutUint64(b[8:], m.Addr)
	binary.LittleEndian.PutUint64(b[16:], m.Offset)
	binary.LittleEndian.PutUint64(b[24:], m.SeqNo)
	binary.LittleEndian.PutUint32(b[32:], m.TID)
	binary.LittleEndian.PutUint16(b[36:], uint16(len(m.Dataspace)))
	dst = append(dst, b[:]...)
	return append(dst, m.Dataspace...), nil
}

// Marshal returns the payload encoding.
func (m *Forward) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message. Decoding into a reused Forward whose
// Dataspace already holds the same name allocates nothing.
func (m *Forward) Unmarshal(b []byte) error {
	if len(b) < ForwardSize {
		return fmt.Errorf("%w: Forward: %d bytes (min %d)", ErrProtocol, len(b), ForwardSize)
	}
	n := int(binary.LittleEndian.Uint16(b[36:]))
	if rsv := binary.LittleEndian.Uint16(b[38:]); rsv != 0 {
		return fmt.Errorf("%w: Forward: reserved field %#x", ErrProtocol, rsv)
	}
	if n > MaxName || len(b) != ForwardSize+n {
		return fmt.Errorf("%w: Forward: name of %d bytes in a %d-byte payload", ErrProtocol, n, len(b))
	}
	m.UffdID = binary.LittleEndian.Uint64(b[0:])
	m.Addr = binary.LittleEndian.Uint64(b[8:])
	m.Offset = binary.LittleEndian.Uint64(b[16:])
	m.SeqNo = binary.LittleEndian.Uint64(b[24:])
	m.TID = binary.LittleEndian.Uint32(b[32:])
	if name := b[ForwardSize:]; m.Dataspace != string(name) { // no allocation for the comparison
		m.Dataspace = string(name)
	}
	return nil
}

// Type implements Message.
func (*ForwardDone) Type() Type { return TypeForwardDone }

// AppendMarshal implements Message.
func (m *ForwardDone) AppendMarshal(dst []byte) ([]byte, error) {
	var b [ForwardDoneSize]byte
	binary.LittleEndian.PutUint64(b[0:], m.SeqNo)
	binary.LittleEndian.PutUint32(b[8:], uint32(m.Errno))
	binary.LittleEndian.PutUint64(b[16:], uint64(m.ServeNanos))
	return append(dst, b[:]...), nil
}

// Marshal returns the payload encoding.
func (m *ForwardDone) Marshal() ([]byte, error) { return m.AppendMarshal(nil) }

// Unmarshal implements Message.
func (m *ForwardDone) Unmarshal(b []byte) error {
	if len(b) != ForwardDoneSize {
		return fmt.Errorf("%w: ForwardDone: %d bytes (want %d)", ErrProtocol, len(b), ForwardDoneSize)
	}
	if rsv := binary.LittleEndian.Uint32(b[12:]); rsv != 0 {
		return fmt.Errorf("%w: ForwardDone: reserved field %#x", ErrProtocol, rsv)
	}
	m.SeqNo = binary.LittleEndian.Uint64(b[0:])
	m.Errno = int32(binary.LittleEndian.Uint32(b[8:]))
	m.ServeNanos = int64(binary.LittleEndian.Uint64(b[16:]))
	return nil
}
