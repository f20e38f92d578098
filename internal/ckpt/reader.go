package ckpt

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/vcored/vcored/internal/content"
)

// Reader serves a checkpoint image as a content.Source: each page from the
// newest layer that holds it, zero where none does. It reads the chain the
// manifest named when it was opened (later commits do not change it) and is
// safe for concurrent Fill calls. Every page read is checked against its
// checksum; a mismatch is an error wrapping ErrCorrupt and the bytes are
// not served (dst is cleared).
type Reader struct {
	dir      string
	size     uint64
	pageSize uint32
	layers   []*layerFile // oldest first
	// index has one word per dataspace page: 0 when no layer holds it,
	// else (layer+1)<<48 | map entry index.
	index   []uint64
	scratch sync.Pool
	below   content.Source // what pages no layer holds read as (nil: zero)
}

type layerFile struct {
	f       *os.File
	name    string
	hdr     layerHeader
	entries []mapEntry
	slots   []uint32 // per entry: data slot (meaningless for entryZero)
	dataOff uint64
}

const (
	locLayerShift = 48
	locEntryMask  = 1<<locLayerShift - 1
)

// OpenReader opens the image in dir for reading. Each layer of the chain is
// checked: header and map checksums, the header matching its manifest
// entry, and the file length (a torn layer is refused here). Page data is
// checked as it is read (Fill), or all at once by Verify.
func OpenReader(dir string) (*Reader, error) {
	return OpenReaderOver(dir, nil)
}

// OpenReaderOver is OpenReader with the pages no layer holds read from
// below (nil: zero) — the content a dataspace had before its first
// checkpoint.
func OpenReaderOver(dir string, below content.Source) (*Reader, error) {
	m, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	r, err := openReader(dir, m, m.Layers)
	if err != nil {
		return nil, err
	}
	if below != nil && !below.IsZero() {
		r.below = below
	}
	return r, nil
}

func openReader(dir string, m *manifest, chain []layerEntry) (*Reader, error) {
	r := &Reader{dir: dir, size: m.Size, pageSize: m.PageSize}
	r.index = make([]uint64, m.Size/uint64(m.PageSize))
	r.scratch.New = func() any { b := make([]byte, r.pageSize); return &b }
	for li, le := range chain {
		lf, err := openLayer(dir, m, le)
		if err != nil {
			r.Close()
			return nil, err
		}
		r.layers = append(r.layers, lf)
		for ei, e := range lf.entries {
			r.index[e.page] = uint64(li+1)<<locLayerShift | uint64(ei)
		}
	}
	return r, nil
}

func openLayer(dir string, m *manifest, le layerEntry) (*layerFile, error) {
	path := filepath.Join(dir, le.File)
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: layer %s: %s", ErrCorrupt, path, fmt.Sprintf(format, args...))
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: layer %s named by the manifest: %v", ErrCorrupt, path, err)
	}
	lf := &layerFile{f: f, name: path}
	fail := func(err error) (*layerFile, error) { f.Close(); return nil, err }
	hb := make([]byte, headerSize)
	if _, err := f.ReadAt(hb, 0); err != nil {
		return fail(bad("header: %v", err))
	}
	h, err := decodeHeader(hb)
	if err != nil {
		return fail(fmt.Errorf("layer %s: %w", path, err))
	}
	if crc(hb[:60]) != le.HeaderCRC || h.seq != le.Seq || h.npages != le.Pages || h.dataPages != le.DataPages {
		return fail(bad("header (seq %d, %d pages) does not match the manifest's entry %+v", h.seq, h.npages, le))
	}
	if h.pageSize != m.PageSize || h.size != m.Size {
		return fail(bad("page size %d / size %d, the image's %d / %d", h.pageSize, h.size, m.PageSize, m.Size))
	}
	lf.hdr = h
	lf.dataOff = dataOffset(h.npages, h.pageSize)
	st, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if want := int64(lf.dataOff + h.dataPages*uint64(h.pageSize)); st.Size() != want {
		return fail(bad("%d bytes, want %d (torn write?)", st.Size(), want))
	}
	mb := make([]byte, h.npages*entrySize)
	if _, err := f.ReadAt(mb, headerSize); err != nil && !errors.Is(err, io.EOF) {
		return fail(bad("page map: %v", err))
	}
	if got := crc(mb); got != h.mapCRC {
		return fail(bad("page map checksum %08x, header says %08x", got, h.mapCRC))
	}
	npages := m.Size / uint64(m.PageSize)
	lf.entries = make([]mapEntry, h.npages)
	lf.slots = make([]uint32, h.npages)
	slot := uint32(0)
	for i := range lf.entries {
		e := getEntry(mb[i*entrySize:])
		if e.page >= npages || (i > 0 && e.page <= lf.entries[i-1].page) || e.flags&^entryZero != 0 {
			return fail(bad("page map entry %d: %+v", i, e))
		}
		lf.entries[i] = e
		lf.slots[i] = slot
		if e.flags&entryZero == 0 {
			slot++
		}
	}
	if uint64(slot) != h.dataPages {
		return fail(bad("%d data pages in the map, header says %d", slot, h.dataPages))
	}
	return lf, nil
}

