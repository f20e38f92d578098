package ckpt

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
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
