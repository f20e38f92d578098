package ckpt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
)

// TestHelperWorker is not a test: the re-exec'd worker of the dump tests.
// It maps pages pages, registers them for async write protection on its own
// userfaultfd, prints "addr ADDR", then obeys stdin lines: "w PAGE SEED"
// fills a page with Pattern(SEED), "z PAGE" zeroes it; each answered "ok".
func TestHelperWorker(t *testing.T) {
	if os.Getenv("VCORED_CKPT_TEST_HELPER") != "worker" {
		t.Skip("helper process for the dump tests")
	}
	fail := func(err error) { fmt.Println("error", err); os.Exit(1) }
	pages, _ := strconv.Atoi(os.Getenv("VCORED_CKPT_TEST_PAGES"))
	ps := linux.PageSize()
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		fail(err)
	}
	u, err := linux.OpenUffd()
	if err != nil {
		fail(err)
	}
	if _, err := u.API(linux.WPAsyncFeatures); err != nil {
		fail(err)
	}
	base := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(base, uintptr(len(mem)), linux.UFFDIO_REGISTER_MODE_WP); err != nil {
		fail(err)
	}
	fmt.Printf("addr %d\n", base)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) < 2 {
			continue
		}
		p, _ := strconv.Atoi(f[1])
		page := mem[p*ps : (p+1)*ps]
		switch f[0] {
		case "w":
			seed, _ := strconv.ParseUint(f[2], 10, 64)
			content.Pattern(seed).Fill(page, uint64(p*ps))
		case "z":
			clear(page)
		}
		fmt.Println("ok")
	}
	os.Exit(0)
}

type worker struct {
	t     *testing.T
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	r     Region
	pages uint64
}

