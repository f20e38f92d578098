package vcore

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

// fakeCore is the core end of the session, as small as the tests need: it
// grants one partition (or refuses), records what the vcore tells it, keeps
// the uffd dups in its own pager and resolves forwarded faults with them.
type fakeCore struct {
	t      *testing.T
	socket string
	grant  wire.ClaimOK
	refuse *wire.Error
	// takeBacks are sent (each with its fd) right after ClaimOK.
	takeBacks []takeBackItem
	// coreContent is what core-owned dataspaces hold, by name.
	coreContent map[string]content.Source
	// locals is what the vcore declared (DataspaceAdd), by subsystem and name.
	locals map[dsKey]content.Source

	ln       *wire.Listener
	pgr      *pager.Pager
	cancel   context.CancelFunc
	done     chan struct{}
	stopOnce sync.Once

	mu         sync.Mutex
	claims     []wire.Claim
	uffdAdds   []wire.UffdAdd
	regionAdds []wire.RegionAdd
	regionRems []wire.RegionRemove
	declares   []wire.DataspaceAdd
	removes    []uint64
	forwards   int
	releases   int

	// staleAnswer, when set, has the first Forward resolved but answered
	// only after its region was removed and another attached over it,
	// with EIO: core's answer to a Forward that reaches it after the
	// RegionRemove of its range (a fault raised twice, read late).
	staleAnswer bool
	held        *wire.ForwardDone
	heldAddr    uint64
	heldRemoved bool
	staleSent   uint64 // the seqno of the stale answer, once sent
}

func newFakeCore(t *testing.T, grant wire.ClaimOK) *fakeCore {
	t.Helper()
	return newFakeCoreAt(t, filepath.Join(t.TempDir(), "core.sock"), grant)
}

// set changes the fake core's answers while it serves (under its lock: the
// race detector cannot see that the vcore connects only later).
func (fc *fakeCore) set(f func(fc *fakeCore)) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	f(fc)
}

