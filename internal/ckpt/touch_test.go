package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestTouchOrder: the order round-trips; writing one beyond the dataspace
// or with a repeated page is refused; a damaged file (a flipped bit, torn
// at any length, a page beyond the dataspace or repeated under a valid
// checksum) is refused whole with ErrCorrupt, never partly returned.
func TestTouchOrder(t *testing.T) {
	dir := t.TempDir()
	im, err := Create(dir, 16*testPS, testPS)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := im.TouchOrder(); got != nil || err != nil {
		t.Fatalf("no touch order: %v, %v", got, err)
	}
	order := []uint64{7, 0, 15, 3}
	if err := im.WriteTouchOrder(order); err != nil {
		t.Fatal(err)
	}
	for _, read := range []func() ([]uint64, error){im.TouchOrder, func() ([]uint64, error) { return ReadTouchOrder(dir) }} {
		if got, err := read(); err != nil || !slices.Equal(got, order) {
			t.Fatalf("read back %v, %v; want %v", got, err, order)
		}
	}
	if err := im.WriteTouchOrder([]uint64{16}); err == nil {
		t.Error("touch order beyond the dataspace: no error")
	}
	if err := im.WriteTouchOrder([]uint64{1, 2, 1}); err == nil {
		t.Error("touch order with a page twice: no error")
	}
	if got, err := im.TouchOrder(); err != nil || !slices.Equal(got, order) {
		t.Fatalf("a refused write changed the order: %v, %v", got, err)
	}
	path := filepath.Join(dir, touchName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	refused := func(what string) {
		t.Helper()
		got, err := im.TouchOrder()
		if !errors.Is(err, ErrCorrupt) || got != nil {
			t.Fatalf("%s: %v, %v; want ErrCorrupt and no pages", what, got, err)
		}
	}
	flip(t, path, 20)
	refused("a flipped bit")
	for n := 0; n < len(good); n++ {
		if err := os.WriteFile(path, good[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		refused(fmt.Sprintf("torn at %d of %d bytes", n, len(good)))
	}
	// Valid checksums over bad content.
	forge := func(pages ...uint64) {
		b := append([]byte(touchMagic), binary.LittleEndian.AppendUint64(nil, uint64(len(pages)))...)
		for _, p := range pages {
			b = binary.LittleEndian.AppendUint64(b, p)
		}
		b = binary.LittleEndian.AppendUint32(b, crc(b))
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	forge(1, 16)
	refused("a page beyond the dataspace")
	forge(1, 2, 1)
	refused("a page twice")
	forge(make([]uint64, 17)...)
	refused("more pages than the dataspace")
}

// TestTouchOrderCrashBeforeRename: a crash while the new order is written
// (before its rename) leaves the old order, whole.
func TestTouchOrderCrashBeforeRename(t *testing.T) {
	dir := t.TempDir()
	im, err := Create(dir, 16*testPS, testPS)
	if err != nil {
		t.Fatal(err)
	}
	old := []uint64{3, 2, 1}
	if err := im.WriteTouchOrder(old); err != nil {
		t.Fatal(err)
	}
	crash := errors.New("simulated crash")
	afterWriteHook = func(what string) error {
		if what == "rename "+touchName {
			return crash
		}
		return nil
	}
	err = im.WriteTouchOrder([]uint64{9, 8})
	afterWriteHook = func(string) error { return nil }
	if !errors.Is(err, crash) {
		t.Fatalf("WriteTouchOrder = %v, want the simulated crash", err)
	}
	if got, err := im.TouchOrder(); err != nil || !slices.Equal(got, old) {
		t.Fatalf("after the crash: %v, %v; want the old order %v", got, err, old)
	}
}

func TestMergeTouchOrder(t *testing.T) {
	got := MergeTouchOrder([]uint64{9, 2, 9}, []uint64{1, 2, 3, 9, 4})
	if want := []uint64{9, 2, 1, 3, 4}; !slices.Equal(got, want) {
		t.Fatalf("MergeTouchOrder = %v, want %v", got, want)
	}
	if got := MergeTouchOrder(nil, nil); len(got) != 0 {
		t.Fatalf("empty: %v", got)
	}
}
