package vcore

import (
	"context"
	"errors"
	"sync"

	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
)

// outbox is the queue of messages to core: registrations (UffdAdd,
// RegionAdd, UffdRemove) and forwarded faults, in the order they were made.
// One goroutine (sendLoop) writes them, with the connection's write
// deadline, holding no lock of the vcore: a core that stops reading (SIGSTOP,
// wedged) delays only the messages to core, never a fault served here, an
// Attach or a status request. A write that times out closes the connection;
// the core loop redials, and the resync replays the uffds and pending
// forwards, so nothing queued for a dead connection is needed afterwards.
//
// A forwarded fault skips the queue when it is empty and nobody writes
// (tryForward, writeNow): the pager thread writes the Forward itself if the
// connection takes it at once, saving two goroutine hand-offs (the pager's
// forwarder, sendLoop) on the fault's path.
type outbox struct {
	mu   sync.Mutex
	q    []outItem
	busy bool          // a writer (sendLoop or writeNow) holds the right to write
	wake chan struct{} // cap 1: something was queued
}

// outItem is one message for the connection it was made for.
type outItem struct {
	conn *wire.Conn
	msg  wire.Message
	fd   *linux.Uffd // sent with msg and closed afterwards (UffdAdd), or nil
}

func (o *outbox) push(it outItem) {
	o.mu.Lock()
	if o.wake == nil {
		o.wake = make(chan struct{}, 1)
	}
	o.q = append(o.q, it)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) take() []outItem {
	o.mu.Lock()
	defer o.mu.Unlock()
	q := o.q
	o.q = nil
	return q
}

// claim takes the right to write for the queued messages: nil when there
// are none or another writer has it. release gives it back.
func (o *outbox) claim() []outItem {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.busy || len(o.q) == 0 {
		return nil
	}
	o.busy = true
	q := o.q
	o.q = nil
	return q
}

// claimIdle takes the right to write if nothing is queued and nobody
// writes: what was queued before is then on the wire, so a message written
// now keeps the queue's order.
func (o *outbox) claimIdle() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.busy || len(o.q) > 0 {
		return false
	}
	o.busy = true
	return true
}

// release gives back the right to write, first queueing front (a message
// its holder could not write at once) ahead of what was queued meanwhile,
// and wakes sendLoop if anything waits.
func (o *outbox) release(front *outItem) {
	o.mu.Lock()
	o.busy = false
	if front != nil {
		o.q = append([]outItem{*front}, o.q...)
	}
	pending := len(o.q) > 0
	if pending && o.wake == nil {
		o.wake = make(chan struct{}, 1)
	}
	o.mu.Unlock()
	if pending {
		select {
		case o.wake <- struct{}{}:
		default:
		}
	}
}

func (o *outbox) signal() chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.wake == nil {
		o.wake = make(chan struct{}, 1)
	}
	return o.wake
}

// queueLocked queues m (with fd, which the outbox then owns) for the current
// session with core; without one it is dropped (the resync after the
// reconnect replays the state). Called with v.mu held; no I/O.
func (v *VCore) queueLocked(m wire.Message, fd *linux.Uffd) {
	if v.conn == nil {
		if fd != nil {
			fd.Close()
		}
		return
	}
	v.out.push(outItem{conn: v.conn, msg: m, fd: fd})
}

// sendLoop writes the queued messages until ctx ends.
func (v *VCore) sendLoop(ctx context.Context) {
	wake := v.out.signal()
	defer func() {
		for _, it := range v.out.take() {
			if it.fd != nil {
				it.fd.Close()
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		}
		for q := v.out.claim(); q != nil; q = v.out.claim() {
			for _, it := range q {
				v.write(it)
			}
			v.out.release(nil)
		}
	}
}

// writeNow writes m on conn from the calling goroutine, which claimed the
// right to write (claimIdle): nothing queued before m is left unwritten.
// If the connection does not take the frame at once m is queued, ahead of
// what was queued meanwhile, for sendLoop. It never waits: the caller may
// be a pager thread.
func (v *VCore) writeNow(conn *wire.Conn, m wire.Message) {
	sent, err := conn.TrySendMsg(m)
	if err != nil && !errors.Is(err, wire.ErrClosed) {
		v.log.Warn("send to core failed; dropping the connection (it is redialed and the state replayed)", "type", m.Type(), "err", err)
		conn.Close()
	}
	if sent || err != nil {
		v.out.release(nil)
		return
	}
	v.out.release(&outItem{conn: conn, msg: m})
}

// write sends one queued message. A failure other than a closed connection
// (a write deadline: core does not read) closes the connection, which makes
// the core loop redial and resync.
func (v *VCore) write(it outItem) {
	var err error
	if it.fd != nil {
		err = it.conn.SendMsg(it.msg, it.fd.FD())
		it.fd.Close()
	} else {
		err = it.conn.SendMsg(it.msg)
	}
	if err == nil || errors.Is(err, wire.ErrClosed) {
		return
	}
	v.log.Warn("send to core failed; dropping the connection (it is redialed and the state replayed)", "type", it.msg.Type(), "err", err)
	it.conn.Close()
}
