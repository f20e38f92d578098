package wire

import (
	"testing"
)

// FuzzDecodeFrame feeds arbitrary bytes to the frame and message decoders:
// they must never panic, and a hostile length must be refused before any
// payload is allocated (DecodeFrame only slices its input; Decode works on
// at most MaxPayload bytes).
func FuzzDecodeFrame(f *testing.F) {
	for _, m := range samples {
		p, _ := m.AppendMarshal(nil)
		lo, _ := m.Type().FDs()
		b, _ := AppendFrame(nil, m.Type(), p, lo)
		f.Add(b)
	}
	f.Add(header(0xffffffff, TypeHello, 0))
	f.Add(header(16, TypeForward, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) > 0 {
			fr, n, err := DecodeFrame(b)
			if err != nil {
				return
			}
			if n < HeaderSize || n > len(b) || len(fr.Payload) > MaxPayload {
				t.Fatalf("DecodeFrame consumed %d of %d bytes, payload %d", n, len(b), len(fr.Payload))
			}
			lo, _ := fr.Type.FDs()
			fr.FDs = make([]int, lo)
			if m, err := Decode(fr); err == nil {
				// What decodes must encode again and decode to the same.
				p, err := m.AppendMarshal(nil)
				if err != nil {
					t.Fatalf("re-encoding %s: %v", fr.Type, err)
				}
				m2 := table[fr.Type].new()
				if err := m2.Unmarshal(p); err != nil {
					t.Fatalf("decoding re-encoded %s %q: %v", fr.Type, p, err)
				}
			}
			b = b[n:]
		}
	})
}

// fuzzUnmarshal runs one message type's Unmarshal on arbitrary payloads.
func fuzzUnmarshal(f *testing.F, t Type) {
	for _, m := range samples {
		if m.Type() == t {
			p, _ := m.AppendMarshal(nil)
			f.Add(p)
		}
	}
	f.Add([]byte("{}"))
	f.Add([]byte(`{"regions":[{}],"cpus":"0-99999999"}`))
	f.Add(make([]byte, ForwardSize))
	f.Fuzz(func(tt *testing.T, b []byte) {
		if len(b) > MaxPayload {
			return // never reaches Unmarshal: the frame header is refused
		}
		m := table[t].new()
		if err := m.Unmarshal(b); err != nil {
			return
		}
		p, err := m.AppendMarshal(nil)
		if err != nil {
			tt.Fatalf("re-encoding %s: %v", t, err)
		}
		if err := table[t].new().Unmarshal(p); err != nil {
			tt.Fatalf("decoding re-encoded %s %q: %v", t, p, err)
		}
	})
}

func FuzzHello(f *testing.F)        { fuzzUnmarshal(f, TypeHello) }
func FuzzHelloOK(f *testing.F)      { fuzzUnmarshal(f, TypeHelloOK) }
func FuzzError(f *testing.F)        { fuzzUnmarshal(f, TypeError) }
func FuzzAck(f *testing.F)          { fuzzUnmarshal(f, TypeAck) }
func FuzzClaim(f *testing.F)        { fuzzUnmarshal(f, TypeClaim) }
func FuzzClaimOK(f *testing.F)      { fuzzUnmarshal(f, TypeClaimOK) }
func FuzzRelease(f *testing.F)      { fuzzUnmarshal(f, TypeRelease) }
func FuzzUffdAdd(f *testing.F)      { fuzzUnmarshal(f, TypeUffdAdd) }
func FuzzRegionAdd(f *testing.F)    { fuzzUnmarshal(f, TypeRegionAdd) }
func FuzzUffdRemove(f *testing.F)   { fuzzUnmarshal(f, TypeUffdRemove) }
func FuzzForward(f *testing.F)      { fuzzUnmarshal(f, TypeForward) }
func FuzzForwardDone(f *testing.F)  { fuzzUnmarshal(f, TypeForwardDone) }
func FuzzTakeBack(f *testing.F)     { fuzzUnmarshal(f, TypeTakeBack) }
func FuzzDataspaceAdd(f *testing.F) { fuzzUnmarshal(f, TypeDataspaceAdd) }
func FuzzRegionRemove(f *testing.F) { fuzzUnmarshal(f, TypeRegionRemove) }
func FuzzReplicaPage(f *testing.F)  { fuzzUnmarshal(f, TypeReplicaPage) }
func FuzzAttach(f *testing.F)       { fuzzUnmarshal(f, TypeAttach) }
func FuzzAttachOK(f *testing.F)     { fuzzUnmarshal(f, TypeAttachOK) }
func FuzzAttachErr(f *testing.F)    { fuzzUnmarshal(f, TypeAttachErr) }
func FuzzDetach(f *testing.F)       { fuzzUnmarshal(f, TypeDetach) }

// TestFuzzTargetsCoverTable keeps the per-message fuzz targets in step
// with the message table.
func TestFuzzTargetsCoverTable(t *testing.T) {
	if n := len(table); n != 20 {
		t.Fatalf("the message table has %d types: add a Fuzz<Type> target for each new one and update this count", n)
	}
}
