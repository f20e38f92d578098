package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Compact merges the oldest layers of the chain into one when it holds more
// than maxLayers, so that the chain has maxLayers layers afterwards: the
// merged layer holds, for each page any of them holds, its newest content.
// It is committed like any layer (atomic: a crash leaves the old chain) and
// reads every page it merges against its checksum first, so a corrupt
// layer stops the compaction with an error instead of being carried over.
// It reports whether it merged anything.
func (im *Image) Compact(maxLayers int) (bool, LayerInfo, error) {
	if maxLayers < 1 {
		return false, LayerInfo{}, fmt.Errorf("ckpt: compact to %d layers: want at least 1", maxLayers)
	}
	im.mu.Lock()
	if im.writing {
		im.mu.Unlock()
		return false, LayerInfo{}, errWriting
	}
	m := im.m
	if len(m.Layers) <= maxLayers {
		im.mu.Unlock()
		return false, LayerInfo{}, nil
	}
	k := len(m.Layers) - maxLayers + 1 // oldest layers to merge
	r, err := openReader(im.dir, m, m.Layers[:k])
	if err != nil {
		im.mu.Unlock()
		return false, LayerInfo{}, err
	}
	defer r.Close()
	pages := r.StoredPages()
	w, err := im.newLayerLocked(pages, k, true)
	if err != nil {
		im.mu.Unlock()
		return false, LayerInfo{}, err
	}
	im.writing = true
	im.mu.Unlock()

	ps := uint64(m.PageSize)
	const batch = 256
	buf := make([]byte, batch*ps)
	for i := 0; i < len(pages); {
		// Consecutive page indexes fill in one call.
		n := 1
		for n < batch && i+n < len(pages) && pages[i+n] == pages[i]+uint64(n) {
			n++
		}
		if err := r.Fill(buf[:uint64(n)*ps], pages[i]*ps); err != nil {
			w.Abort()
			return false, LayerInfo{}, fmt.Errorf("ckpt: compact %s: %w", im.dir, err)
		}
		if err := w.Write(buf[:uint64(n)*ps]); err != nil {
			return false, LayerInfo{}, err
		}
		i += n
	}
	info, err := w.Commit()
	if err != nil {
		return false, LayerInfo{}, err
	}
	return true, info, nil
}

// Touch order: the pages of a dataspace in the order its process first
// touched them, so that a restore can copy them ahead of the faults. The
// file is "VCKTOUCH", a u64 count, the page indexes (u64 each) and a crc32c
// of everything before it; it is replaced atomically.
const touchMagic = "VCKTOUCH"

// WriteTouchOrder records pages (page indexes, first touched first) for
// the next restore's prefetch.
func (im *Image) WriteTouchOrder(pages []uint64) error {
	npages := im.m.Size / uint64(im.m.PageSize)
	b := make([]byte, 0, 16+8*len(pages)+4)
	b = append(b, touchMagic...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(pages)))
	for _, p := range pages {
		if p >= npages {
			return fmt.Errorf("ckpt: touch order: page %d is beyond the dataspace (%d pages)", p, npages)
		}
		b = binary.LittleEndian.AppendUint64(b, p)
	}
	b = binary.LittleEndian.AppendUint32(b, crc(b))
	return writeFileAtomic(im.dir, touchName, b)
}

// ReadTouchOrder returns the recorded touch order of the image in dir, or
// nil without error when none was recorded. A damaged file is an error
// wrapping ErrCorrupt (a prefetch hint: the caller may go on without it).
func ReadTouchOrder(dir string) ([]uint64, error) {
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
	if uint64(len(b)) != 16+8*n+4 {
		return nil, fmt.Errorf("%w: %s: %d bytes for %d pages", ErrCorrupt, touchName, len(b), n)
	}
	body := b[:len(b)-4]
	if got, want := crc(body), binary.LittleEndian.Uint32(b[len(b)-4:]); got != want {
		return nil, fmt.Errorf("%w: %s: checksum %08x, computed %08x", ErrCorrupt, touchName, want, got)
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(b[16+8*i:])
	}
	return out, nil
}
