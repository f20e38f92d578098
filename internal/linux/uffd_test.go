package linux

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

// uffdTestIOC encodes an ioctl request as asm-generic/ioctl.h does, written
// out independently of the package's own constants.
func uffdTestIOC(dir, nr, size uintptr) uintptr {
	const (
		nrShift   = 0
		typeShift = nrShift + 8
		sizeShift = typeShift + 8
		dirShift  = sizeShift + 14
	)
	return dir<<dirShift | 0xaa<<typeShift | nr<<nrShift | size<<sizeShift
}

func TestUffdStructSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"uffdio_api", unsafe.Sizeof(uffdioAPI{}), 24},
		{"uffdio_range", unsafe.Sizeof(uffdioRange{}), 16},
		{"uffdio_register", unsafe.Sizeof(uffdioRegister{}), 32},
		{"uffdio_copy", unsafe.Sizeof(uffdioCopy{}), 40},
		{"uffdio_zeropage", unsafe.Sizeof(uffdioZeropage{}), 32},
		{"uffdio_writeprotect", unsafe.Sizeof(uffdioWriteprotect{}), 24},
		{"uffdio_continue", unsafe.Sizeof(uffdioContinue{}), 32},
		{"uffd_msg", unsafe.Sizeof(UffdMsg{}), 32},
	} {
		if c.got != c.want {
			t.Errorf("sizeof(struct %s) = %d, kernel uapi says %d", c.name, c.got, c.want)
		}
	}
	// uffd_msg union offsets: event at 0, arg at 8.
	var m UffdMsg
	if off := unsafe.Offsetof(m.arg); off != 8 {
		t.Errorf("uffd_msg.arg at offset %d, want 8", off)
	}
}

func TestUffdIoctlNumbers(t *testing.T) {
	const (
		ior  = 2
		iowr = 3
	)
	for _, c := range []struct {
		name    string
		got     uintptr
		encoded uintptr // _IOWR('\xaa', nr, struct) computed here
		literal uintptr // from linux/userfaultfd.h as compiled by gcc
	}{
		{"USERFAULTFD_IOC_NEW", USERFAULTFD_IOC_NEW, uffdTestIOC(0, 0x00, 0), 0xaa00},
		{"UFFDIO_API", UFFDIO_API, uffdTestIOC(iowr, 0x3f, 24), 0xc018aa3f},
		{"UFFDIO_REGISTER", UFFDIO_REGISTER, uffdTestIOC(iowr, 0x00, 32), 0xc020aa00},
		{"UFFDIO_UNREGISTER", UFFDIO_UNREGISTER, uffdTestIOC(ior, 0x01, 16), 0x8010aa01},
		{"UFFDIO_WAKE", UFFDIO_WAKE, uffdTestIOC(ior, 0x02, 16), 0x8010aa02},
		{"UFFDIO_COPY", UFFDIO_COPY, uffdTestIOC(iowr, 0x03, 40), 0xc028aa03},
		{"UFFDIO_ZEROPAGE", UFFDIO_ZEROPAGE, uffdTestIOC(iowr, 0x04, 32), 0xc020aa04},
		{"UFFDIO_WRITEPROTECT", UFFDIO_WRITEPROTECT, uffdTestIOC(iowr, 0x06, 24), 0xc018aa06},
		{"UFFDIO_CONTINUE", UFFDIO_CONTINUE, uffdTestIOC(iowr, 0x07, 32), 0xc020aa07},
	} {
		if c.got != c.encoded || c.got != c.literal {
			t.Errorf("%s = %#x; _IOC encoding gives %#x, the uapi header %#x", c.name, c.got, c.encoded, c.literal)
		}
	}
}

