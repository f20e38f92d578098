package vmtest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// CPIO mode bits (the file type part of st_mode).
const (
	cpioDir     = 0o040000
	cpioFile    = 0o100000
	cpioSymlink = 0o120000
	cpioCharDev = 0o020000
)

// CPIOWriter writes a "newc" (SVR4, no CRC) cpio archive, the format the
// Linux kernel unpacks as an initramfs. Entries are written in the order
// given; a directory must come before what it holds. Close writes the
// trailer. It is not safe for concurrent use.
type CPIOWriter struct {
	w      io.Writer
	off    int64
	ino    uint32
	err    error
	closed bool
}

// NewCPIOWriter returns a writer that writes the archive to w.
func NewCPIOWriter(w io.Writer) *CPIOWriter { return &CPIOWriter{w: w, ino: 1} }

// Dir adds a directory.
func (c *CPIOWriter) Dir(name string, perm fs.FileMode) error {
	return c.entry(name, cpioDir|uint32(perm.Perm()), 2, 0, 0, nil)
}

// File adds a regular file holding data.
func (c *CPIOWriter) File(name string, perm fs.FileMode, data []byte) error {
	return c.entry(name, cpioFile|uint32(perm.Perm()), 1, 0, 0, data)
}

// Symlink adds a symbolic link name → target.
func (c *CPIOWriter) Symlink(name, target string) error {
	return c.entry(name, cpioSymlink|0o777, 1, 0, 0, []byte(target))
}

// CharDev adds a character device node (e.g. /dev/console, 5:1).
func (c *CPIOWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return c.entry(name, cpioCharDev|uint32(perm.Perm()), 1, major, minor, nil)
}

// Close writes the trailer entry. It does not close the underlying writer.
func (c *CPIOWriter) Close() error {
	if c.closed {
		return c.err
	}
	err := c.entry("TRAILER!!!", 0, 1, 0, 0, nil)
	c.closed = true
	return err
}

func (c *CPIOWriter) entry(name string, mode, nlink, rmajor, rminor uint32, data []byte) error {
	if c.err != nil {
		return c.err
	}
	if c.closed {
		return errors.New("vmtest: cpio: write after Close")
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.ContainsRune(name, 0) {
		return fmt.Errorf("vmtest: cpio: bad entry name %q", name)
	}
	if uint64(len(data)) > 0xffffffff {
		return fmt.Errorf("vmtest: cpio: %s: %d bytes is too large for newc", name, len(data))
	}
	ino := c.ino
	if name == "TRAILER!!!" {
		ino = 0
	}
	c.ino++
	// 13 eight-digit hex fields after the magic: ino mode uid gid nlink
	// mtime filesize devmajor devminor rdevmajor rdevminor namesize check.
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write([]byte{0})
	c.pad()
	c.write(data)
	c.pad()
	if c.err != nil {
		return fmt.Errorf("vmtest: cpio: %s: %w", name, c.err)
	}
	return nil
}

func (c *CPIOWriter) write(b []byte) {
	if c.err != nil || len(b) == 0 {
		return
	}
	n, err := c.w.Write(b)
	c.off += int64(n)
	c.err = err
}

// pad aligns the stream to 4 bytes, as newc requires after the name and
// after the data.
func (c *CPIOWriter) pad() {
	if r := c.off % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}
