package ckpt

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/vcored/vcored/internal/linux"
)

// Image is a checkpoint image directory opened for writing layers. One
// layer is written at a time; readers (OpenReader) may read the image
// meanwhile and see the chain as it was when they opened it.
type Image struct {
	dir string

	mu      sync.Mutex
	m       *manifest // the committed manifest
	writing bool      // a LayerWriter is open
}

// Create makes a new, empty image of a dataspace of size bytes (a multiple
// of pageSize, a power of two) in dir, which is created if missing. An
// existing image there is an error: open it with Open.
func Create(dir string, size uint64, pageSize int) (*Image, error) {
	if pageSize <= 0 || pageSize > maxPageSize || pageSize&(pageSize-1) != 0 || size == 0 || size%uint64(pageSize) != 0 {
		return nil, fmt.Errorf("ckpt: create %s: size %d is not a positive multiple of the page size %d", dir, size, pageSize)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, manifestName)); err == nil {
		return nil, fmt.Errorf("ckpt: create %s: %w (an image is there already)", dir, fs.ErrExist)
	}
	m := &manifest{Version: manifestVersion, PageSize: uint32(pageSize), Size: size, NextSeq: 1}
	if err := writeManifest(dir, m); err != nil {
		return nil, err
	}
	return &Image{dir: dir, m: m}, nil
}

// Open opens the existing image in dir for writing more layers.
func Open(dir string) (*Image, error) {
	m, err := readManifest(dir)
	if err != nil {
		return nil, err
	}
	return &Image{dir: dir, m: m}, nil
}

// Dir is the image directory.
func (im *Image) Dir() string { return im.dir }

// Size is the dataspace size in bytes.
func (im *Image) Size() uint64 { return im.m.Size }

// PageSize is the image's page size.
func (im *Image) PageSize() int { return int(im.m.PageSize) }

// Layers is the number of layers in the committed chain.
func (im *Image) Layers() int {
	im.mu.Lock()
	defer im.mu.Unlock()
	return len(im.m.Layers)
}

// LayerInfo describes a committed layer.
type LayerInfo struct {
	Seq       uint64 // layer file sequence number
	File      string // path of the layer file
	Pages     int    // pages in the layer
	DataPages int    // of them, pages stored with data (the others are all zero)
	Bytes     int64  // layer file size
	Base      bool   // a full layer: the chain below it was dropped
	Layers    int    // layers in the chain after the commit
}

// LayerWriter writes one layer: the pages named when it was made, in that
// order, then Commit. Until Commit the image is unchanged; a crash or Abort
// leaves at most an unreferenced layer file, which the next commit removes.
type LayerWriter struct {
	im      *Image
	f       *os.File
	path    string
	seq     uint64
	pages   []uint64
	replace int // oldest layers the new one replaces (0: append)
	base    bool

	entries   []byte // the page map, filled as pages arrive
	next      int    // index into pages of the next page to Write
	dataPages uint64
	done      bool
	// written is the data bytes written so far, kicked how many of them
	// have been handed to the writeback goroutine (wb, started by the
	// first; wbDone is closed when it has ended).
	written, kicked int64
	wb              chan [2]int64
	wbDone          chan struct{}
}

// writebackChunk: every this many data bytes written, the layer writer
// has their writeback started (linux.StartWriteback), so that the disk
// writes the layer while the rest is copied and written, and the commit's
// fsync waits only for the tail. A goroutine of the writer's makes the
// calls: one blocks while the disk's queue is full, and the writer (which
// may be writing while a subsystem is frozen) must not wait for the disk
// before the commit. A variable for tests and benchmarks (0: off).
var writebackChunk int64 = 4 << 20

// startWriteback hands the data written since the last call to the
// writeback goroutine; if it is busy, the range waits for the next call.
func (w *LayerWriter) startWriteback() {
	if w.wb == nil {
		w.wb, w.wbDone = make(chan [2]int64, 4), make(chan struct{})
		go func(f *os.File, off int64) {
			defer close(w.wbDone)
			for r := range w.wb {
				// Best effort: a failure shows again in the commit's fsync.
				_ = linux.StartWriteback(f, off+r[0], r[1])
			}
		}(w.f, int64(dataOffset(uint64(len(w.pages)), w.im.m.PageSize)))
	}
	select {
	case w.wb <- [2]int64{w.kicked, w.written - w.kicked}:
		w.kicked = w.written
	default:
	}
}

