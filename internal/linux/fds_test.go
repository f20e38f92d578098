package linux

import (
	"path/filepath"
	"syscall"
	"testing"
)

func TestCloseOnExecFrom(t *testing.T) {
	for name, mark := range map[string]func(int) error{"close_range": CloseOnExecFrom, "fcntl": cloexecEach} {
		t.Run(name, func(t *testing.T) {
			var fds []int
			for i := 0; i < 3; i++ {
				fd, err := syscall.Open(filepath.Join(t.TempDir(), "f"), syscall.O_RDWR|syscall.O_CREAT, 0o600) // no O_CLOEXEC
				if err != nil {
					t.Fatal(err)
				}
				defer syscall.Close(fd)
				fds = append(fds, fd)
			}
			for _, fd := range fds {
				if c, err := FDCloseOnExec(fd); err != nil || c {
					t.Fatalf("fd %d: close-on-exec %v %v before", fd, c, err)
				}
			}
			// Everything from the second fd on is marked; the first is not.
			if err := mark(fds[1]); err != nil {
				t.Fatal(err)
			}
			for i, fd := range fds {
				c, err := FDCloseOnExec(fd)
				if err != nil || c != (i > 0) {
					t.Errorf("fd %d: close-on-exec %v %v, want %v", fd, c, err, i > 0)
				}
			}
			// Still open.
			if _, err := syscall.Write(fds[2], []byte("x")); err != nil {
				t.Errorf("write to a marked fd: %v", err)
			}
		})
	}
}
