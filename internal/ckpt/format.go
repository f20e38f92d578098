// Package ckpt stores the memory of a dataspace so that it outlives the
// process that wrote it: a checkpoint image is a directory holding a chain
// of layers — a base layer and incremental layers with the pages written
// since the one before — and a manifest naming the chain. docs/CHECKPOINT.md
// describes the format; this package writes it (atomically: a crash leaves
// the previous checkpoint intact), reads it back as a content.Source (each
// page from the newest layer that has it, zero where none has), compacts a
// long chain into fewer layers, and refuses a torn or corrupt layer with an
// error naming it — a bad page is never served.
package ckpt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// File names inside an image directory.
const (
	manifestName = "MANIFEST"
	touchName    = "TOUCH-ORDER"
	layerPrefix  = "layer-"
	layerSuffix  = ".ckl"
)

func layerName(seq uint64) string { return fmt.Sprintf("%s%08d%s", layerPrefix, seq, layerSuffix) }

// Layer file layout (little-endian):
//
//	header   64 bytes (layerHeader; its last 4 bytes are the crc32c of the first 60)
//	map      npages × 16 bytes: page index u64, crc32c of the page u32, flags u32
//	padding  to a multiple of the page size
//	data     one page per map entry without entryZero, in map order
const (
	layerMagic    = "VCKLAYR1"
	layerVersion  = 1
	headerSize    = 64
	entrySize     = 16
	entryZero     = 1 << 0 // the page is all zero: no data stored
	flagBaseLayer = 1 << 0 // header flag: a full layer (nothing below it matters)
)

// ErrCorrupt is wrapped by every error about an image that fails its
// checksums or its structure: torn writes, flipped bits, wrong sizes.
var ErrCorrupt = errors.New("ckpt: image corrupt")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// layerHeader is the decoded header of a layer file.
type layerHeader struct {
	pageSize  uint32
	seq       uint64
	size      uint64 // dataspace size in bytes
	npages    uint64 // map entries
	dataPages uint64 // entries with data (not entryZero)
	mapCRC    uint32 // crc32c of the map section
	flags     uint32
}

func (h *layerHeader) encode() []byte {
	b := make([]byte, headerSize)
	copy(b, layerMagic)
	binary.LittleEndian.PutUint32(b[8:], layerVersion)
	binary.LittleEndian.PutUint32(b[12:], h.pageSize)
	binary.LittleEndian.PutUint64(b[16:], h.seq)
	binary.LittleEndian.PutUint64(b[24:], h.size)
	binary.LittleEndian.PutUint64(b[32:], h.npages)
	binary.LittleEndian.PutUint64(b[40:], h.dataPages)
	binary.LittleEndian.PutUint32(b[48:], h.mapCRC)
	binary.LittleEndian.PutUint32(b[52:], h.flags)
	binary.LittleEndian.PutUint32(b[60:], crc(b[:60]))
	return b
}

func decodeHeader(b []byte) (layerHeader, error) {
	var h layerHeader
	if len(b) < headerSize {
		return h, fmt.Errorf("%w: header is %d bytes, want %d", ErrCorrupt, len(b), headerSize)
	}
	if string(b[:8]) != layerMagic {
		return h, fmt.Errorf("%w: bad magic %q", ErrCorrupt, b[:8])
	}
	if got, want := binary.LittleEndian.Uint32(b[60:]), crc(b[:60]); got != want {
		return h, fmt.Errorf("%w: header checksum %#08x, computed %#08x", ErrCorrupt, got, want)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != layerVersion {
		return h, fmt.Errorf("ckpt: layer format version %d, this build reads %d", v, layerVersion)
	}
	h.pageSize = binary.LittleEndian.Uint32(b[12:])
	h.seq = binary.LittleEndian.Uint64(b[16:])
	h.size = binary.LittleEndian.Uint64(b[24:])
	h.npages = binary.LittleEndian.Uint64(b[32:])
	h.dataPages = binary.LittleEndian.Uint64(b[40:])
	h.mapCRC = binary.LittleEndian.Uint32(b[48:])
	h.flags = binary.LittleEndian.Uint32(b[52:])
	return h, nil
}

// dataOffset is where the data section of a layer with npages map entries
// starts: after header and map, rounded up to a page.
func dataOffset(npages uint64, pageSize uint32) uint64 {
	end := headerSize + npages*entrySize
	ps := uint64(pageSize)
	return (end + ps - 1) / ps * ps
}

// mapEntry is one decoded page map entry.
type mapEntry struct {
	page  uint64 // page index in the dataspace
	crc   uint32 // crc32c of the page's bytes
	flags uint32 // entryZero
}

func putEntry(b []byte, e mapEntry) {
	binary.LittleEndian.PutUint64(b, e.page)
	binary.LittleEndian.PutUint32(b[8:], e.crc)
	binary.LittleEndian.PutUint32(b[12:], e.flags)
}

func getEntry(b []byte) mapEntry {
	return mapEntry{
		page:  binary.LittleEndian.Uint64(b),
		crc:   binary.LittleEndian.Uint32(b[8:]),
		flags: binary.LittleEndian.Uint32(b[12:]),
	}
}
