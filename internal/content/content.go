// Package content says what a dataspace holds: the bytes a pager copies into
// a page on its first touch. A Source is read-only and safe for concurrent
// Fill calls from several pager threads.
//
// Three sources exist: Zero (the pager maps zero pages without copying),
// Pattern (a cheap deterministic word per offset, so tests and the bench can
// verify every page they touch), and File (a read-only file, zero beyond its
// end).
package content

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"
)

// Source is what a dataspace holds.
type Source interface {
	// Fill writes the bytes at dataspace offset off into dst.
	Fill(dst []byte, off uint64) error
	// IsZero tells that every byte is zero: the pager maps zero pages
	// instead of copying.
	IsZero() bool
	// Size is the content's length in bytes; 0 means unbounded.
	Size() uint64
}

// Zero is the all-zero source.
func Zero() Source { return zeroSource{} }

type zeroSource struct{}

func (zeroSource) Fill(dst []byte, _ uint64) error { clear(dst); return nil }
func (zeroSource) IsZero() bool                    { return true }
func (zeroSource) Size() uint64                    { return 0 }
func (zeroSource) String() string                  { return "zero" }

// patternStep multiplies the offset: odd, so every offset of a dataspace
// gets a different word (the golden-ratio constant of splitmix64).
const patternStep = 0x9E3779B97F4A7C15

// patternStep8 is the step between consecutive words (8×patternStep mod 2⁶⁴).
const patternStep8 = (patternStep * 8) & (1<<64 - 1)

// splitmix64 is the finalizer of the splitmix64 generator.
func splitmix64(x uint64) uint64 {
	x += patternStep
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// PatternWord is the 8-byte little-endian word of Pattern(seed) at byte
// offset off (off%8 == 0): splitmix64(seed) xor off×0x9E3779B97F4A7C15.
// Every offset of a dataspace gets a different word, and dataspaces with
// different seeds differ everywhere, so a page copied to the wrong place or
// from the wrong dataspace, or left zero, fails VerifyPattern. It is one
// multiply per word (one add per word when filling a page), cheap enough
// for the fault path.
func PatternWord(seed, off uint64) uint64 { return splitmix64(seed) ^ (off * patternStep) }

// Pattern is the deterministic test pattern with the given seed (see
// PatternWord). It is unbounded.
func Pattern(seed uint64) Source { return patternSource{key: splitmix64(seed), seed: seed} }

type patternSource struct{ key, seed uint64 }

func (p patternSource) IsZero() bool   { return false }
func (p patternSource) Size() uint64   { return 0 }
func (p patternSource) String() string { return fmt.Sprintf("pattern(seed=%d)", p.seed) }

func (p patternSource) Fill(dst []byte, off uint64) error {
	if off%8 != 0 || len(dst)%8 != 0 {
		fillPatternUnaligned(dst, p.key, off)
		return nil
	}
	x := off * patternStep
	if nativeLittleEndian && uintptr(unsafe.Pointer(unsafe.SliceData(dst)))%8 == 0 {
		// Fast path (pages are aligned): whole words, unrolled by 4.
		w := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(dst))), len(dst)/8)
		k := p.key
		s1 := uint64(patternStep8)
		s2, s3 := s1*2, s1*3
		i := 0
		for ; i+4 <= len(w); i += 4 {
			w[i] = k ^ x
			w[i+1] = k ^ (x + s1)
			w[i+2] = k ^ (x + s2)
			w[i+3] = k ^ (x + s3)
			x += s1 * 4
		}
		for ; i < len(w); i++ {
			w[i] = k ^ x
			x += patternStep8
		}
		return nil
	}
	for i := 0; i+8 <= len(dst); i += 8 {
		binary.LittleEndian.PutUint64(dst[i:i+8], p.key^x)
		x += patternStep8
	}
	return nil
}

// nativeLittleEndian: words can be stored directly.
var nativeLittleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

func fillPatternUnaligned(dst []byte, key, off uint64) {
	var w [8]byte
	for i := range dst {
		o := off + uint64(i)
		if i == 0 || o%8 == 0 {
			binary.LittleEndian.PutUint64(w[:], key^((o&^7)*patternStep))
		}
		dst[i] = w[o%8]
	}
}

// VerifyPattern checks that b holds Pattern(seed) from dataspace offset off
// (off%8 == 0, len(b)%8 == 0). The error names the first bad offset.
func VerifyPattern(b []byte, seed, off uint64) error {
	if off%8 != 0 || len(b)%8 != 0 {
		return fmt.Errorf("content: verify pattern at offset %#x, %d bytes: not 8-byte aligned", off, len(b))
	}
	key := splitmix64(seed)
	x := off * patternStep
	for i := 0; i+8 <= len(b); i += 8 {
		if got := binary.LittleEndian.Uint64(b[i : i+8]); got != key^x {
			return fmt.Errorf("%w: offset %#x holds %#016x, want %#016x (seed %d)",
				ErrMismatch, off+uint64(i), got, key^x, seed)
		}
		x += patternStep8
	}
	return nil
}

// ErrMismatch is wrapped by VerifyPattern's error.
var ErrMismatch = errors.New("content: pattern mismatch")

// File is the content of a read-only file; bytes beyond its end (as it was
// when opened) are zero. Close the returned Closer when the dataspace is gone.
func File(path string) (Source, io.Closer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("content: %w", err)
	}
	src, err := fromFile(f, path)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return src, f, nil
}

type fileSource struct {
	f    *os.File
	size uint64
	path string
}

func (s *fileSource) IsZero() bool   { return false }
func (s *fileSource) Size() uint64   { return s.size }
func (s *fileSource) String() string { return "file(" + s.path + ")" }

func (s *fileSource) Fill(dst []byte, off uint64) error {
	n := 0
	if off < s.size {
		want := len(dst)
		if rest := s.size - off; uint64(want) > rest {
			want = int(rest)
		}
		var err error
		n, err = s.f.ReadAt(dst[:want], int64(off))
		if err != nil && !(errors.Is(err, io.EOF) && n == want) {
			if !errors.Is(err, io.EOF) {
				return fmt.Errorf("content: read %s at %#x: %w", s.path, off, err)
			}
		}
	}
	clear(dst[n:])
	return nil
}
