package vcore

import (
	"bytes"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"unsafe"

	"github.com/vcored/vcored/internal/ckpt"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"

	"net/http/httptest"
	"strings"
	"testing"
)

// TestCheckpointHandlerNeedsRoot: a request whose peer is not known to be
// root is refused before anything happens (the VCore here has nothing set
// up: reaching past the check would crash).
func TestCheckpointHandlerNeedsRoot(t *testing.T) {
	v := &VCore{}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/v1/subsystems/x/checkpoint", nil)
	v.handleCheckpoint(rec, req)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "only root") {
		t.Fatalf("no peer credentials: %d %q, want 403", rec.Code, rec.Body.String())
	}
}

// fakeTracker hands out a fixed list of dirty pages once per call.
type fakeTracker struct{ epochs [][]uint64 }

func (f *fakeTracker) Dirty() ([]uint64, error) {
	if len(f.epochs) == 0 {
		return nil, nil
	}
	d := f.epochs[0]
	f.epochs = f.epochs[1:]
	return d, nil
}
func (f *fakeTracker) Close() error { return nil }

// TestCheckpointRescanAfterFailure: when writing a layer fails after the
// tracker handed out (and re-protected) the dirty pages, they are not
// lost: the next checkpoint stores every present page.
func TestCheckpointRescanAfterFailure(t *testing.T) {
	ps := linux.PageSize()
	mem, err := linux.Mmap(4*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	for i := range mem {
		mem[i] = byte(i / ps * 3)
	}
	dir := filepath.Join(t.TempDir(), "img")
	im, err := ckpt.Create(dir, uint64(len(mem)), ps)
	if err != nil {
		t.Fatal(err)
	}
	p := &persistentDS{name: "m", dir: dir, im: im}
	a := &attachment{
		region: ckpt.Region{Pid: os.Getpid(), Addr: uintptr(unsafe.Pointer(&mem[0])), Size: uint64(len(mem))},
		tr:     &fakeTracker{epochs: [][]uint64{{1}, {}, {}}},
	}
	// The image directory is gone: the layer cannot be written.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, rescan, err := writeAttachment(p, a); err == nil || rescan {
		t.Fatalf("write into a removed directory: rescan %v, err %v", rescan, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The tracker has nothing new, yet page 1 was never stored: the
	// rescan stores every present page.
	info, rescan, err := writeAttachment(p, a)
	if err != nil || !rescan || info.Pages != 4 {
		t.Fatalf("after a failure: %+v, rescan %v, %v; want all 4 present pages", info, rescan, err)
	}
	info, rescan, err = writeAttachment(p, a)
	if err != nil || rescan || info.Pages != 0 {
		t.Fatalf("the checkpoint after: %+v, rescan %v, %v; want an empty layer", info, rescan, err)
	}
	rd, err := ckpt.OpenReader(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got := make([]byte, len(mem))
	if err := rd.Fill(got, 0); err != nil || !bytes.Equal(got, mem) {
		t.Fatalf("image differs from memory: %v", err)
	}
}

// TestRestorePrefetchOrder: with restore_prefetch, a persistent dataspace
// reads its image's touch order when it is opened; a damaged one (torn
// here) is refused with a warning naming it, and no page of it is used.
func TestRestorePrefetchOrder(t *testing.T) {
	ps := linux.PageSize()
	var logs bytes.Buffer
	v := &VCore{cfg: &config.VCore{StateDir: t.TempDir()}, log: slog.New(slog.NewTextHandler(&logs, nil))}
	d := config.Dataspace{Name: "mem", Size: hw.Bytes(16 * ps), Persistent: true, RestorePrefetch: true}
	p, err := v.openPersistent("s", d, content.Zero())
	if err != nil {
		t.Fatal(err)
	}
	if p.order != nil {
		t.Fatalf("a new image has a touch order: %v", p.order)
	}
	want := []uint64{3, 1, 2}
	if err := p.im.WriteTouchOrder(want); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if p, err = v.openPersistent("s", d, content.Zero()); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if !slices.Equal(p.order, want) {
		t.Fatalf("order %v, want %v", p.order, want)
	}
	// Torn: the last byte of the checksum is gone.
	path := filepath.Join(p.dir, "TOUCH-ORDER")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b[:len(b)-1], 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err = v.openPersistent("s", d, content.Zero()); err != nil {
		t.Fatalf("a damaged touch order stopped the dataspace: %v", err)
	}
	p.Close()
	if p.order != nil {
		t.Fatalf("damaged touch order used: %v", p.order)
	}
	if l := logs.String(); !strings.Contains(l, "touch order refused") || !strings.Contains(l, "TOUCH-ORDER") {
		t.Fatalf("no warning about the damaged order in the log: %q", l)
	}
	// Without restore_prefetch the order is not read.
	d.RestorePrefetch = false
	if p, err = v.openPersistent("s", d, content.Zero()); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if p.order != nil {
		t.Fatal("order read without restore_prefetch")
	}
}
