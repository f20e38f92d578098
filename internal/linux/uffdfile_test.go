package linux

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"unsafe"
)

func TestUffdIsUffdAndSameFile(t *testing.T) {
	u := uffdTestOpen(t)
	defer u.Close()
	if ok, err := IsUffd(u.FD()); err != nil || !ok {
		t.Fatalf("IsUffd(userfaultfd) = %v, %v", ok, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if ok, err := IsUffd(int(r.Fd())); err != nil || ok {
		t.Fatalf("IsUffd(pipe) = %v, %v", ok, err)
	}
	if ok, _ := IsUffd(-1); ok {
		t.Fatal("IsUffd(-1) = true")
	}
	d, err := u.Dup()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	other := uffdTestOpen(t)
	defer other.Close()
	if same, err := SameFile(u.FD(), d.FD()); err != nil || !same {
		t.Errorf("SameFile(uffd, its dup) = %v, %v", same, err)
	}
	if same, err := SameFile(u.FD(), other.FD()); err != nil || same {
		t.Errorf("SameFile(uffd, another uffd) = %v, %v", same, err)
	}
}

func TestUffdPoisonUnregistered(t *testing.T) {
	have, err := UffdFeatures()
	if err != nil {
		t.Skip(err)
	}
	u := uffdTestOpen(t)
	defer u.Close()
	if _, err := u.API(0); err != nil {
		t.Fatal(err)
	}
	mem, err := Mmap(PageSize(), PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer Munmap(mem)
	_, err = u.Poison(uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), 0)
	if have&UFFD_FEATURE_POISON == 0 {
		if !errors.Is(err, ErrNotSupported) {
			t.Fatalf("Poison without the feature: %v, want ErrNotSupported", err)
		}
		return
	}
	// Not registered: the kernel refuses (ENOENT), it is not "unsupported".
	if err == nil || errors.Is(err, ErrNotSupported) {
		t.Fatalf("Poison of an unregistered range: %v", err)
	}
}

func TestTgkillSelf(t *testing.T) {
	if err := Tgkill(os.Getpid(), Gettid(), 0); err != nil {
		t.Fatalf("tgkill(self, 0): %v", err)
	}
	if err := Tgkill(os.Getpid(), 1<<30, syscall.Signal(0)); !errors.Is(err, ESRCH) {
		t.Fatalf("tgkill of a missing thread: %v, want ESRCH", err)
	}
}
