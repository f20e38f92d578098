package wire

import "testing"

func BenchmarkForwardUnmarshal(b *testing.B) {
	p, _ := (&Forward{UffdID: 3, Addr: 0x7f0000001000, Dataspace: "shared", Offset: 8192, TID: 4322, SeqNo: 77}).Marshal()
	var m Forward
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Unmarshal(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFrameEncodeDecode(b *testing.B) {
	m := &Forward{UffdID: 3, Addr: 0x7f0000001000, Dataspace: "shared", Offset: 8192, TID: 4322, SeqNo: 77}
	buf := make([]byte, 0, 128)
	var out Forward
	b.ReportAllocs()
	for b.Loop() {
		buf = append(buf[:0], make([]byte, HeaderSize)...)
		buf, _ = m.AppendMarshal(buf)
		PutHeader(buf, Header{Length: uint32(len(buf) - HeaderSize), Type: TypeForward})
		f, _, err := DecodeFrame(buf)
		if err != nil {
			b.Fatal(err)
		}
		if err := out.Unmarshal(f.Payload); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConnForwardRoundTrip is one Forward / ForwardDone exchange over
// a real unix socket pair: the protocol's share of a forwarded fault.
func BenchmarkConnForwardRoundTrip(b *testing.B) {
	a, c := connPair(b)
	go func() {
		var fw Forward
		for {
			f, err := c.Recv()
			if err != nil {
				return
			}
			if fw.Unmarshal(f.Payload) != nil {
				return
			}
			if c.SendMsg(&ForwardDone{SeqNo: fw.SeqNo}) != nil {
				return
			}
		}
	}()
	m := &Forward{UffdID: 3, Addr: 0x7f0000001000, Dataspace: "shared", Offset: 8192}
	var done ForwardDone
	b.ReportAllocs()
	for b.Loop() {
		m.SeqNo++
		if err := a.SendMsg(m); err != nil {
			b.Fatal(err)
		}
		f, err := a.Recv()
		if err != nil {
			b.Fatal(err)
		}
		if err := done.Unmarshal(f.Payload); err != nil || done.SeqNo != m.SeqNo {
			b.Fatalf("ForwardDone %+v, %v", done, err)
		}
	}
}
