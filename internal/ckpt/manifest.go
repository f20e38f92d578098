package ckpt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// manifest is the MANIFEST file: the chain of layers, oldest first. It is
// JSON followed by a line "crc32c XXXXXXXX" over the JSON bytes, and it is
// only ever replaced by rename, so a reader sees the old chain or the new,
// never a mix.
type manifest struct {
	Version  int          `json:"version"`
	PageSize uint32       `json:"page_size"`
	Size     uint64       `json:"size"`     // dataspace size in bytes
	NextSeq  uint64       `json:"next_seq"` // sequence number of the next layer file
	Layers   []layerEntry `json:"layers"`   // oldest first
}

// layerEntry names one layer of the chain.
type layerEntry struct {
	Seq       uint64 `json:"seq"`
	File      string `json:"file"`
	Pages     uint64 `json:"pages"`      // map entries
	DataPages uint64 `json:"data_pages"` // pages with data (not all-zero)
	HeaderCRC uint32 `json:"header_crc"` // the layer header's own checksum: ties the entry to the file
	Base      bool   `json:"base,omitempty"`
}

const manifestVersion = 1

func (m *manifest) encode() ([]byte, error) {
	j, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	j = append(j, '\n')
	return append(j, fmt.Sprintf("crc32c %08x\n", crc(j))...), nil
}

func decodeManifest(b []byte) (*manifest, error) {
	i := bytes.LastIndex(bytes.TrimRight(b, "\n"), []byte("\ncrc32c "))
	if i < 0 {
		return nil, fmt.Errorf("%w: %s has no checksum line (torn write?)", ErrCorrupt, manifestName)
	}
	body, tail := b[:i+1], strings.TrimSpace(string(b[i+1:]))
	want, err := strconv.ParseUint(strings.TrimPrefix(tail, "crc32c "), 16, 32)
	if err != nil {
		return nil, fmt.Errorf("%w: %s checksum line %q", ErrCorrupt, manifestName, tail)
	}
	if got := crc(body); got != uint32(want) {
		return nil, fmt.Errorf("%w: %s checksum %08x, computed %08x", ErrCorrupt, manifestName, want, got)
	}
	var m manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, manifestName, err)
	}
	if m.Version != manifestVersion {
		return nil, fmt.Errorf("ckpt: %s version %d, this build reads %d", manifestName, m.Version, manifestVersion)
	}
	if m.PageSize == 0 || m.PageSize > maxPageSize || m.PageSize&(m.PageSize-1) != 0 || m.Size%uint64(m.PageSize) != 0 {
		return nil, fmt.Errorf("%w: %s: page size %d, size %d", ErrCorrupt, manifestName, m.PageSize, m.Size)
	}
	for _, l := range m.Layers {
		if l.File != layerName(l.Seq) || l.Seq >= m.NextSeq {
			return nil, fmt.Errorf("%w: %s: layer entry %+v (next seq %d)", ErrCorrupt, manifestName, l, m.NextSeq)
		}
	}
	return &m, nil
}

func readManifest(dir string) (*manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ckpt: %s is not a checkpoint image (no %s): %w", dir, manifestName, err)
	}
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	m, err := decodeManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, dir)
	}
	return m, nil
}

// writeManifest replaces the manifest atomically: write a temporary file,
// fsync it, rename it over MANIFEST, fsync the directory.
func writeManifest(dir string, m *manifest) error {
	b, err := m.encode()
	if err != nil {
		return err
	}
	return writeFileAtomic(dir, manifestName, b)
}

// writeFileAtomic writes name in dir through a temporary file and rename,
// with the fsyncs that make the new content durable before it is visible.
func writeFileAtomic(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, "."+name+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = afterWriteHook("rename " + name)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("ckpt: write %s: %w", filepath.Join(dir, name), err)
	}
	return syncDir(dir)
}

// syncDir makes the directory's entries (a new or renamed file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ckpt: fsync %s: %w", dir, err)
	}
	return nil
}

// afterWriteHook, when set (tests only), runs before each rename that
// commits something; an error from it stops the commit there, as a crash
// at that point would.
var afterWriteHook = func(string) error { return nil }
