package linux

import (
	"errors"
	"os"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// The layout and ioctl number of include/uapi/linux/pidfd.h, written out
// independently: PIDFD_GET_INFO = _IOWR(0xFF, 11, struct pidfd_info) with
// the 64-byte first version; exit_code at offset 60 (Linux 6.15).
func TestPidfdInfoABI(t *testing.T) {
	if n := unsafe.Sizeof(pidfdInfo{}); n != 64 {
		t.Errorf("sizeof(pidfd_info) = %d, want 64", n)
	}
	if off := unsafe.Offsetof(pidfdInfo{}.ExitCode); off != 60 {
		t.Errorf("offsetof(exit_code) = %d, want 60", off)
	}
	if pidfdGetInfo != 0xC040FF0B {
		t.Errorf("PIDFD_GET_INFO = %#x, want 0xc040ff0b", pidfdGetInfo)
	}
}

// TestPidfdExitStatus: a child's exit status is unknown while it is a
// zombie and read from its pidfd once reaped (where the kernel offers it).
func TestPidfdExitStatus(t *testing.T) {
	p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "exit 3"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := PidfdOpen(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	for {
		exited, err := PidfdExited(fd)
		if err != nil {
			t.Fatal(err)
		}
		if exited {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := PidfdExitStatus(fd); !errors.Is(err, ErrExitUnknown) {
		t.Errorf("status of an unreaped zombie: %v, want ErrExitUnknown", err)
	}
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	st, err := PidfdExitStatus(fd)
	if errors.Is(err, ErrNotSupported) {
		t.Skipf("kernel keeps no exit status for pidfds: %v", err)
	}
	if err != nil || !st.Exited() || st.ExitStatus() != 3 {
		t.Fatalf("status after reaping = %v (exited %v, code %d), %v; want exit 3", st, st.Exited(), st.ExitStatus(), err)
	}
}
