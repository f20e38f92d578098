// Package wire is vcored's protocol plumbing: framed binary messages over
// unix stream sockets, with file descriptors passed as SCM_RIGHTS, and a
// listener that serves both that protocol and HTTP+JSON on the same socket.
//
// A connection that begins with the 4-byte Magic ("VCW1") speaks the framed
// protocol; anything else is handed to an http.Server. Every accepted
// connection's peer is checked with SO_PEERCRED before a byte is read.
//
// A frame is an 8-byte little-endian header {u32 payload length, u16 type,
// u16 flags} followed by the payload (at most MaxPayload bytes). The low 4
// bits of flags count the descriptors attached to the frame's first byte (at
// most MaxFDs); the other bits are reserved and must be zero. Messages are
// typed structs (messages.go) with Marshal / Unmarshal; the hot fault-path
// messages (Forward, ForwardDone) have a fixed little-endian layout, the rest
// are JSON. docs/PROTOCOL.md describes every message byte by byte.
//
// This package never imports golang.org/x/sys/unix: socket system calls go
// through internal/linux.
package wire
