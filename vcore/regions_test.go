package vcore

import (
	"context"
	"os"
	"syscall"
	"testing"
	"unsafe"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
)

const keeperSubsystem = `
[[subsystem]]
name = "keeper"
command = ["sleep", "infinity"]
memory = "32MiB"
[[subsystem.dataspace]]
name = "data"
size = "1MiB"
content = "pattern"
seed = 5
`

// A worker that unmaps part of a region without a Detach: the pager reads
// the UNMAP event and cuts its table, and core is told (RegionRemove of the
// old region, RegionAdd of the piece that remains), so core never serves
// the unmapped range from the old dataspace after a failover.
func TestUnmapWithoutDetachTellsCore(t *testing.T) {
	e := newTestEnv(t)
	ps := os.Getpagesize()
	length := 16 * ps
	mem, err := linux.Mmap(length, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	u, err := linux.OpenUffd()
	if err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	defer u.Close()
	addr := uint64(uintptr(unsafe.Pointer(unsafe.SliceData(mem))))
	id := uint64(os.Getpid())<<32 | 9
	e.core.set(func(fc *fakeCore) {
		fc.takeBacks = []takeBackItem{{fd: u.FD(), msg: wire.TakeBack{UffdID: id, WorkerPid: os.Getpid(), Regions: []wire.Region{
			{Start: addr, Length: uint64(length), Dataspace: "data", Subsystem: "keeper"},
		}}}}
	})
	cfg := e.config(t, keeperSubsystem)
	e.startVCore(t, cfg)
	waitFor(t, "the uffd to be taken back", func() bool {
		var p api.Pager
		if err := api.NewClient(cfg.Socket).Get(context.Background(), "/v1/pager", &p); err != nil {
			t.Fatal(err)
		}
		return p.Uffds == 1 && p.TrackedPages == 16
	})
	// Unmap the upper half (munmap returns once the vcore's pager read the
	// UNMAP event).
	half := uintptr(length / 2)
	if _, _, errno := syscall.Syscall(syscall.SYS_MUNMAP, uintptr(addr)+half, half, 0); errno != 0 {
		t.Fatal(errno)
	}
	waitFor(t, "core told about the unmap", func() bool {
		e.core.mu.Lock()
		defer e.core.mu.Unlock()
		return len(e.core.regionRems) > 0 && len(e.core.regionAdds) > 0
	})
	_, _, adds, _, _, _ := e.core.snapshot()
	e.core.mu.Lock()
	rems := append([]wire.RegionRemove(nil), e.core.regionRems...)
	e.core.mu.Unlock()
	if len(rems) != 1 || rems[0] != (wire.RegionRemove{UffdID: id, Start: addr, Length: uint64(length)}) {
		t.Errorf("RegionRemoves %+v, want the whole old region", rems)
	}
	last := adds[len(adds)-1]
	want := wire.Region{Start: addr, Length: uint64(half), Dataspace: "data", Subsystem: "keeper"}
	if last.UffdID != id || last.Region != want {
		t.Errorf("last RegionAdd %+v, want the lower half %+v", last, want)
	}
}