func startWorker(t *testing.T, pages uint64) *worker {
	t.Helper()
	if !linux.HaveWPAsync() {
		t.Skip("kernel lacks async write protection (Linux 6.7)")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWorker$")
	cmd.Env = append(os.Environ(), "VCORED_CKPT_TEST_HELPER=worker", fmt.Sprintf("VCORED_CKPT_TEST_PAGES=%d", pages))
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &worker{t: t, cmd: cmd, in: in, out: bufio.NewReader(outp), pages: pages}
	t.Cleanup(w.kill)
	line, err := w.out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var addr uintptr
	if _, err := fmt.Sscanf(line, "addr %d", &addr); err != nil {
		t.Fatalf("worker said %q", line)
	}
	w.r = Region{Pid: cmd.Process.Pid, Addr: addr, Size: pages * uint64(linux.PageSize())}
	return w
}

func (w *worker) kill() {
	if w.cmd.ProcessState == nil {
		w.in.Close()
		w.cmd.Process.Kill()
		w.cmd.Wait()
	}
}

func (w *worker) do(format string, args ...any) {
	w.t.Helper()
	fmt.Fprintf(w.in, format+"\n", args...)
	if l, err := w.out.ReadString('\n'); err != nil || l != "ok\n" {
		w.t.Fatalf("worker: %q, %v", l, err)
	}
}

// memory reads the worker's whole region.
func (w *worker) memory() []byte {
	w.t.Helper()
	b := make([]byte, w.r.Size)
	if err := linux.ReadRemote(w.r.Pid, []linux.RemoteSeg{{Addr: w.r.Addr, Buf: b}}); err != nil {
		w.t.Fatal(err)
	}
	return b
}

// imageBytes reads the whole image in dir.
func imageBytes(t *testing.T, dir string) []byte {
	t.Helper()
	r, err := OpenReader(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := make([]byte, r.Size())
	if err := r.Fill(b, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDumpAsyncIncremental(t *testing.T) {
	const pages = 64
	w := startWorker(t, pages)
	ps := uint64(linux.PageSize())
	dir := t.TempDir()
	im, err := Create(dir, w.r.Size, int(ps))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewAsyncTracker(w.r)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	for p := range 10 {
		w.do("w %d 1", p)
	}
	// Full checkpoint: the touched pages. Its epoch starts here.
	if _, err := tr.Dirty(); err != nil {
		t.Fatal(err)
	}
	present, err := PresentPages(w.r)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}; !slices.Equal(present, want) {
		t.Fatalf("present pages %v, want %v", present, want)
	}
	info, err := WriteLayer(im, w.r, present, true)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pages != 10 || info.DataPages != 10 {
		t.Fatalf("full layer %+v", info)
	}
	if !bytes.Equal(imageBytes(t, dir), w.memory()) {
		t.Fatal("image after the full checkpoint differs from the worker's memory")
	}

	// Epoch 2: page 3 written twice, 20 written, 5 zeroed.
	w.do("w 3 2")
	w.do("w 3 3")
	w.do("w 20 2")
	w.do("z 5")
	dirty, err := tr.Dirty()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dirty, []uint64{3, 5, 20}) {
		t.Fatalf("dirty pages %v, want [3 5 20]", dirty)
	}
	info, err = WriteLayer(im, w.r, dirty, false)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pages != 3 || info.DataPages != 2 || info.Layers != 2 {
		t.Fatalf("incremental layer %+v: want 3 pages (one all zero), 2 layers", info)
	}
	want := w.memory()
	if !bytes.Equal(imageBytes(t, dir), want) {
		t.Fatal("image after the incremental checkpoint differs from the worker's memory")
	}
	// An epoch with no write: an empty layer.
	dirty, err = tr.Dirty()
	if err != nil || len(dirty) != 0 {
		t.Fatalf("idle epoch: %v, %v", dirty, err)
	}

	// The worker dies; the image alone restores every page.
	w.kill()
	got := imageBytes(t, dir)
	for p := range uint64(pages) {
		exp := make([]byte, ps)
		switch {
		case p == 3:
			content.Pattern(3).Fill(exp, p*ps)
		case p == 20:
			content.Pattern(2).Fill(exp, p*ps)
		case p < 10 && p != 5:
			content.Pattern(1).Fill(exp, p*ps)
		}
		if !bytes.Equal(got[p*ps:(p+1)*ps], exp) {
			t.Fatalf("restored page %d is wrong", p)
		}
	}
}

func TestDumpRegionMismatch(t *testing.T) {
	im, err := Create(t.TempDir(), 4*uint64(linux.PageSize()), linux.PageSize())
	if err != nil {
		t.Fatal(err)
	}
	r := Region{Pid: os.Getpid(), Addr: 0x10000, Size: 8 * uint64(linux.PageSize())}
	if _, err := WriteLayer(im, r, []uint64{0}, false); err == nil {
		t.Fatal("WriteLayer of a region larger than the image: no error")
	}
	// An unmapped page: the read fails, the image is unchanged.
	mem, err := linux.Mmap(4*linux.PageSize(), linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	r = Region{Pid: os.Getpid(), Addr: uintptr(unsafe.Pointer(&mem[0])), Size: uint64(len(mem))}
	linux.Munmap(mem)
	if _, err := WriteLayer(im, r, []uint64{1}, false); !errors.Is(err, linux.EFAULT) {
		t.Fatalf("WriteLayer of unmapped memory: %v, want EFAULT", err)
	}
	if im.Layers() != 0 {
		t.Fatal("a failed WriteLayer added a layer")
	}
}

// TestDumpSyncTracker: the fallback tracker in this process: WP faults
// served by a goroutine that calls Fault.
func TestDumpSyncTracker(t *testing.T) {
	u, err := linux.OpenUffd()
	if err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	defer u.Close()
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	ps := linux.PageSize()
	const pages = 16
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	for p := range pages {
		content.Pattern(1).Fill(mem[p*ps:(p+1)*ps], uint64(p*ps))
	}
	base := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(base, uintptr(len(mem)), linux.UFFDIO_REGISTER_MODE_WP); err != nil {
		t.Fatal(err)
	}
	r := Region{Pid: os.Getpid(), Addr: base, Size: uint64(len(mem))}
	tr, err := NewSyncTracker(u, r)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := linux.NewEpoll()
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	stop, err := linux.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer stop.Close()
	ep.Add(u.FD(), linux.EPOLLIN, 1)
	ep.Add(stop.FD(), linux.EPOLLIN, 2)
	served := make(chan error, 1)
	faults := 0
	go func() {
		evs := make([]linux.EpollEvent, 2)
		msgs := make([]linux.UffdMsg, 8)
		for {
			n, err := ep.Wait(evs, -1)
			if err != nil {
				served <- err
				return
			}
			for _, ev := range evs[:n] {
				if ev.Token() == 2 {
					served <- nil
					return
				}
				k, err := u.ReadMsgs(msgs)
				if errors.Is(err, linux.EAGAIN) {
					continue
				}
				if err != nil {
					served <- err
					return
				}
				for _, m := range msgs[:k] {
					faults++
					if m.PagefaultFlags()&linux.UFFD_PAGEFAULT_FLAG_WP == 0 {
						served <- fmt.Errorf("not a WP fault: %s", m.String())
						return
					}
					if err := tr.Fault(m.PagefaultAddr()); err != nil {
						served <- err
						return
					}
				}
			}
		}
	}()
	im, err := Create(t.TempDir(), r.Size, ps)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteLayer(im, r, []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, true); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		content.Pattern(2).Fill(mem[4*ps:5*ps], uint64(4*ps))
		content.Pattern(2).Fill(mem[4*ps:5*ps], uint64(4*ps)) // twice
		content.Pattern(2).Fill(mem[9*ps:10*ps], uint64(9*ps))
		close(done)
	}()
	select {
	case <-done:
	case err := <-served:
		t.Fatalf("fault server stopped: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("writes never completed")
	}
	dirty, err := tr.Dirty()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(dirty, []uint64{4, 9}) {
		t.Fatalf("dirty %v, want [4 9]", dirty)
	}
	info, err := WriteLayer(im, r, dirty, false)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pages != 2 {
		t.Fatalf("layer %+v", info)
	}
	if !bytes.Equal(imageBytes(t, im.Dir()), mem) {
		t.Fatal("image differs from memory")
	}
	// Re-protected: the next write faults again.
	content.Pattern(3).Fill(mem[4*ps:5*ps], uint64(4*ps))
	if dirty, err := tr.Dirty(); err != nil || !slices.Equal(dirty, []uint64{4}) {
		t.Fatalf("next epoch: %v, %v", dirty, err)
	}
	stop.Signal()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if faults < 3 {
		t.Errorf("%d WP faults, want at least 3 (first write per page per epoch)", faults)
	}
}

// selfRegion maps pages pages in this process, each filled with
// Pattern(1).
func selfRegion(t *testing.T, pages int) (Region, []byte) {
	t.Helper()
	ps := linux.PageSize()
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { linux.Munmap(mem) })
	content.Pattern(1).Fill(mem, 0)
	return Region{Pid: os.Getpid(), Addr: uintptr(unsafe.Pointer(&mem[0])), Size: uint64(len(mem))}, mem
}

// TestSnapshotIsACopy: what Snap read is what the layer holds, whatever
// the process writes after it (a checkpoint lets the worker run before
// writing the layer); several snapshots of one region make one layer, each
// page from the newest snapshot that has it.
func TestSnapshotIsACopy(t *testing.T) {
	const pages = 16
	r, mem := selfRegion(t, pages)
	ps := linux.PageSize()
	fill := func(p int, seed uint64) { content.Pattern(seed).Fill(mem[p*ps:(p+1)*ps], uint64(p*ps)) }
	dir := t.TempDir()
	im, err := Create(dir, r.Size, ps)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteLayer(im, r, allPages(pages), true); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(mem)

	fill(1, 2)
	fill(3, 2)
	clear(mem[5*ps : 6*ps])
	older, err := Snap(r, []uint64{1, 3, 5})
	if err != nil {
		t.Fatal(err)
	}
	defer older.Release()
	copy(want[1*ps:], mem[1*ps:2*ps])
	copy(want[5*ps:], mem[5*ps:6*ps])
	fill(3, 3) // again: the newer snapshot has it
	fill(7, 3)
	newer, err := Snap(r, []uint64{3, 7})
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Release()
	copy(want[3*ps:], mem[3*ps:4*ps])
	copy(want[7*ps:], mem[7*ps:8*ps])
	// Written after the snapshots: in neither.
	fill(1, 4)
	fill(3, 4)
	fill(9, 4)
	info, err := WriteSnapshots(im, false, older, newer)
	if err != nil {
		t.Fatal(err)
	}
	if info.Pages != 4 || info.DataPages != 3 || info.Layers != 2 {
		t.Fatalf("layer %+v: want pages 1 3 5 7, 5 all zero, on top of the base", info)
	}
	if got := imageBytes(t, dir); !bytes.Equal(got, want) {
		for p := range pages {
			if !bytes.Equal(got[p*ps:(p+1)*ps], want[p*ps:(p+1)*ps]) {
				t.Errorf("page %d of the image is not what the snapshots read", p)
			}
		}
	}
	// One snapshot, and an empty one.
	s, err := Snap(r, []uint64{9})
	if err != nil {
		t.Fatal(err)
	}
	copy(want[9*ps:], mem[9*ps:10*ps])
	fill(9, 5)
	if _, err := WriteSnapshot(im, s, false); err != nil {
		t.Fatal(err)
	}
	s.Release()
	if s.Data != nil {
		t.Error("Release left the data")
	}
	empty, err := Snap(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := WriteSnapshots(im, false, empty, empty); err != nil || info.Pages != 0 {
		t.Fatalf("empty snapshots: %+v, %v", info, err)
	}
	if !bytes.Equal(imageBytes(t, dir), want) {
		t.Fatal("image differs from the snapshots")
	}
}

// TestSnapshotBadInput: bad page lists and a snapshot whose data does not
// match its pages are refused, and the image stays as it was (and
// writable).
func TestSnapshotBadInput(t *testing.T) {
	const pages = 8
	r, mem := selfRegion(t, pages)
	ps := linux.PageSize()
	for _, bad := range [][]uint64{{2, 1}, {1, 1}, {pages}} {
		if s, err := Snap(r, bad); err == nil {
			s.Release()
			t.Errorf("Snap(%v): no error", bad)
		}
	}
	dir := t.TempDir()
	im, err := Create(dir, r.Size, ps)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Snap(r, []uint64{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release()
	short := &Snapshot{Pages: s.Pages, Data: s.Data[:ps]}
	if _, err := WriteSnapshots(im, false, s, short); err == nil {
		t.Fatal("a snapshot with too little data: no error")
	}
	if _, err := WriteSnapshot(im, &Snapshot{Pages: []uint64{1, 0}, Data: make([]byte, 2*ps)}, false); err == nil {
		t.Fatal("a snapshot with descending pages: no error")
	}
	if im.Layers() != 0 {
		t.Fatal("a refused snapshot added a layer")
	}
	if _, err := WriteSnapshot(im, s, false); err != nil {
		t.Fatalf("after the refusals: %v", err)
	}
	want := make([]byte, len(mem))
	copy(want, mem[:2*ps])
	if !bytes.Equal(imageBytes(t, dir), want) {
		t.Fatal("image differs")
	}
	// Unreadable memory: EFAULT, no snapshot. (Not unmapped memory: the
	// snapshot's own buffer could be mapped at its address.)
	none, err := linux.Mmap(ps, linux.PROT_NONE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(none)
	nr := Region{Pid: os.Getpid(), Addr: uintptr(unsafe.Pointer(&none[0])), Size: uint64(ps)}
	if s, err := Snap(nr, []uint64{0}); !errors.Is(err, linux.EFAULT) {
		t.Fatalf("Snap of unreadable memory: %+v, %v, want EFAULT", s, err)
	}
}

// TestStageLayer: a staged layer changes nothing until its Commit; an
// Abort leaves the image as it was and no file behind; the pages are
// those at the staging, whatever is written before the Commit.
func TestStageLayer(t *testing.T) {
	const pages = 8
	r, mem := selfRegion(t, pages)
	ps := linux.PageSize()
	dir := t.TempDir()
	im, err := Create(dir, r.Size, ps)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteLayer(im, r, allPages(pages), true); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(mem)
	content.Pattern(2).Fill(mem[2*ps:3*ps], uint64(2*ps))
	w, err := StageLayer(im, r, []uint64{2}, false)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(imageBytes(t, dir), want) || im.Layers() != 1 {
		t.Fatal("a staged layer changed the image")
	}
	w.Abort()
	if files, _ := filepath.Glob(filepath.Join(dir, "layer-*")); len(files) != 1 {
		t.Fatalf("layer files after an abort: %v", files)
	}
	w, err = StageLayer(im, r, []uint64{2}, false)
	if err != nil {
		t.Fatal(err)
	}
	copy(want[2*ps:], mem[2*ps:3*ps])
	content.Pattern(3).Fill(mem[2*ps:3*ps], uint64(2*ps)) // after the staging
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(imageBytes(t, dir), want) || im.Layers() != 2 {
		t.Fatal("the committed layer is not the staged pages")
	}
}

func TestUnion(t *testing.T) {
	for _, c := range []struct{ a, b, want []uint64 }{
		{nil, nil, []uint64{}},
		{[]uint64{1, 3}, nil, []uint64{1, 3}},
		{nil, []uint64{2}, []uint64{2}},
		{[]uint64{1, 3, 5}, []uint64{2, 3, 6}, []uint64{1, 2, 3, 5, 6}},
		{[]uint64{4}, []uint64{1, 2, 3}, []uint64{1, 2, 3, 4}},
	} {
		if got := Union(c.a, c.b); !slices.Equal(got, c.want) {
			t.Errorf("Union(%v, %v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

// TestStageLayerFailsLate: a page that cannot be read several batches
// into a big layer (its memory inaccessible) fails the staging with the read's
// error, after earlier batches were written: the layer is dropped (no
// file left) and the image is unchanged; the next layer can be written.
func TestStageLayerFailsLate(t *testing.T) {
	ps := linux.PageSize()
	pages := 3*dumpBatch + 10
	mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(mem)
	content.Pattern(5).Fill(mem, 0)
	r := Region{Pid: os.Getpid(), Addr: uintptr(unsafe.Pointer(&mem[0])), Size: uint64(len(mem))}
	dir := t.TempDir()
	im, err := Create(dir, r.Size, ps)
	if err != nil {
		t.Fatal(err)
	}
	hole := 2*dumpBatch + 3
	if err := linux.Mprotect(mem[hole*ps:(hole+1)*ps], linux.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	if _, err := StageLayer(im, r, allPages(pages), true); !errors.Is(err, linux.EFAULT) {
		t.Fatalf("staging over an unmapped page: %v, want EFAULT", err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "layer-*")); len(files) != 0 || im.Layers() != 0 {
		t.Fatalf("after a failed staging: layer files %v, %d layers", files, im.Layers())
	}
	some := []uint64{0, uint64(pages - 1)}
	w, err := StageLayer(im, r, some, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	got := imageBytes(t, dir)
	for _, p := range some {
		if !bytes.Equal(got[int(p)*ps:(int(p)+1)*ps], mem[int(p)*ps:(int(p)+1)*ps]) {
			t.Fatalf("page %d differs", p)
		}
	}
}
