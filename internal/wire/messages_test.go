package wire

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/hw"
)

var sampleRegion = Region{Start: 0x7f0000000000, Length: 1 << 20, Dataspace: "heap", Offset: 4096, Forward: true}

// samples holds one filled-in value of every message type.
var samples = []Message{
	&Hello{Role: RoleWorker, Pid: 1234, Node: 0, Subsystem: "db", Version: Version},
	&HelloOK{Server: "vcore", Pid: 99, Node: 1, Version: Version},
	&Error{Code: CodeConflict, Msg: "CPU 1 is held by vcore node0"},
	&Ack{Of: TypeUffdAdd, ID: 7},
	&Claim{Node: 1, CPUs: hw.MustParse[hw.CPU]("2-3"), Memory: 1 << 30, VCoreID: "node1", Socket: "/run/vcored/node1.sock",
		Subsystems:   []SubsystemState{{Name: "db", Cgroup: "vcored/node1/db", Pids: []int{10, 11}, CPUs: hw.MustParse[hw.CPU]("3"), Memory: 512 << 20}},
		ReplicaPages: true},
	&ClaimOK{Node: 1, CPUs: hw.MustParse[hw.CPU]("2-3"), Mems: hw.MustParse[hw.Node]("1"), Memory: 1 << 30, Cgroup: "vcored/node1",
		Pager: PagerCentral, FaultAround: 16, Dataspaces: []DataspaceInfo{{Name: "shared", Size: 1 << 24, Content: ContentPattern, Seed: 5}}},
	&Release{Reason: "SIGTERM"},
	&UffdAdd{UffdID: 3, WorkerPid: 4321, Serve: true, Regions: []Region{sampleRegion}},
	&RegionAdd{UffdID: 3, Region: sampleRegion},
	&UffdRemove{UffdID: 3},
	&DataspaceAdd{Subsystem: "db", Name: "heap", Content: ContentFile, Size: 1 << 20},
	&RegionRemove{UffdID: 3, Start: 0x7f0000000000, Length: 1 << 20},
	&Forward{UffdID: 3, Addr: 0x7f0000001000, Dataspace: "shared", Offset: 8192, TID: 4322, SeqNo: 77},
	&ForwardDone{SeqNo: 77, Errno: -11, ServeNanos: 12345},
	&ReplicaPage{SeqNo: 77, Offset: 8192, Dataspace: "lib", Page: []byte("page bytes")},
	&TakeBack{UffdID: 3, WorkerPid: 4321, Regions: []Region{sampleRegion, {Start: 1 << 40, Length: 4096, Dataspace: "f", Subsystem: "db"}}},
	&Attach{Name: "heap", Addr: 0x7f0000000000, Length: 1 << 20, Bind: true, Content: ContentPattern, Seed: 9},
	&AttachOK{Name: "heap", Addr: 0x7f0000000000, Node: 0, Size: 1 << 20, Content: ContentZero, Bind: true},
	&AttachErr{Name: "heap", Addr: 0x7f0000000000, Code: CodeNotFound, Msg: "no dataspace heap"},
	&Detach{Addr: 0x7f0000000000},
}

func TestSamplesCoverTable(t *testing.T) {
	seen := map[Type]bool{}
	for _, m := range samples {
		seen[m.Type()] = true
	}
	for ty := range table {
		if !seen[ty] {
			t.Errorf("no round-trip sample for %s", ty)
		}
		if ty.String() == "" || strings.HasPrefix(ty.String(), "Type(") {
			t.Errorf("type %d has no name", ty)
		}
	}
}

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range samples {
		t.Run(m.Type().String(), func(t *testing.T) {
			payload, err := m.AppendMarshal(nil)
			if err != nil {
				t.Fatal(err)
			}
			lo, _ := m.Type().FDs()
			frame, err := AppendFrame(nil, m.Type(), payload, lo)
			if err != nil {
				t.Fatal(err)
			}
			f, n, err := DecodeFrame(frame)
			if err != nil || n != len(frame) {
				t.Fatalf("DecodeFrame: n=%d/%d err=%v", n, len(frame), err)
			}
			f.FDs = make([]int, lo) // stand-ins: Decode only counts them
			got, err := Decode(f)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Fatalf("round trip:\n got %#v\nwant %#v", got, m)
			}
			// Unmarshal into a dirty value resets it.
			again := reflect.New(reflect.TypeOf(m).Elem()).Interface().(Message)
			if err := again.Unmarshal(payload); err != nil {
				t.Fatal(err)
			}
			if err := again.Unmarshal(payload); err != nil || !reflect.DeepEqual(again, m) {
				t.Fatalf("second Unmarshal: %#v, %v", again, err)
			}
		})
	}
}

