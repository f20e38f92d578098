package linux

import (
	"fmt"
	"io"
	"unsafe"

	"golang.org/x/sys/unix"
)

// EFAULT is the errno of a read of memory the target does not map.
const EFAULT = unix.EFAULT

// iovMax is UIO_MAXIOV, the most iovecs one process_vm_readv takes per side.
const iovMax = 1024

// RemoteSeg is one piece of another process's memory to read: len(Buf)
// bytes at Addr.
type RemoteSeg struct {
	Addr uintptr
	Buf  []byte
}

// ReadRemote reads every segment from the address space of pid with
// process_vm_readv(2), up to 1024 segments per system call. The target
// keeps running unless the caller stopped it (a frozen cgroup); a page it
// writes meanwhile may be read before or after the write. A segment the
// target does not map gives an error naming its address (EFAULT), with the
// segments before it read. Reading another process's memory needs
// ptrace-attach access to it (root has it).
func ReadRemote(pid int, segs []RemoteSeg) error {
	local := make([]unix.Iovec, 0, min(len(segs), iovMax))
	remote := make([]unix.RemoteIovec, 0, min(len(segs), iovMax))
	for len(segs) > 0 {
		batch := segs[:min(len(segs), iovMax)]
		local, remote = local[:0], remote[:0]
		total := 0
		for _, s := range batch {
			if len(s.Buf) == 0 {
				continue
			}
			var iov unix.Iovec
			iov.Base = unsafe.SliceData(s.Buf)
			iov.SetLen(len(s.Buf))
			local = append(local, iov)
			remote = append(remote, unix.RemoteIovec{Base: s.Addr, Len: len(s.Buf)})
			total += len(s.Buf)
		}
		n, err := unix.ProcessVMReadv(pid, local, remote, 0)
		if err != nil {
			addr := uintptr(0)
			if len(remote) > 0 {
				addr = remote[0].Base
			}
			return fmt.Errorf("process_vm_readv pid %d at %#x: %w", pid, addr, err)
		}
		if n < total {
			// A partial transfer (a segment the target does not map):
			// skip what was read and go again from the first byte unread,
			// which then reports its own error.
			i := 0
			for ; i < len(batch) && n >= len(batch[i].Buf); i++ {
				n -= len(batch[i].Buf)
			}
			if n == 0 && i == 0 {
				return fmt.Errorf("process_vm_readv pid %d at %#x: %w", pid, batch[0].Addr, io.ErrUnexpectedEOF)
			}
			rest := make([]RemoteSeg, 0, len(segs)-i)
			rest = append(rest, RemoteSeg{Addr: batch[i].Addr + uintptr(n), Buf: batch[i].Buf[n:]})
			segs = append(rest, segs[i+1:]...)
			continue
		}
		segs = segs[len(batch):]
	}
	return nil
}
