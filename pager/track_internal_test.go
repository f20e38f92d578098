package pager

import (
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
)

// TestSyncTrackEpochRace: with sync write tracking, a checkpoint's
// TakeWritten may run after the pager recorded a written page and before
// it lifted the protection that lets the write through. The write lands
// after that epoch was handed out, so the next epoch must have the page
// too — else it is lost from every later checkpoint (the page stays
// unprotected). Both ways a page gets written: a write-protect fault on a
// present page, and a missing-page fault that is a write. (A stale fault
// the kernel raised again may add pages: the check is that page 2 is in
// the second epoch.)
func TestSyncTrackEpochRace(t *testing.T) {
	for _, missing := range []bool{false, true} {
		name := "wp-fault"
		if missing {
			name = "missing-write"
		}
		t.Run(name, func(t *testing.T) { syncTrackEpochRace(t, missing) })
	}
}

func syncTrackEpochRace(t *testing.T, missing bool) {
	u, err := linux.OpenUffd()
	if err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	p, err := New(Options{SyncWriteTracking: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.AddUffd(1, u, 0, true); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	mem, err := linux.Mmap(4*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	if err := p.AddRegion(1, Region{Start: base, Length: uintptr(len(mem)), Dataspace: "t", Content: content.Pattern(3), Track: true}); err != nil {
		t.Fatal(err)
	}
	defer p.RemoveRegion(1, base)
	if !missing {
		_ = *(*byte)(unsafe.Pointer(&mem[2*ps])) // read: copied in protected
	}
	if got, err := p.TakeWritten(1, base, uintptr(len(mem))); err != nil || len(got) != 0 {
		t.Fatalf("before the write: %v, %v", got, err)
	}
	inHook := make(chan struct{})
	proceed := make(chan struct{})
	hook := func(addr uintptr) {
		if addr == base+uintptr(2*ps) {
			close(inHook)
			<-proceed
		}
	}
	syncTrackHook.Store(&hook)
	defer syncTrackHook.Store(nil)
	done := make(chan struct{})
	go func() {
		mem[2*ps+8] = 7
		close(done)
	}()
	select {
	case <-inHook:
	case <-time.After(60 * time.Second):
		t.Fatal("the write never reached the pager")
	}
	// The checkpoint comes between the record and the lift.
	first, err := p.TakeWritten(1, base, uintptr(len(mem)))
	if err != nil {
		t.Fatal(err)
	}
	close(proceed)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the write never completed")
	}
	second, err := p.TakeWritten(1, base, uintptr(len(mem)))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(second, 2) {
		t.Fatalf("epochs %v then %v: the write that landed after the first was handed out is missing from the second", first, second)
	}
	if mem[2*ps+8] != 7 {
		t.Fatal("write lost")
	}
}