// Close closes the layer files.
func (r *Reader) Close() error {
	var errs []error
	for _, l := range r.layers {
		errs = append(errs, l.f.Close())
	}
	r.layers = nil
	return errors.Join(errs...)
}

// Size is the dataspace size in bytes.
func (r *Reader) Size() uint64 { return r.size }

// PageSize is the image's page size.
func (r *Reader) PageSize() int { return int(r.pageSize) }

// IsZero tells that the image holds no layer and nothing lies below it:
// every page is zero.
func (r *Reader) IsZero() bool { return len(r.layers) == 0 && r.below == nil }

// Layers is the number of layers in the chain read.
func (r *Reader) Layers() int { return len(r.layers) }

// String names the image, for logs.
func (r *Reader) String() string {
	return fmt.Sprintf("ckpt(%s, %d layers)", r.dir, len(r.layers))
}

// Has reports whether some layer holds page (a page no layer holds reads
// as zero).
func (r *Reader) Has(page uint64) bool { return page < uint64(len(r.index)) && r.index[page] != 0 }

// StoredPages returns the pages some layer holds, ascending.
func (r *Reader) StoredPages() []uint64 {
	var out []uint64
	for p, loc := range r.index {
		if loc != 0 {
			out = append(out, uint64(p))
		}
	}
	return out
}

// loc resolves page to its layer and map entry; ok is false when no layer
// holds it.
func (r *Reader) loc(page uint64) (l *layerFile, ei int, ok bool) {
	if page >= uint64(len(r.index)) {
		return nil, 0, false
	}
	v := r.index[page]
	if v == 0 {
		return nil, 0, false
	}
	return r.layers[v>>locLayerShift-1], int(v & locEntryMask), true
}

// Fill writes the bytes at dataspace offset off into dst (content.Source).
// Bytes beyond Size are zero. Runs of whole pages stored one after another
// in the same layer are read with one pread.
func (r *Reader) Fill(dst []byte, off uint64) error {
	ps := uint64(r.pageSize)
	for len(dst) > 0 {
		page, in := off/ps, off%ps
		n := min(ps-in, uint64(len(dst)))
		l, ei, ok := r.loc(page)
		switch {
		case !ok && r.below != nil:
			if err := r.below.Fill(dst[:n], off); err != nil {
				clear(dst)
				return err
			}
		case !ok:
			clear(dst[:n])
		case l.entries[ei].flags&entryZero != 0:
			clear(dst[:n])
		case in != 0 || n != ps:
			bp := r.scratch.Get().(*[]byte)
			err := r.readPages(l, ei, 1, *bp)
			if err == nil {
				copy(dst[:n], (*bp)[in:])
			}
			r.scratch.Put(bp)
			if err != nil {
				clear(dst)
				return err
			}
		default:
			// Extend over the following whole pages that are the next
			// data slots of the same layer.
			run := 1
			for uint64(len(dst)) >= uint64(run+1)*ps {
				l2, ei2, ok2 := r.loc(page + uint64(run))
				if !ok2 || l2 != l || ei2 != ei+run || l.entries[ei2].flags&entryZero != 0 {
					break
				}
				run++
			}
			n = uint64(run) * ps
			if err := r.readPages(l, ei, run, dst[:n]); err != nil {
				clear(dst)
				return err
			}
		}
		dst = dst[n:]
		off += n
	}
	return nil
}

// readPages reads run pages with data starting at map entry ei of l into
// dst (run pages long) and checks each page's checksum.
func (r *Reader) readPages(l *layerFile, ei, run int, dst []byte) error {
	ps := int(r.pageSize)
	at := int64(l.dataOff) + int64(l.slots[ei])*int64(ps)
	if _, err := l.f.ReadAt(dst[:run*ps], at); err != nil {
		return fmt.Errorf("ckpt: read %s at %d: %w", l.name, at, err)
	}
	for i := range run {
		e := l.entries[ei+i]
		if got := crc(dst[i*ps : (i+1)*ps]); got != e.crc {
			return fmt.Errorf("%w: layer %s page %d (dataspace offset %#x): checksum %08x, stored %08x",
				ErrCorrupt, l.name, e.page, e.page*uint64(ps), got, e.crc)
		}
	}
	return nil
}

// Verify reads every page of every layer of the chain (shadowed pages too)
// and checks its checksum.
func (r *Reader) Verify() error {
	ps := int(r.pageSize)
	buf := make([]byte, 64*ps)
	for _, l := range r.layers {
		for ei := 0; ei < len(l.entries); {
			if l.entries[ei].flags&entryZero != 0 {
				if l.entries[ei].crc != crc(zeroPage[:ps]) {
					return fmt.Errorf("%w: layer %s: zero page %d has checksum %08x", ErrCorrupt, l.name, l.entries[ei].page, l.entries[ei].crc)
				}
				ei++
				continue
			}
			run := 1
			for run < 64 && ei+run < len(l.entries) && l.entries[ei+run].flags&entryZero == 0 {
				run++
			}
			if err := r.readPages(l, ei, run, buf); err != nil {
				return err
			}
			ei += run
		}
	}
	return nil
}
