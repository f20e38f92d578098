package linux

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ucred is the identity of the process at the other end of a unix socket,
// as the kernel recorded it when the connection was made (SO_PEERCRED).
type Ucred struct {
	Pid int // process id of the peer
	Uid int // effective user id of the peer
	Gid int // effective group id of the peer
}

// ErrControlTruncated is returned by RecvMsg when the kernel had to drop
// ancillary data (file descriptors) because the control buffer was too
// small (MSG_CTRUNC). The dropped descriptors are closed by the kernel.
var ErrControlTruncated = errors.New("linux: control message truncated (too many file descriptors)")

// PeerCred returns the credentials of the peer of a connected unix socket.
func PeerCred(c *net.UnixConn) (Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return Ucred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var (
		uc   *unix.Ucred
		gerr error
	)
	if err := rc.Control(func(fd uintptr) {
		uc, gerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Ucred{}, fmt.Errorf("peer credentials: %w", err)
	}
	if gerr != nil {
		return Ucred{}, sysErr("getsockopt SO_PEERCRED", gerr)
	}
	return Ucred{Pid: int(uc.Pid), Uid: int(uc.Uid), Gid: int(uc.Gid)}, nil
}

// UnixRights encodes file descriptors as an SCM_RIGHTS control message,
// ready to pass as the oob argument of (*net.UnixConn).WriteMsgUnix.
// It returns nil for no descriptors.
func UnixRights(fds ...int) []byte {
	if len(fds) == 0 {
		return nil
	}
	return unix.UnixRights(fds...)
}

// RightsSpace is the control-buffer size needed to receive n descriptors.
func RightsSpace(n int) int { return unix.CmsgSpace(n * 4) }

// ParseUnixRights extracts the file descriptors carried by SCM_RIGHTS
// control messages in oob. Control messages of other kinds are ignored.
// On a malformed buffer it closes every descriptor it already found and
// returns an error: the caller owns the returned descriptors only on success.
func ParseUnixRights(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, sysErr("parse control message", err)
	}
	var fds []int
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(m)
		if err != nil {
			CloseFDs(fds)
			return nil, sysErr("parse SCM_RIGHTS", err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// CloseFDs closes every descriptor in fds, ignoring errors. It is meant for
// cleanup paths that drop descriptors received from a peer.
func CloseFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
	}
}

// RecvMsg reads once from a connected unix socket with recvmsg(2), waiting
// (through Go's poller, so deadlines set on c apply) until data is
// available. flags are extra MSG_* flags (e.g. MSG_PEEK); MSG_CMSG_CLOEXEC
// is always added so received descriptors never leak into a child across
// exec. n is the number of data bytes read (0 with a nil error means the
// peer closed the connection) and oobn the number of control bytes. If the
// kernel truncated the control data, RecvMsg closes whatever descriptors
// did arrive and returns ErrControlTruncated.
func RecvMsg(c *net.UnixConn, p, oob []byte, flags int) (n, oobn int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, fmt.Errorf("recvmsg: %w", err)
	}
	var (
		rflags int
		rerr   error
	)
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, oobn, rflags, _, rerr = unix.Recvmsg(int(fd), p, oob, flags|unix.MSG_CMSG_CLOEXEC)
			if rerr == unix.EINTR {
				continue
			}
			return rerr != unix.EAGAIN
		}
	})
	if err != nil {
		return 0, 0, fmt.Errorf("recvmsg: %w", err)
	}
	if rerr != nil {
		return 0, 0, sysErr("recvmsg", rerr)
	}
	if rflags&unix.MSG_CTRUNC != 0 {
		if fds, perr := ParseUnixRights(oob[:oobn]); perr == nil {
			CloseFDs(fds)
		}
		return n, 0, ErrControlTruncated
	}
	return n, oobn, nil
}

// RecvPeek waits until len(b) bytes can be read from c, or the peer closes
// the connection, or c's read deadline passes, and copies them into b
// without consuming them (MSG_PEEK). It returns how many bytes it saw:
// fewer than len(b) only together with an error (io.EOF-like closure is
// reported as n < len(b) and ErrPeerClosed).
func RecvPeek(c *net.UnixConn, b []byte) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peek: %w", err)
	}
	var (
		n    int
		rerr error
	)
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, _, rerr = unix.Recvfrom(int(fd), b, unix.MSG_PEEK)
			switch {
			case rerr == unix.EINTR:
				continue
			case rerr == unix.EAGAIN:
				return false // nothing yet: wait for readability
			case rerr != nil:
				return true
			case n == 0:
				return true // orderly shutdown by the peer
			case n < len(b):
				// Part of what we need is here; wait for the next
				// arrival (the poller is edge-triggered), then look again.
				return false
			}
			return true
		}
	})
	if err != nil {
		return n, fmt.Errorf("peek: %w", err)
	}
	if rerr != nil {
		return 0, sysErr("recvfrom MSG_PEEK", rerr)
	}
	if n < len(b) {
		return n, ErrPeerClosed
	}
	return n, nil
}

// ErrPeerClosed is returned by RecvPeek when the peer closed the connection
// before sending enough bytes.
var ErrPeerClosed = errors.New("linux: peer closed the connection")

// SendNow writes p to a connected unix socket (rc: its SyscallConn) with one sendmsg(2) that does
// not wait: where the socket cannot take the data at once it returns
// EAGAIN having written nothing. It may write part of p (n < len(p)); the
// caller writes the rest. No descriptors are attached.
func SendNow(rc syscall.RawConn, p []byte) (n int, err error) {
	var serr error
	err = rc.Write(func(fd uintptr) bool {
		for {
			n, serr = unix.SendmsgN(int(fd), p, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			if serr != unix.EINTR {
				return true // written or not: never wait here
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("sendmsg: %w", err)
	}
	if serr != nil {
		return 0, sysErr("sendmsg", serr)
	}
	return n, nil
}

// Readiness tells, without waiting, whether a socket has data, an end of
// stream or an error to read: one recv(2) with MSG_PEEK|MSG_DONTWAIT per
// Ready. It does not allocate (a poll loop calls it back to back). Not safe
// for concurrent use.
type Readiness struct {
	rc    syscall.RawConn
	b     [1]byte
	ready bool
	check func(fd uintptr) bool
}

// NewReadiness returns a Readiness for the socket rc (a SyscallConn).
func NewReadiness(rc syscall.RawConn) *Readiness {
	r := &Readiness{rc: rc}
	r.check = func(fd uintptr) bool {
		// recvfrom(2) directly: unix.Recvfrom allocates a sockaddr per call.
		_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&r.b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		r.ready = errno != unix.EAGAIN && errno != unix.EINTR
		return true
	}
	return r
}

// Ready reports whether the socket is readable now; a closed socket is not.
func (r *Readiness) Ready() bool {
	r.ready = false
	if err := r.rc.Read(r.check); err != nil {
		return false
	}
	return r.ready
}
