package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Touch order: the pages of a dataspace in the order its process first
// touched them, so that a restore can copy them ahead of the faults
// (restore_prefetch). The file is "VCKTOUCH", a u64 count, the page
// indexes (u64 each, each once, each inside the dataspace) and a crc32c of
// everything before it; it is replaced atomically (written to a temporary
// file, fsynced, renamed, the directory fsynced), so a crash leaves the old
// order or the new one. It is a hint: a damaged one is refused as a whole
// (ErrCorrupt) and a restore goes on without it.
const touchMagic = "VCKTOUCH"

// WriteTouchOrder records pages (page indexes, first touched first, each
// once) for the next restore's prefetch.
func (im *Image) WriteTouchOrder(pages []uint64) error {
	npages := im.m.Size / uint64(im.m.PageSize)
	if uint64(len(pages)) > npages {
		return fmt.Errorf("ckpt: touch order of %d pages, the dataspace has %d", len(pages), npages)
	}
	seen := make([]uint64, (npages+63)/64)
	b := make([]byte, 0, 16+8*len(pages)+4)
	b = append(b, touchMagic...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(pages)))
	for _, p := range pages {
		if p >= npages {
			return fmt.Errorf("ckpt: touch order: page %d is beyond the dataspace (%d pages)", p, npages)
		}
		if seen[p/64]&(1<<(p%64)) != 0 {
			return fmt.Errorf("ckpt: touch order: page %d twice", p)
		}
		seen[p/64] |= 1 << (p % 64)
		b = binary.LittleEndian.AppendUint64(b, p)
	}
	b = binary.LittleEndian.AppendUint32(b, crc(b))
	return writeFileAtomic(im.dir, touchName, b)
}

// TouchOrder returns the image's recorded touch order, checked against the
// dataspace: nil without error when none was recorded; an error wrapping
// ErrCorrupt when the file is damaged (torn, bad checksum, a page beyond
// the dataspace or repeated), and then no page of it.
func (im *Image) TouchOrder() ([]uint64, error) {
	return readTouchOrder(im.dir, im.m.Size/uint64(im.m.PageSize))
}

// ReadTouchOrder returns the recorded touch order of the image in dir, or
// nil without error when none was recorded. A damaged file is an error
// wrapping ErrCorrupt. It does not know the dataspace's size: Image's
// TouchOrder checks the pages against it too.
func ReadTouchOrder(dir string) ([]uint64, error) {
	return readTouchOrder(dir, 0)
}

// readTouchOrder reads dir's touch order; npages > 0 bounds the indexes.
func readTouchOrder(dir string, npages uint64) ([]uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, touchName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	if len(b) < 20 || string(b[:8]) != touchMagic {
		return nil, fmt.Errorf("%w: %s: bad header", ErrCorrupt, touchName)
	}
	n := binary.LittleEndian.Uint64(b[8:])
	if n > uint64(len(b))/8 || uint64(len(b)) != 16+8*n+4 {
		return nil, fmt.Errorf("%w: %s: %d bytes for %d pages (torn?)", ErrCorrupt, touchName, len(b), n)
	}
	body := b[:len(b)-4]
	if got, want := crc(body), binary.LittleEndian.Uint32(b[len(b)-4:]); got != want {
		return nil, fmt.Errorf("%w: %s: checksum %08x, computed %08x", ErrCorrupt, touchName, want, got)
	}
	if npages > 0 && n > npages {
		return nil, fmt.Errorf("%w: %s: %d pages, the dataspace has %d", ErrCorrupt, touchName, n, npages)
	}
	out := make([]uint64, n)
	seen := map[uint64]bool{}
	for i := range out {
		p := binary.LittleEndian.Uint64(b[16+8*i:])
		if npages > 0 && p >= npages {
			return nil, fmt.Errorf("%w: %s: page %d beyond the dataspace (%d pages)", ErrCorrupt, touchName, p, npages)
		}
		if seen[p] {
			return nil, fmt.Errorf("%w: %s: page %d twice", ErrCorrupt, touchName, p)
		}
		seen[p] = true
		out[i] = p
	}
	return out, nil
}

// MergeTouchOrder is the touch order of a run restored with prefetch:
// the pages it faulted in itself (first, in their order: the prefetch had
// not got there yet, they are wanted earlier), then the rest of the order
// the prefetch followed (the run's first touches of those pages raised no
// fault, so their order is not known better). Each page once.
func MergeTouchOrder(faulted, previous []uint64) []uint64 {
	out := make([]uint64, 0, len(faulted)+len(previous))
	seen := make(map[uint64]bool, len(faulted)+len(previous))
	for _, list := range [][]uint64{faulted, previous} {
		for _, p := range list {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out
}
