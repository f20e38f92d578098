package linux

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestPagemapScanLayout(t *testing.T) {
	if got := unsafe.Sizeof(pmScanArg{}); got != 96 {
		t.Errorf("sizeof(struct pm_scan_arg) = %d, uapi says 96", got)
	}
	if got := unsafe.Sizeof(PageRegion{}); got != 24 {
		t.Errorf("sizeof(struct page_region) = %d, uapi says 24", got)
	}
	var a pmScanArg
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"walk_end", unsafe.Offsetof(a.WalkEnd), 32},
		{"vec", unsafe.Offsetof(a.Vec), 40},
		{"max_pages", unsafe.Offsetof(a.MaxPages), 56},
		{"category_mask", unsafe.Offsetof(a.CategoryMask), 72},
		{"return_mask", unsafe.Offsetof(a.ReturnMask), 88},
	} {
		if c.got != c.want {
			t.Errorf("pm_scan_arg.%s at %d, want %d", c.name, c.got, c.want)
		}
	}
	// _IOWR('f', 16, struct pm_scan_arg) as gcc computes it from linux/fs.h.
	if PAGEMAP_SCAN != 0xc0606610 {
		t.Errorf("PAGEMAP_SCAN = %#x, want 0xc0606610", PAGEMAP_SCAN)
	}
}

// wpAsyncRegion maps pages anonymous pages in this process and starts
// async write tracking on them; it skips where the kernel lacks it.
func wpAsyncRegion(t *testing.T, pages int) (mem []byte, pm *Pagemap) {
	t.Helper()
	if !HaveWPAsync() {
		t.Skip("kernel lacks UFFD_FEATURE_WP_ASYNC / WP_UNPOPULATED (Linux 6.7)")
	}
	u := uffdTestOpen(t)
	t.Cleanup(func() { u.Close() })
	if _, err := u.API(WPAsyncFeatures); err != nil {
		t.Fatal(err)
	}
	mem, err := Mmap(pages*PageSize(), PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Munmap(mem) })
	base := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(base, uintptr(len(mem)), UFFDIO_REGISTER_MODE_WP); err != nil {
		t.Fatal(err)
	}
	pm, err = OpenPagemap(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pm.Close() })
	if err := pm.WriteProtectAsync(base, base+uintptr(len(mem))); err != nil {
		t.Fatal(err)
	}
	return mem, pm
}

// regionPages expands regions to page indexes relative to base.
func regionPages(base uintptr, regs []PageRegion) []int {
	var out []int
	ps := uint64(PageSize())
	for _, r := range regs {
		for a := r.Start; a < r.End; a += ps {
			out = append(out, int((a-uint64(base))/ps))
		}
	}
	return out
}