// stopWriteback ends the writeback goroutine (before the file is closed).
func (w *LayerWriter) stopWriteback() {
	if w.wb != nil {
		close(w.wb)
		<-w.wbDone
		w.wb = nil
	}
}

// NewLayer starts a layer holding pages (page indexes, strictly ascending,
// each below Size/PageSize). An incremental layer (full false) holds the
// pages written since the last checkpoint and goes on top of the chain; a
// full layer holds every page that is not zero and replaces the chain on
// commit. The first layer of an image is full whatever full says.
func (im *Image) NewLayer(pages []uint64, full bool) (*LayerWriter, error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.writing {
		return nil, fmt.Errorf("ckpt: %s: a layer is being written already", im.dir)
	}
	replace := 0
	if full || len(im.m.Layers) == 0 {
		full = true
		replace = len(im.m.Layers)
	}
	w, err := im.newLayerLocked(pages, replace, full)
	if err != nil {
		return nil, err
	}
	im.writing = true
	return w, nil
}

func (im *Image) newLayerLocked(pages []uint64, replace int, base bool) (*LayerWriter, error) {
	npages := im.m.Size / uint64(im.m.PageSize)
	for i, p := range pages {
		if p >= npages {
			return nil, fmt.Errorf("ckpt: page %d is beyond the dataspace (%d pages)", p, npages)
		}
		if i > 0 && p <= pages[i-1] {
			return nil, fmt.Errorf("ckpt: layer pages not strictly ascending at %d (%d after %d)", i, p, pages[i-1])
		}
	}
	seq := im.m.NextSeq
	path := filepath.Join(im.dir, layerName(seq))
	// O_TRUNC: a file of this name is the leftover of an uncommitted
	// attempt (committed layers have sequence numbers below NextSeq).
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	if _, err := f.Seek(int64(dataOffset(uint64(len(pages)), im.m.PageSize)), 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	return &LayerWriter{
		im: im, f: f, path: path, seq: seq, pages: slices.Clone(pages),
		replace: replace, base: base,
		entries: make([]byte, len(pages)*entrySize),
	}, nil
}

// Pages is the number of pages the layer holds.
func (w *LayerWriter) Pages() int { return len(w.pages) }

// Written is the number of pages written so far.
func (w *LayerWriter) Written() int { return w.next }

// Write appends the contents of the next len(data)/PageSize pages of the
// layer (in the order given to NewLayer). All-zero pages are recorded in
// the map without data.
func (w *LayerWriter) Write(data []byte) error {
	if w.done {
		return fmt.Errorf("ckpt: write to a finished layer")
	}
	ps := int(w.im.m.PageSize)
	if len(data)%ps != 0 {
		return fmt.Errorf("ckpt: layer write of %d bytes: not a multiple of the page size %d", len(data), ps)
	}
	n := len(data) / ps
	if w.next+n > len(w.pages) {
		return fmt.Errorf("ckpt: layer write of %d pages: only %d of %d left", n, len(w.pages)-w.next, len(w.pages))
	}
	// Runs of non-zero pages go to the file in one write each.
	runStart := -1
	flush := func(end int) error {
		if runStart < 0 {
			return nil
		}
		n, err := w.f.Write(data[runStart*ps : end*ps])
		runStart = -1
		w.written += int64(n)
		return err
	}
	for i := range n {
		page := data[i*ps : (i+1)*ps]
		e := mapEntry{page: w.pages[w.next+i], crc: crc(page)}
		if isZero(page) {
			e.flags = entryZero
			if err := flush(i); err != nil {
				return w.fail(err)
			}
		} else {
			if runStart < 0 {
				runStart = i
			}
			w.dataPages++
		}
		putEntry(w.entries[(w.next+i)*entrySize:], e)
	}
	if err := flush(n); err != nil {
		return w.fail(err)
	}
	w.next += n
	if writebackChunk > 0 && w.written-w.kicked >= writebackChunk {
		w.startWriteback()
	}
	return nil
}

func (w *LayerWriter) fail(err error) error {
	w.Abort()
	return fmt.Errorf("ckpt: write %s: %w", w.path, err)
}

// Abort drops the layer: the image stays as it was.
func (w *LayerWriter) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.stopWriteback()
	w.f.Close()
	os.Remove(w.path)
	w.im.mu.Lock()
	w.im.writing = false
	w.im.mu.Unlock()
}