func TestForwardLayout(t *testing.T) {
	m := &Forward{UffdID: 0x0102030405060708, Addr: 0x1000, Dataspace: "ab", Offset: 0x2000, TID: 0x11223344, SeqNo: 5}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		8, 7, 6, 5, 4, 3, 2, 1, // UffdID
		0, 0x10, 0, 0, 0, 0, 0, 0, // Addr
		0, 0x20, 0, 0, 0, 0, 0, 0, // Offset
		5, 0, 0, 0, 0, 0, 0, 0, // SeqNo
		0x44, 0x33, 0x22, 0x11, // TID
		2, 0, 0, 0, // name length, reserved
		'a', 'b',
	}
	if !reflect.DeepEqual(b, want) {
		t.Fatalf("Forward encoding\n got % x\nwant % x", b, want)
	}
	d, err := (&ForwardDone{SeqNo: 1, Errno: 17, ServeNanos: 2}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	wantDone := []byte{1, 0, 0, 0, 0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}
	if !reflect.DeepEqual(d, wantDone) {
		t.Fatalf("ForwardDone encoding\n got % x\nwant % x", d, wantDone)
	}
}

func TestForwardUnmarshalReuseDoesNotAllocate(t *testing.T) {
	b, _ := (&Forward{UffdID: 1, Addr: 2, Dataspace: "shared", SeqNo: 3}).Marshal()
	var f Forward
	if err := f.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := f.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Forward.Unmarshal into a reused value: %v allocations, want 0", allocs)
	}
}

func TestUnmarshalRejects(t *testing.T) {
	long := strings.Repeat("x", MaxName+1)
	cases := []struct {
		name string
		m    Message
		in   string
	}{
		{"hello role", &Hello{}, `{"role":"admin","version":1}`},
		{"hello version", &Hello{}, `{"role":"worker","version":0}`},
		{"hello long subsystem", &Hello{}, `{"role":"worker","version":1,"subsystem":"` + long + `"}`},
		{"hello not json", &Hello{}, `role=worker`},
		{"hello trailing", &Hello{}, `{"role":"worker","version":1} x`},
		{"claim node", &Claim{}, `{"node":-1}`},
		{"claim cpus", &Claim{}, `{"node":0,"cpus":"3-1"}`},
		{"claimok pager", &ClaimOK{}, `{"pager":"remote","fault_around":1}`},
		{"claimok fault-around", &ClaimOK{}, `{"pager":"local","fault_around":0}`},
		{"region zero length", &RegionAdd{}, `{"uffd_id":1,"region":{"start":4096,"length":0,"dataspace":"a","content":"zero"}}`},
		{"region wraps", &RegionAdd{}, `{"uffd_id":1,"region":{"start":18446744073709547520,"length":8192,"dataspace":"a","content":"zero"}}`},
		{"region subsystem", &UffdAdd{}, `{"uffd_id":1,"regions":[{"start":0,"length":1,"dataspace":"a","subsystem":"` + strings.Repeat("s", 256) + `"}]}`},
		{"region no dataspace", &TakeBack{}, `{"uffd_id":1,"regions":[{"start":0,"length":1,"content":"zero"}]}`},
		{"attach no name", &Attach{}, `{"addr":4096,"length":4096}`},
		{"attach no length", &Attach{}, `{"name":"a","addr":4096}`},
		{"attach content", &Attach{}, `{"name":"a","addr":4096,"length":4096,"content":"junk"}`},
		{"forward short", &Forward{}, "0123456789"},
		{"forward name length", &Forward{}, string(append(make([]byte, 36), 5, 0, 0, 0, 'a'))},
		{"forward reserved", &Forward{}, string(append(make([]byte, 36), 0, 0, 1, 0))},
		{"forward done size", &ForwardDone{}, string(make([]byte, 23))},
		{"forward done reserved", &ForwardDone{}, string(append(append(make([]byte, 12), 1, 0, 0, 0), make([]byte, 8)...))},
		{"replica page short", &ReplicaPage{}, string(make([]byte, 23))},
		{"replica page reserved", &ReplicaPage{}, string(append(make([]byte, 16), 0, 0, 1, 0, 1, 0, 0, 0, 'x'))},
		{"replica page empty", &ReplicaPage{}, string(append(make([]byte, 16), 1, 0, 0, 0, 0, 0, 0, 0, 'a'))},
		{"replica page length", &ReplicaPage{}, string(append(make([]byte, 16), 1, 0, 0, 0, 2, 0, 0, 0, 'a', 'x'))},
	}
	for _, c := range cases {
		if err := c.m.Unmarshal([]byte(c.in)); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: Unmarshal(%.60q) = %v, want an ErrProtocol error", c.name, c.in, err)
		}
	}
}