func TestPagemapWPAsyncWrittenPages(t *testing.T) {
	const pages = 64
	mem, pm := wpAsyncRegion(t, pages)
	ps := PageSize()
	base := uintptr(unsafe.Pointer(&mem[0]))
	end := base + uintptr(len(mem))

	epochs := [][]int{
		{3, 10, 11, 20, 40},
		{10, 63},           // 10 again in a new epoch
		{0, 1, 2, 3, 4, 5}, // one region spanning 6 pages
		nil,
	}
	// A tiny vec forces several PAGEMAP_SCAN calls resumed from walk_end.
	vec := make([]PageRegion, 1)
	for i, write := range epochs {
		for _, p := range write {
			mem[p*ps+1]++
		}
		if i == 0 {
			mem[11*ps+100] = 0       // twice in one epoch (and a zero byte): one page
			presentSink = mem[50*ps] // a read is not a write
		}
		regs, err := pm.WrittenPages(base, end, true, vec, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := regionPages(base, regs)
		want := slices.Sorted(slices.Values(write))
		if !slices.Equal(got, want) {
			t.Fatalf("epoch %d: written pages %v, want %v (regions %+v)", i, got, want, regs)
		}
		for _, r := range regs {
			if r.Categories != PAGE_IS_WRITTEN {
				t.Errorf("region %+v: categories %#x, want PAGE_IS_WRITTEN", r, r.Categories)
			}
		}
	}
	// Without reprotect the scan only looks: the same pages twice.
	mem[7*ps]++
	for range 2 {
		regs, err := pm.WrittenPages(base, end, false, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := regionPages(base, regs); !slices.Equal(got, []int{7}) {
			t.Fatalf("look-only scan: %v, want [7]", got)
		}
	}
}

func TestPagemapWPAsyncUnregisteredRange(t *testing.T) {
	if !HaveWPAsync() {
		t.Skip("kernel lacks UFFD_FEATURE_WP_ASYNC")
	}
	mem, err := Mmap(4*PageSize(), PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	mem[0] = 1
	pm, err := OpenPagemap(0)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	base := uintptr(unsafe.Pointer(&mem[0]))
	// PM_SCAN_CHECK_WPASYNC refuses a range without async WP rather than
	// reporting it clean.
	_, err = pm.WrittenPages(base, base+uintptr(len(mem)), true, nil, nil)
	if !errors.Is(err, EPERM) {
		t.Fatalf("scan of an untracked range: %v, want EPERM", err)
	}
}

// TestHelperWPChild is not a test: the re-exec'd child of
// TestPagemapWPAsyncOtherProcess. It maps a region, starts async write
// tracking on it itself, prints its address, then on each stdin line "w N"
// writes the byte N+1 all over page N and answers "ok".
func TestHelperWPChild(t *testing.T) {
	if os.Getenv("VCORED_LINUX_TEST_HELPER") != "wpchild" {
		t.Skip("helper process for TestPagemapWPAsyncOtherProcess")
	}
	fail := func(err error) { fmt.Println("error", err); os.Exit(1) }
	const pages = 32
	mem, err := Mmap(pages*PageSize(), PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		fail(err)
	}
	u, err := OpenUffd()
	if err != nil {
		fail(err)
	}
	if _, err := u.API(WPAsyncFeatures); err != nil {
		fail(err)
	}
	base := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(base, uintptr(len(mem)), UFFDIO_REGISTER_MODE_WP); err != nil {
		fail(err)
	}
	fmt.Printf("addr %d %d\n", base, pages)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 2 && f[0] == "w" {
			n, _ := strconv.Atoi(f[1])
			page := mem[n*PageSize() : (n+1)*PageSize()]
			for i := range page {
				page[i] = byte(n + 1)
			}
			fmt.Println("ok")
		}
	}
	os.Exit(0)
}

func TestPagemapWPAsyncOtherProcess(t *testing.T) {
	if !HaveWPAsync() {
		t.Skip("kernel lacks UFFD_FEATURE_WP_ASYNC")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWPChild$")
	cmd.Env = append(os.Environ(), "VCORED_LINUX_TEST_HELPER=wpchild")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	out := bufio.NewReader(stdout)
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	var base uintptr
	var pages int
	if _, err := fmt.Sscanf(line, "addr %d %d", &base, &pages); err != nil {
		t.Fatalf("helper said %q", line)
	}
	ps := PageSize()
	end := base + uintptr(pages*ps)
	pid := cmd.Process.Pid
	pm, err := OpenPagemap(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	// The tracker (this process) starts the epoch in the child's mm.
	if err := pm.WriteProtectAsync(base, end); err != nil {
		t.Fatal(err)
	}
	write := func(n int) {
		fmt.Fprintf(stdin, "w %d\n", n)
		if l, err := out.ReadString('\n'); err != nil || l != "ok\n" {
			t.Fatalf("helper: %q, %v", l, err)
		}
	}
	for _, epoch := range [][]int{{1, 2, 30}, {2}, {}} {
		for _, n := range epoch {
			write(n)
		}
		regs, err := pm.WrittenPages(base, end, true, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := regionPages(base, regs)
		if !slices.Equal(got, epoch) && !(len(got) == 0 && len(epoch) == 0) {
			t.Fatalf("written pages %v, want %v", got, epoch)
		}
		// Read the dirty pages out of the child and check them.
		segs := make([]RemoteSeg, len(got))
		for i, p := range got {
			segs[i] = RemoteSeg{Addr: base + uintptr(p*ps), Buf: make([]byte, ps)}
		}
		if err := ReadRemote(pid, segs); err != nil {
			t.Fatal(err)
		}
		for i, p := range got {
			for j, b := range segs[i].Buf {
				if b != byte(p+1) {
					t.Fatalf("page %d byte %d = %d, want %d", p, j, b, p+1)
				}
			}
		}
	}
}

func TestReadRemoteSelf(t *testing.T) {
	ps := PageSize()
	mem, err := Mmap(3*ps, PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	for i := range mem {
		mem[i] = byte(i * 7)
	}
	base := uintptr(unsafe.Pointer(&mem[0]))
	// More segments than one system call takes, odd sizes.
	var segs []RemoteSeg
	for i := range 2500 {
		off := (i * 13) % (len(mem) - 100)
		segs = append(segs, RemoteSeg{Addr: base + uintptr(off), Buf: make([]byte, 1+i%100)})
	}
	if err := ReadRemote(os.Getpid(), segs); err != nil {
		t.Fatal(err)
	}
	for i, s := range segs {
		off := int(s.Addr - base)
		if !slices.Equal(s.Buf, mem[off:off+len(s.Buf)]) {
			t.Fatalf("segment %d at +%d differs", i, off)
		}
	}
	// A hole in the middle: the third page unmapped. The read fails with
	// EFAULT and names the address; the bytes before it were read.
	if _, _, errno := unix.Syscall(unix.SYS_MUNMAP, base+uintptr(2*ps), uintptr(ps), 0); errno != 0 {
		t.Fatal(errno)
	}
	a := RemoteSeg{Addr: base, Buf: make([]byte, ps)}
	b := RemoteSeg{Addr: base + uintptr(ps), Buf: make([]byte, 2*ps)}
	err = ReadRemote(os.Getpid(), []RemoteSeg{a, b})
	if !errors.Is(err, unix.EFAULT) || !strings.Contains(err.Error(), fmt.Sprintf("%#x", base+uintptr(2*ps))) {
		t.Fatalf("read across a hole: %v, want EFAULT at %#x", err, base+uintptr(2*ps))
	}
	if !slices.Equal(a.Buf, mem[:ps]) || !slices.Equal(b.Buf[:ps], mem[ps:2*ps]) {
		t.Fatal("bytes before the hole not read")
	}
}

// TestUffdSyncWPFirstWritePerEpoch is the fallback for kernels without
// WP_ASYNC (the qemu guests' 6.1): a sync WP registration delivers a fault
// for the first write to each protected page; the tracker records it and
// unprotects the page, so later writes in the same epoch run free.
func TestUffdSyncWPFirstWritePerEpoch(t *testing.T) {
	u := uffdTestOpen(t)
	defer u.Close()
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	ps := PageSize()
	const pages = 8
	mem, err := Mmap(pages*ps, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_POPULATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	// Sync WP of anonymous memory without WP_UNPOPULATED protects present
	// pages only: populate them first (the pager's UFFDIO_COPY does that).
	for i := range pages {
		mem[i*ps] = 1
	}
	base := uintptr(unsafe.Pointer(&mem[0]))
	ioctls, err := u.Register(base, uintptr(len(mem)), UFFDIO_REGISTER_MODE_WP)
	if err != nil {
		t.Fatal(err)
	}
	if ioctls&(1<<UFFDIO_NR_WRITEPROTECT) == 0 {
		t.Skipf("range lacks UFFDIO_WRITEPROTECT (ioctls %#x)", ioctls)
	}
	protect := func() {
		if err := u.WriteProtect(base, uintptr(len(mem)), UFFDIO_WRITEPROTECT_MODE_WP); err != nil {
			t.Fatal(err)
		}
	}
	// serve handles WP faults until done closes, recording the pages.
	type fault struct {
		page  int
		flags uint64
	}
	serve := func(done <-chan struct{}, faults chan<- fault) {
		msgs := make([]UffdMsg, 4)
		for {
			select {
			case <-done:
				return
			default:
			}
			fds := []unix.PollFd{{Fd: int32(u.FD()), Events: unix.POLLIN}}
			if n, _ := unix.Poll(fds, 20); n <= 0 {
				continue
			}
			n, err := u.ReadMsgs(msgs)
			if err != nil {
				continue
			}
			for _, m := range msgs[:n] {
				p := int((m.PagefaultAddr() - base) / uintptr(ps))
				faults <- fault{page: p, flags: m.PagefaultFlags()}
				// Unprotect (and wake): the page is dirty for this epoch.
				if err := u.WriteProtect(m.PagefaultAddr(), uintptr(ps), 0); err != nil {
					panic(err)
				}
			}
		}
	}
	for epoch := range 2 {
		protect()
		done := make(chan struct{})
		faults := make(chan fault, 64)
		served := make(chan struct{})
		go func() { serve(done, faults); close(served) }()
		// Writes run on a goroutine: a WP fault blocks its thread until served.
		wrote := make(chan struct{})
		go func() {
			mem[3*ps+1] = byte(epoch + 2) // faults
			mem[3*ps+2] = byte(epoch + 2) // same page, same epoch: no fault
			mem[6*ps] = byte(epoch + 2)   // faults
			close(wrote)
		}()
		select {
		case <-wrote:
		case <-time.After(60 * time.Second):
			t.Fatal("writes to write-protected pages never completed")
		}
		close(done)
		<-served
		close(faults)
		var got []int
		for f := range faults {
			if f.flags&UFFD_PAGEFAULT_FLAG_WP == 0 || f.flags&UFFD_PAGEFAULT_FLAG_WRITE == 0 {
				t.Errorf("fault on page %d: flags %#x, want WRITE|WP", f.page, f.flags)
			}
			got = append(got, f.page)
		}
		// A page may fault twice if the kernel retries; it is still the
		// same set of pages.
		got = slices.Compact(got)
		if !slices.Equal(got, []int{3, 6}) {
			t.Fatalf("epoch %d: WP faults on pages %v, want [3 6]", epoch, got)
		}
		if mem[3*ps+1] != byte(epoch+2) || mem[6*ps] != byte(epoch+2) {
			t.Fatal("write lost")
		}
	}
}

func TestPagemapPresentPages(t *testing.T) {
	// With async WP markers on the untouched pages (they read as swapped
	// entries) and without.
	ps := PageSize()
	mem, pm := wpAsyncRegion(t, 16)
	mem[2*ps] = 1
	presentSink = mem[5*ps] // a read maps the zero page: present, too
	mem[15*ps+9] = 1
	base := uintptr(unsafe.Pointer(&mem[0]))
	got, err := pm.PresentPages(base, base+uintptr(len(mem)))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []uint64{2, 5, 15}) {
		t.Fatalf("present pages %v, want [2 5 15]", got)
	}
	plain, err := Mmap(4*ps, PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(plain)
	plain[3*ps] = 1
	pb := uintptr(unsafe.Pointer(&plain[0]))
	if got, err := pm.PresentPages(pb, pb+uintptr(len(plain))); err != nil || !slices.Equal(got, []uint64{3}) {
		t.Fatalf("present pages of a plain mapping: %v, %v", got, err)
	}
	if _, err := pm.PresentPages(pb+1, pb+uintptr(len(plain))); err == nil {
		t.Error("unaligned range: no error")
	}
}

func TestPagemapPTEMarker(t *testing.T) {
	for _, c := range []struct {
		entry  uint64
		marker bool
	}{
		{0x420000000000003f, true},             // uffd-wp marker as this kernel reports it
		{0x4000000000000020, false},            // swap type 0, slot 1
		{0x4000000000000036, false},            // swap type 22, slot 1
		{0x400000000246a8fc, false},            // a migration entry (type 28, a frame number)
		{0x4000000000000000 | 31 | 4<<5, true}, // guard marker
	} {
		if got := pteMarker(c.entry); got != c.marker {
			t.Errorf("pteMarker(%#x) = %v, want %v", c.entry, got, c.marker)
		}
	}
}

var presentSink byte