func TestUffdMsgDecode(t *testing.T) {
	// Build the raw bytes a kernel would write, then decode them.
	var raw [32]byte
	raw[0] = UFFD_EVENT_PAGEFAULT
	binary.LittleEndian.PutUint64(raw[8:], UFFD_PAGEFAULT_FLAG_WRITE)
	binary.LittleEndian.PutUint64(raw[16:], 0x7f0012345000)
	binary.LittleEndian.PutUint32(raw[24:], 4242)
	m := *(*UffdMsg)(unsafe.Pointer(&raw))
	if m.Event != UFFD_EVENT_PAGEFAULT || m.PagefaultAddr() != 0x7f0012345000 ||
		m.PagefaultFlags() != UFFD_PAGEFAULT_FLAG_WRITE || m.PagefaultTID() != 4242 {
		t.Fatalf("decoded %v", &m)
	}
	if got := NewPagefaultMsg(0x7f0012345000, UFFD_PAGEFAULT_FLAG_WRITE, 4242); got != m {
		t.Errorf("NewPagefaultMsg = %v, want %v", &got, &m)
	}

	raw = [32]byte{}
	raw[0] = UFFD_EVENT_REMAP
	binary.LittleEndian.PutUint64(raw[8:], 0x1000)
	binary.LittleEndian.PutUint64(raw[16:], 0x9000)
	binary.LittleEndian.PutUint64(raw[24:], 0x3000)
	m = *(*UffdMsg)(unsafe.Pointer(&raw))
	if from, to, n := m.Remap(); from != 0x1000 || to != 0x9000 || n != 0x3000 {
		t.Errorf("remap decoded as %#x %#x %#x", from, to, n)
	}
	raw[0] = UFFD_EVENT_UNMAP
	m = *(*UffdMsg)(unsafe.Pointer(&raw))
	if s, e := m.Range(); s != 0x1000 || e != 0x9000 || !strings.HasPrefix(m.String(), "unmap") {
		t.Errorf("unmap decoded as %#x..%#x (%v)", s, e, &m)
	}
	raw[0] = UFFD_EVENT_FORK
	m = *(*UffdMsg)(unsafe.Pointer(&raw))
	if m.ForkUfd() != 0x1000 {
		t.Errorf("fork ufd %d", m.ForkUfd())
	}
}

func TestUffdFeatureNames(t *testing.T) {
	got := UffdFeatureNames(UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_EVENT_UNMAP | 1<<40)
	if got != "UFFD_FEATURE_EVENT_UNMAP|UFFD_FEATURE_THREAD_ID|0x10000000000" {
		t.Errorf("UffdFeatureNames = %q", got)
	}
}