func TestMarshalRejects(t *testing.T) {
	if _, err := (&Forward{Dataspace: strings.Repeat("x", MaxName+1)}).Marshal(); !errors.Is(err, ErrProtocol) {
		t.Errorf("Forward with a long name: %v", err)
	}
	if _, err := (&ReplicaPage{Dataspace: "a"}).Marshal(); !errors.Is(err, ErrProtocol) {
		t.Errorf("ReplicaPage without a page: %v", err)
	}
	big := &UffdAdd{UffdID: 1}
	for i := 0; i < 1000; i++ {
		big.Regions = append(big.Regions, sampleRegion)
	}
	if _, err := big.Marshal(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("UffdAdd with 1000 regions: %v, want ErrTooLarge", err)
	}
}

func TestErrorValues(t *testing.T) {
	var err error = &Error{Code: CodeDenied, Msg: "uid 65534"}
	if got := err.Error(); got != "denied: uid 65534" {
		t.Errorf("Error.Error() = %q", got)
	}
	err = &AttachErr{Name: "heap", Addr: 0x1000, Code: CodeNotFound, Msg: "unknown"}
	if got := err.Error(); !strings.Contains(got, `"heap"`) || !strings.Contains(got, "0x1000") {
		t.Errorf("AttachErr.Error() = %q", got)
	}
}

// TestProtocolDocExample keeps the hex example of docs/PROTOCOL.md true.
func TestProtocolDocExample(t *testing.T) {
	hello, _ := (&Hello{Role: RoleWorker, Pid: 4242, Node: 0, Version: 1}).Marshal()
	attach, _ := (&Attach{Name: "heap", Addr: 140737345847296, Length: 1048576, Bind: true}).Marshal()
	if string(hello) != `{"role":"worker","pid":4242,"node":0,"version":1}` {
		t.Errorf("Hello encodes as %s", hello)
	}
	if string(attach) != `{"name":"heap","addr":140737345847296,"length":1048576,"bind":true}` {
		t.Errorf("Attach encodes as %s", attach)
	}
	h, _ := AppendFrame(nil, TypeHello, hello, 0)
	a, _ := AppendFrame(nil, TypeAttach, attach, 1)
	if want := []byte{0x31, 0, 0, 0, 1, 0, 0, 0}; !reflect.DeepEqual(h[:HeaderSize], want) {
		t.Errorf("Hello header % x, want % x", h[:HeaderSize], want)
	}
	if want := []byte{0x43, 0, 0, 0, 0x20, 0, 1, 0}; !reflect.DeepEqual(a[:HeaderSize], want) {
		t.Errorf("Attach header % x, want % x", a[:HeaderSize], want)
	}
}

// TestNoPathOnTheWire: no message names a file. A Region or DataspaceInfo
// has no field that could carry a path, and a peer's "path" or "source" in
// the JSON is dropped on decoding (it cannot reach core).
func TestNoPathOnTheWire(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[Region](), reflect.TypeFor[DataspaceInfo](), reflect.TypeFor[DataspaceAdd]()} {
		for f := range typ.Fields() {
			tag := strings.ToLower(f.Name + " " + f.Tag.Get("json"))
			if strings.Contains(tag, "path") || strings.Contains(tag, "source") || strings.Contains(tag, "file") {
				t.Errorf("%s.%s (json %q) could name a file", typ.Name(), f.Name, f.Tag.Get("json"))
			}
		}
	}
	var m RegionAdd
	raw := `{"uffd_id":1,"region":{"start":4096,"length":4096,"dataspace":"x","offset":0,"content":"file","path":"/etc/shadow","source":"/etc/shadow"}}`
	if err := m.Unmarshal([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	out, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "shadow") {
		t.Errorf("a path survived decoding: %s", out)
	}
	var ok ClaimOK
	if err := ok.Unmarshal([]byte(`{"pager":"local","fault_around":1,"dataspaces":[{"name":"s","size":1,"source":"/etc/shadow"}]}`)); err != nil {
		t.Fatal(err)
	}
	if out, _ := ok.Marshal(); strings.Contains(string(out), "shadow") {
		t.Errorf("a path survived decoding: %s", out)
	}
}

func TestDataspaceAddAndRegionRemoveValidate(t *testing.T) {
	for _, tc := range []struct {
		m   Message
		raw string
	}{
		{new(DataspaceAdd), `{"name":"","content":"zero"}`},
		{new(DataspaceAdd), `{"name":"a","content":"tape"}`},
		{new(DataspaceAdd), `{"name":"a","subsystem":"` + strings.Repeat("s", MaxName+1) + `","content":"zero"}`},
		{new(RegionRemove), `{"uffd_id":1,"start":4096,"length":0}`},
		{new(RegionRemove), `{"uffd_id":1,"start":18446744073709547520,"length":8192}`},
		{new(RegionAdd), `{"uffd_id":1,"region":{"start":0,"length":4096,"dataspace":"a","subsystem":"` + strings.Repeat("s", MaxName+1) + `"}}`},
	} {
		if err := tc.m.Unmarshal([]byte(tc.raw)); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s %s: err %v, want ErrProtocol", tc.m.Type(), tc.raw, err)
		}
	}
}
