package content

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestZero(t *testing.T) {
	z := Zero()
	b := bytes.Repeat([]byte{0xff}, 4096)
	if err := z.Fill(b, 12345); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, make([]byte, 4096)) || !z.IsZero() || z.Size() != 0 {
		t.Error("Zero is not zero")
	}
}

func TestPatternFillVerify(t *testing.T) {
	p := Pattern(7)
	if p.IsZero() || p.Size() != 0 {
		t.Fatal("pattern claims to be zero or bounded")
	}
	page := make([]byte, 4096)
	if err := p.Fill(page, 3*4096); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(page); i += 8 {
		if got, want := binary.LittleEndian.Uint64(page[i:]), PatternWord(7, 3*4096+uint64(i)); got != want {
			t.Fatalf("word at %d = %#x, PatternWord says %#x", i, got, want)
		}
	}
	if err := VerifyPattern(page, 7, 3*4096); err != nil {
		t.Fatal(err)
	}
	// Wrong offset, wrong seed, a zero page, one flipped byte: all caught.
	if err := VerifyPattern(page, 7, 2*4096); !errors.Is(err, ErrMismatch) {
		t.Errorf("page verified at the wrong offset: %v", err)
	}
	if err := VerifyPattern(page, 8, 3*4096); err == nil {
		t.Error("page verified with the wrong seed")
	}
	if err := VerifyPattern(make([]byte, 4096), 7, 0); err == nil {
		t.Error("zero page verified")
	}
	page[1234] ^= 1
	err := VerifyPattern(page, 7, 3*4096)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("0x34d0")) { // 3*4096+1232
		t.Errorf("flipped byte: %v, want the error to name offset 0x34d0", err)
	}
	// Unaligned fills agree with aligned ones.
	whole := make([]byte, 64)
	p.Fill(whole, 0)
	part := make([]byte, 13)
	p.Fill(part, 5)
	if !bytes.Equal(part, whole[5:18]) {
		t.Errorf("unaligned fill %x, want %x", part, whole[5:18])
	}
}

func TestPatternDistinct(t *testing.T) {
	seen := map[uint64]uint64{}
	for off := uint64(0); off < 1<<20; off += 8 {
		w := PatternWord(1, off)
		if prev, ok := seen[w]; ok {
			t.Fatalf("offsets %#x and %#x share word %#x", prev, off, w)
		}
		seen[w] = off
		if w == PatternWord(2, off) {
			t.Fatalf("seeds 1 and 2 agree at offset %#x", off)
		}
	}
}

func TestFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "content")
	data := make([]byte, 6000)
	for i := range data {
		data[i] = byte(i*7 + 1)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	src, closer, err := File(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	if src.Size() != 6000 || src.IsZero() {
		t.Fatalf("size %d zero %v", src.Size(), src.IsZero())
	}
	page := bytes.Repeat([]byte{0xee}, 4096)
	if err := src.Fill(page, 0); err != nil || !bytes.Equal(page, data[:4096]) {
		t.Fatalf("first page: %v", err)
	}
	page = bytes.Repeat([]byte{0xee}, 4096)
	if err := src.Fill(page, 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(page[:1904], data[4096:]) || !bytes.Equal(page[1904:], make([]byte, 4096-1904)) {
		t.Error("page across EOF: want the file's tail then zeros")
	}
	page = bytes.Repeat([]byte{0xee}, 4096)
	if err := src.Fill(page, 1<<30); err != nil || !bytes.Equal(page, make([]byte, 4096)) {
		t.Errorf("page beyond EOF not zero: %v", err)
	}
	if _, _, err := File(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if _, _, err := File(t.TempDir()); err == nil {
		t.Error("a directory accepted as content")
	}
}

func BenchmarkPatternFill(b *testing.B) {
	p := Pattern(1)
	page := make([]byte, 4096)
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		p.Fill(page, uint64(i)*4096)
	}
}