// uffdTestOpen opens a uffd or skips the test saying why.
func uffdTestOpen(t *testing.T) *Uffd {
	t.Helper()
	u, err := OpenUffd()
	if errors.Is(err, ErrNotSupported) || errors.Is(err, EPERM) {
		t.Skipf("userfaultfd unavailable here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// uffdTestFDCount counts this process's open fds.
func uffdTestFDCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestUffdAPIFeatureNegotiation(t *testing.T) {
	before := uffdTestFDCount(t)
	u := uffdTestOpen(t)
	defer u.Close()

	if ok, err := u.Initialized(); ok || err != nil {
		t.Fatalf("fresh uffd Initialized = %v, %v", ok, err)
	}
	const bogus = 1 << 62
	_, err := u.API(UFFD_FEATURE_THREAD_ID | bogus)
	var ue *UnsupportedError
	if !errors.As(err, &ue) || !errors.Is(err, ErrNotSupported) {
		t.Fatalf("API with an unknown feature: %v (%T), want *UnsupportedError", err, err)
	}
	if !strings.Contains(ue.Feature, "0x4000000000000000") || strings.Contains(ue.Feature, "THREAD_ID") {
		t.Errorf("error should name only the missing feature: %v", err)
	}
	// The fd stays uninitialized: a second try with what the kernel has works.
	have, err := u.API(UFFD_FEATURE_THREAD_ID)
	if err != nil {
		t.Fatalf("API(THREAD_ID) after a refused negotiation: %v", err)
	}
	if have&UFFD_FEATURE_THREAD_ID == 0 {
		t.Errorf("supported %s lacks THREAD_ID", UffdFeatureNames(have))
	}
	dup, err := u.Dup()
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := dup.Initialized(); !ok || err != nil {
		t.Errorf("dup of an initialized uffd: Initialized = %v, %v", ok, err)
	}
	if _, err := dup.API(0); err == nil {
		t.Error("second UFFDIO_API through a dup succeeded; the context is shared")
	} else if errors.Is(err, ErrNotSupported) {
		t.Errorf("second UFFDIO_API reported as unsupported: %v", err)
	}
	dup.Close()
	probed, err := UffdFeatures()
	if err != nil || probed != have {
		t.Errorf("UffdFeatures = %s, %v; API said %s", UffdFeatureNames(probed), err, UffdFeatureNames(have))
	}
	t.Logf("kernel userfaultfd features: %s", UffdFeatureNames(have))
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if err := u.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v, want os.ErrClosed", err)
	}
	if _, err := u.Copy(0, make([]byte, 8), 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Copy after Close = %v, want os.ErrClosed", err)
	}
	if after := uffdTestFDCount(t); after != before {
		t.Errorf("fds: %d before, %d after", before, after)
	}
}

// TestUffdResolveInProcess registers a region of this process and resolves
// its faults from a pager goroutine on its own OS thread, like a real pager:
// epoll on the uffd plus an eventfd to stop.
func TestUffdResolveInProcess(t *testing.T) {
	before := uffdTestFDCount(t)
	u := uffdTestOpen(t)
	defer u.Close()
	if _, err := u.API(UFFD_FEATURE_THREAD_ID); err != nil {
		t.Fatal(err)
	}
	ps := PageSize()
	const pages = 8
	mem, err := Mmap(pages*ps, PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	ioctls, err := u.Register(base, uintptr(len(mem)), UFFDIO_REGISTER_MODE_MISSING)
	if err != nil {
		t.Fatal(err)
	}
	for _, nr := range []uint{UFFDIO_NR_WAKE, UFFDIO_NR_COPY, UFFDIO_NR_ZEROPAGE} {
		if ioctls&(1<<nr) == 0 {
			t.Fatalf("registered range lacks ioctl %#x (mask %#x)", nr, ioctls)
		}
	}
	// The last page: a zero page, mapped before anyone touches it.
	last := base + uintptr(pages-1)*uintptr(ps)
	if n, err := u.ZeroPage(last, uintptr(ps), 0); err != nil || n != int64(ps) {
		t.Fatalf("ZeroPage = %d, %v", n, err)
	}

	ep, err := NewEpoll()
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	stop, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer stop.Close()
	if err := ep.Add(u.FD(), EPOLLIN, 1); err != nil {
		t.Fatal(err)
	}
	if err := ep.Add(stop.FD(), EPOLLIN, 2); err != nil {
		t.Fatal(err)
	}

	var (
		wg       sync.WaitGroup
		faults   []UffdMsg
		pagerErr error
	)
	wg.Add(1)
	go func() { // the pager thread
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		page, err := Mmap(ps, PROT_READ|PROT_WRITE, MAP_PRIVATE)
		if err != nil {
			pagerErr = err
			return
		}
		defer Munmap(page)
		evs := make([]EpollEvent, 4)
		msgs := make([]UffdMsg, 8)
		for {
			n, err := ep.Wait(evs, -1)
			if err != nil {
				pagerErr = err
				return
			}
			for _, ev := range evs[:n] {
				if ev.Token() == 2 {
					return
				}
				k, err := u.ReadMsgs(msgs)
				if errors.Is(err, EAGAIN) {
					continue
				}
				if err != nil {
					pagerErr = err
					return
				}
				for _, m := range msgs[:k] {
					faults = append(faults, m)
					addr := m.PagefaultAddr() &^ uintptr(ps-1)
					for i := range page {
						page[i] = byte(addr>>12) + byte(i)
					}
					if _, err := u.Copy(addr, page, 0); err != nil && !errors.Is(err, EEXIST) {
						pagerErr = err
						return
					}
				}
			}
		}
	}()

	// The faulting thread: touch every page but the zero one, check content.
	var tid int
	var touchErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid = Gettid()
		for p := 0; p < pages-1; p++ {
			addr := base + uintptr(p*ps)
			for _, i := range []int{0, 1, ps - 1} {
				if got, want := mem[p*ps+i], byte(addr>>12)+byte(i); got != want {
					touchErr = errors.New("wrong content after fault")
					return
				}
			}
		}
		if mem[(pages-1)*ps] != 0 {
			touchErr = errors.New("zero page not zero")
		}
	}()
	<-done
	if err := stop.Signal(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if pagerErr != nil || touchErr != nil {
		t.Fatalf("pager: %v; toucher: %v", pagerErr, touchErr)
	}
	if len(faults) != pages-1 {
		t.Errorf("%d fault messages, want %d (the zero page must not fault)", len(faults), pages-1)
	}
	for i, m := range faults {
		if m.Event != UFFD_EVENT_PAGEFAULT || int(m.PagefaultTID()) != tid {
			t.Errorf("fault %d: %v, want pagefault from tid %d", i, &m, tid)
		}
		if want := base + uintptr(i*ps); m.PagefaultAddr()&^uintptr(ps-1) != want {
			t.Errorf("fault %d at %#x, want %#x", i, m.PagefaultAddr(), want)
		}
	}

	// Resolving an already-present page: EEXIST, errno identity kept.
	_, err = u.Copy(base, make([]byte, ps), 0)
	if !errors.Is(err, EEXIST) {
		t.Errorf("Copy onto a present page = %v, want EEXIST", err)
	}
	if _, err := u.ZeroPage(base, uintptr(ps), 0); !errors.Is(err, EEXIST) {
		t.Errorf("ZeroPage onto a present page = %v, want EEXIST", err)
	}
	if err := u.Wake(base, uintptr(len(mem))); err != nil {
		t.Errorf("Wake with nobody waiting: %v", err)
	}
	if _, err := u.ReadMsgs(make([]UffdMsg, 1)); !errors.Is(err, EAGAIN) {
		t.Errorf("ReadMsgs on an empty uffd = %v, want EAGAIN", err)
	}
	if err := u.Unregister(base, uintptr(len(mem))); err != nil {
		t.Error(err)
	}
	if _, err := u.Copy(base+uintptr(ps), make([]byte, ps), 0); err == nil {
		t.Error("Copy into an unregistered range succeeded")
	}
	u.Close()
	ep.Close()
	stop.Close()
	if after := uffdTestFDCount(t); after != before {
		t.Errorf("fds: %d before, %d after", before, after)
	}
}

// TestUffdWakeRefaults shows what takeover relies on: a fault that was read
// but never resolved is raised again after UFFDIO_WAKE.
func TestUffdWakeRefaults(t *testing.T) {
	u := uffdTestOpen(t)
	defer u.Close()
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	ps := PageSize()
	mem, err := Mmap(ps, PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(base, uintptr(ps), UFFDIO_REGISTER_MODE_MISSING); err != nil {
		t.Fatal(err)
	}
	done := make(chan byte)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		done <- mem[100]
	}()
	read := func() UffdMsg {
		msgs := make([]UffdMsg, 1)
		for {
			n, err := u.ReadMsgs(msgs)
			if errors.Is(err, EAGAIN) {
				runtime.Gosched()
				continue
			}
			if err != nil || n != 1 {
				t.Fatalf("ReadMsgs = %d, %v", n, err)
			}
			return msgs[0]
		}
	}
	first := read()
	// Drop it, as a pager dying here would; waking re-raises it.
	if err := u.Wake(base, uintptr(ps)); err != nil {
		t.Fatal(err)
	}
	second := read()
	if first.PagefaultAddr() != second.PagefaultAddr() {
		t.Fatalf("re-raised fault at %#x, first at %#x", second.PagefaultAddr(), first.PagefaultAddr())
	}
	page := make([]byte, ps)
	page[100] = 7
	if _, err := u.Copy(base, page, 0); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got != 7 {
		t.Fatalf("read %d after resolve, want 7", got)
	}
}