// newFakeCoreAt starts a fake core on socket (a restarted core reuses the
// path).
func newFakeCoreAt(t *testing.T, socket string, grant wire.ClaimOK) *fakeCore {
	t.Helper()
	fc := &fakeCore{t: t, socket: socket, grant: grant, coreContent: map[string]content.Source{}, locals: map[dsKey]content.Source{}, done: make(chan struct{})}
	var err error
	if fc.pgr, err = pager.New(pager.Options{Threads: 1}); err != nil {
		t.Fatal(err)
	}
	if fc.ln, err = wire.Listen(fc.socket, 0o600, -1, slog.New(slog.DiscardHandler)); err != nil {
		fc.pgr.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	fc.cancel = cancel
	go func() {
		defer close(fc.done)
		fc.ln.Serve(ctx, fc.handle, nil)
	}()
	t.Cleanup(fc.stop)
	return fc
}

// stop closes the socket and the pager (kill -9 of core, as far as the vcore
// can tell). Idempotent.
func (fc *fakeCore) stop() {
	fc.stopOnce.Do(func() {
		fc.cancel()
		<-fc.done
		fc.pgr.Close()
	})
}

func (fc *fakeCore) handle(ctx context.Context, c *wire.Conn) {
	for {
		f, err := c.Recv()
		if err != nil {
			return
		}
		m, err := wire.Decode(f)
		if err != nil {
			f.CloseFDs()
			fc.t.Errorf("fake core: bad message from the vcore: %v", err)
			return
		}
		switch x := m.(type) {
		case *wire.Hello:
			c.SendMsg(&wire.HelloOK{Server: "core", Pid: os.Getpid(), Node: -1, Version: wire.Version})
		case *wire.Claim:
			fc.mu.Lock()
			fc.claims = append(fc.claims, *x)
			refuse, takeBacks, grant := fc.refuse, fc.takeBacks, fc.grant
			fc.mu.Unlock()
			if refuse != nil {
				c.SendMsg(refuse)
				return
			}
			c.SendMsg(&grant)
			for _, tb := range takeBacks {
				if err := c.SendMsg(&tb.msg, tb.fd); err != nil {
					fc.t.Errorf("fake core: TakeBack: %v", err)
				}
			}
		case *wire.UffdAdd:
			fc.mu.Lock()
			fc.uffdAdds = append(fc.uffdAdds, *x)
			fc.mu.Unlock()
			if err := fc.pgr.AddUffd(x.UffdID, linux.NewUffd(f.FDs[0]), x.WorkerPid, x.Serve); err != nil {
				fc.t.Errorf("fake core: hold uffd %d: %v", x.UffdID, err)
				continue
			}
			for _, r := range x.Regions {
				fc.addRegion(x.UffdID, r)
			}
		case *wire.DataspaceAdd:
			var file *os.File
			if len(f.FDs) == 1 {
				file = os.NewFile(uintptr(f.FDs[0]), x.Name)
			}
			src, closer, err := content.Open(x.Content, x.Seed, file)
			if err != nil {
				fc.t.Errorf("fake core: DataspaceAdd %+v: %v", *x, err)
				continue
			}
			if closer != nil {
				fc.t.Cleanup(func() { closer.Close() })
			}
			fc.mu.Lock()
			fc.declares = append(fc.declares, *x)
			fc.locals[dsKey{x.Subsystem, x.Name}] = src
			fc.mu.Unlock()
		case *wire.RegionRemove:
			fc.mu.Lock()
			fc.regionRems = append(fc.regionRems, *x)
			if fc.held != nil && fc.heldAddr >= x.Start && fc.heldAddr-x.Start < x.Length {
				fc.heldRemoved = true
			}
			fc.mu.Unlock()
			fc.pgr.ForgetRange(x.UffdID, uintptr(x.Start), uintptr(x.Length))
		case *wire.RegionAdd:
			fc.mu.Lock()
			fc.regionAdds = append(fc.regionAdds, *x)
			fc.mu.Unlock()
			fc.addRegion(x.UffdID, x.Region)
			fc.mu.Lock()
			var stale *wire.ForwardDone
			if fc.held != nil && fc.heldRemoved && fc.heldAddr >= x.Region.Start && fc.heldAddr-x.Region.Start < x.Region.Length {
				stale, fc.held = fc.held, nil
			}
			fc.mu.Unlock()
			if stale != nil {
				if err := c.SendMsg(stale); err != nil {
					fc.t.Errorf("fake core: stale ForwardDone: %v", err)
				}
				fc.mu.Lock()
				fc.staleSent = stale.SeqNo
				fc.mu.Unlock()
			}
		case *wire.UffdRemove:
			fc.mu.Lock()
			fc.removes = append(fc.removes, x.UffdID)
			fc.mu.Unlock()
			fc.pgr.RemoveUffd(x.UffdID)
		case *wire.Forward:
			fc.mu.Lock()
			fc.forwards++
			fc.mu.Unlock()
			start := time.Now()
			var errno int32
			if err := fc.pgr.Resolve(x.UffdID, uintptr(x.Addr)); err != nil && !errors.Is(err, linux.EEXIST) {
				fc.t.Logf("fake core: resolve %#x: %v", x.Addr, err)
				errno = 1
			}
			fc.mu.Lock()
			hold := fc.staleAnswer && fc.held == nil && fc.staleSent == 0 && errno == 0
			if hold {
				fc.held, fc.heldAddr = &wire.ForwardDone{SeqNo: x.SeqNo, Errno: int32(syscall.EIO)}, x.Addr
			}
			fc.mu.Unlock()
			if hold {
				continue
			}
			c.SendMsg(&wire.ForwardDone{SeqNo: x.SeqNo, Errno: errno, ServeNanos: int64(time.Since(start))})
		case *wire.Release:
			fc.mu.Lock()
			fc.releases++
			fc.mu.Unlock()
			c.SendMsg(&wire.Ack{Of: wire.TypeRelease})
		default:
			f.CloseFDs()
			fc.t.Errorf("fake core: unexpected %s", f.Type)
		}
	}
}

// takeBackItem is a uffd the fake core hands to the vcore.
type takeBackItem struct {
	msg wire.TakeBack
	fd  int
}

// addRegion registers a region on the fake core's dup, with the content core
// would use (its own for core-owned dataspaces, the declared one for local
// dataspaces), replacing what it overlaps as core does.
func (fc *fakeCore) addRegion(id uint64, r wire.Region) {
	fc.mu.Lock()
	src := fc.coreContent[r.Dataspace]
	if !r.Forward {
		if l := fc.locals[dsKey{r.Subsystem, r.Dataspace}]; l != nil {
			src = l
		}
	}
	fc.mu.Unlock()
	if src == nil {
		fc.t.Errorf("fake core: region %+v names a dataspace neither core owns nor the vcore declared", r)
		return
	}
	fc.pgr.ForgetRange(id, uintptr(r.Start), uintptr(r.Length))
	err := fc.pgr.AddRegion(id, pager.Region{Start: uintptr(r.Start), Length: uintptr(r.Length), Dataspace: r.Dataspace, Offset: r.Offset, Content: src})
	// EINVAL/ENOMEM: the worker unmapped the range already (RegionAdd is
	// queued to core, and may arrive after the worker's AttachOK and Close).
	if err != nil && !errors.Is(err, pager.ErrUnknownUffd) && !errors.Is(err, linux.EINVAL) && !errors.Is(err, linux.ENOMEM) {
		fc.t.Errorf("fake core: region %+v: %v", r, err)
	}
}

// snapshot returns copies of what the fake core recorded.
func (fc *fakeCore) snapshot() (claims []wire.Claim, adds []wire.UffdAdd, regions []wire.RegionAdd, removes []uint64, forwards, releases int) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return append(claims, fc.claims...), append(adds, fc.uffdAdds...), append(regions, fc.regionAdds...),
		append(removes, fc.removes...), fc.forwards, fc.releases
}