// Commit makes the layer part of the image, durably and atomically: the
// layer file is completed (map, then header) and fsynced, the directory
// fsynced, then the manifest naming it replaces the old one by rename (and
// the directory is fsynced again). A crash before the rename leaves the
// previous chain; after it, the new one. Layer files no longer in the chain
// are removed afterwards.
func (w *LayerWriter) Commit() (LayerInfo, error) {
	if w.done {
		return LayerInfo{}, fmt.Errorf("ckpt: commit of a finished layer")
	}
	if w.next != len(w.pages) {
		err := fmt.Errorf("ckpt: commit after %d of %d pages", w.next, len(w.pages))
		w.Abort()
		return LayerInfo{}, err
	}
	m := w.im.m
	h := layerHeader{
		pageSize: m.PageSize, seq: w.seq, size: m.Size,
		npages: uint64(len(w.pages)), dataPages: w.dataPages, mapCRC: crc(w.entries),
	}
	if w.base {
		h.flags |= flagBaseLayer
	}
	hdr := h.encode()
	// The data section may be empty (no page, or all zero): pad the file
	// to its full length, which readers check.
	if err := w.f.Truncate(int64(dataOffset(h.npages, h.pageSize) + h.dataPages*uint64(h.pageSize))); err != nil {
		return LayerInfo{}, w.fail(err)
	}
	if _, err := w.f.WriteAt(w.entries, headerSize); err != nil {
		return LayerInfo{}, w.fail(err)
	}
	if _, err := w.f.WriteAt(hdr, 0); err != nil {
		return LayerInfo{}, w.fail(err)
	}
	w.stopWriteback()
	if err := w.f.Sync(); err != nil {
		return LayerInfo{}, w.fail(err)
	}
	st, err := w.f.Stat()
	if err != nil {
		return LayerInfo{}, w.fail(err)
	}
	if err := w.f.Close(); err != nil {
		return LayerInfo{}, w.fail(err)
	}
	if err := syncDir(w.im.dir); err != nil {
		w.Abort()
		return LayerInfo{}, err
	}
	entry := layerEntry{
		Seq: w.seq, File: layerName(w.seq), Pages: h.npages, DataPages: h.dataPages,
		HeaderCRC: crc(hdr[:60]), Base: w.base,
	}
	nm := *m
	nm.NextSeq = w.seq + 1
	if w.replace == 0 {
		nm.Layers = append(slices.Clone(m.Layers), entry)
	} else {
		nm.Layers = append([]layerEntry{entry}, m.Layers[w.replace:]...)
	}
	if err := writeManifest(w.im.dir, &nm); err != nil {
		w.Abort()
		return LayerInfo{}, err
	}
	w.done = true
	w.im.mu.Lock()
	w.im.m = &nm
	w.im.mu.Unlock()
	// Still the only writer: no other layer file is being made.
	w.im.removeUnreferenced(&nm)
	w.im.mu.Lock()
	w.im.writing = false
	w.im.mu.Unlock()
	return LayerInfo{
		Seq: w.seq, File: w.path, Pages: len(w.pages), DataPages: int(w.dataPages),
		Bytes: st.Size(), Base: w.base, Layers: len(nm.Layers),
	}, nil
}

// removeUnreferenced removes layer files m does not name (replaced layers,
// leftovers of a crash) and stale temporary files. Best effort: an open
// reader keeps reading a removed file.
func (im *Image) removeUnreferenced(m *manifest) {
	ents, err := os.ReadDir(im.dir)
	if err != nil {
		return
	}
	keep := map[string]bool{}
	for _, l := range m.Layers {
		keep[l.File] = true
	}
	for _, e := range ents {
		n := e.Name()
		if (strings.HasPrefix(n, layerPrefix) && strings.HasSuffix(n, layerSuffix) && !keep[n]) ||
			(strings.HasPrefix(n, ".") && strings.HasSuffix(n, ".tmp")) {
			os.Remove(filepath.Join(im.dir, n))
		}
	}
}

// maxPageSize is the largest page size an image may have (the base page
// size of every Linux architecture is at most 64 KiB).
const maxPageSize = 64 << 10

var zeroPage = make([]byte, maxPageSize)

// isZero reports whether b is all zero bytes.
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroPage))
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// errWriting is returned by Compact while a layer is being written.
var errWriting = errors.New("ckpt: a layer is being written")
