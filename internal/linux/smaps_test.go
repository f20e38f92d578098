package linux

import (
	"os"
	"path/filepath"
	"testing"
	"unsafe"
)

func TestUffdRegisteredInFixture(t *testing.T) {
	smaps := `7f0000000000-7f0000008000 rw-p 00000000 00:00 0 
Size:                 32 kB
VmFlags: rd wr mr mw me ac um 
7f0000008000-7f0000010000 rw-p 00000000 00:00 0 
Size:                 32 kB
VmFlags: rd wr mr mw me ac 
7f0000010000-7f0000018000 rw-p 00000000 00:00 0 
VmFlags: rd wr mr mw me ac uw 
`
	path := filepath.Join(t.TempDir(), "smaps")
	if err := os.WriteFile(path, []byte(smaps), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		start, length uintptr
		want          bool
	}{
		{0x7f0000000000, 0x8000, true},  // the registered mapping
		{0x7f0000008000, 0x8000, false}, // a plain one
		{0x7f0000006000, 0x4000, true},  // straddles registered and plain
		{0x7f0000010000, 0x1000, true},  // write-protect tracking counts
		{0x7f0000020000, 0x1000, false}, // nothing mapped
	} {
		got, err := uffdRegisteredIn(path, tc.start, tc.length)
		if err != nil || got != tc.want {
			t.Errorf("%#x+%#x: %v, %v; want %v", tc.start, tc.length, got, err, tc.want)
		}
	}
}

// TestUffdRegisteredInReal: a mapping registered with a real userfaultfd
// shows up; a plain one beside it does not.
func TestUffdRegisteredInReal(t *testing.T) {
	u := uffdTestOpen(t)
	defer u.Close()
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	ps := uintptr(PageSize())
	mem, err := Mmap(int(4*ps), PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	if _, err := u.Register(base, 2*ps, UFFDIO_REGISTER_MODE_MISSING); err != nil {
		t.Fatal(err)
	}
	if got, err := UffdRegisteredIn(os.Getpid(), base, 2*ps); err != nil || !got {
		t.Errorf("registered half: %v, %v", got, err)
	}
	if got, err := UffdRegisteredIn(os.Getpid(), base+2*ps, 2*ps); err != nil || got {
		t.Errorf("plain half: %v, %v", got, err)
	}
}

// TestAnyPresentIn: untouched pages are not present; a written one is.
func TestAnyPresentIn(t *testing.T) {
	ps := PageSize()
	mem, err := Mmap(4*ps, PROT_READ|PROT_WRITE, MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	base := uintptr(unsafe.Pointer(&mem[0]))
	if got, err := AnyPresentIn(os.Getpid(), base, uintptr(4*ps)); err != nil || got {
		t.Fatalf("fresh mapping: %v, %v", got, err)
	}
	mem[2*ps] = 1
	if got, err := AnyPresentIn(os.Getpid(), base, uintptr(2*ps)); err != nil || got {
		t.Errorf("untouched half: %v, %v", got, err)
	}
	if got, err := AnyPresentIn(os.Getpid(), base, uintptr(4*ps)); err != nil || !got {
		t.Errorf("touched page: %v, %v", got, err)
	}
}
