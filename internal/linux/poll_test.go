package linux

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

func TestEpollEventFD(t *testing.T) {
	ep, err := NewEpoll()
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	efd, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer efd.Close()
	const token = 0xdeadbeef_00c0ffee
	if err := ep.Add(efd.FD(), EPOLLIN, token); err != nil {
		t.Fatal(err)
	}
	evs := make([]EpollEvent, 2)
	if n, err := ep.Wait(evs, 0); n != 0 || err != nil {
		t.Fatalf("Wait on a quiet eventfd = %d, %v", n, err)
	}
	efd.Signal()
	efd.Signal()
	n, err := ep.Wait(evs, 1000)
	if err != nil || n != 1 || evs[0].Token() != token || evs[0].Events()&EPOLLIN == 0 {
		t.Fatalf("Wait = %d, %v, token %#x events %#x", n, err, evs[0].Token(), evs[0].Events())
	}
	if v, err := efd.Drain(); v != 2 || err != nil {
		t.Errorf("Drain = %d, %v, want 2", v, err)
	}
	if n, _ := ep.Wait(evs, 0); n != 0 {
		t.Error("eventfd still ready after Drain")
	}
	if err := ep.Modify(efd.FD(), EPOLLIN|EPOLLONESHOT, 7); err != nil {
		t.Fatal(err)
	}
	efd.Signal()
	if n, _ := ep.Wait(evs, 1000); n != 1 || evs[0].Token() != 7 {
		t.Fatalf("after Modify: %d events, token %d", n, evs[0].Token())
	}
	if n, _ := ep.Wait(evs, 0); n != 0 {
		t.Error("EPOLLONESHOT fd reported twice")
	}
	if err := ep.Delete(efd.FD()); err != nil {
		t.Fatal(err)
	}
	if err := ep.Delete(efd.FD()); !errors.Is(err, ENOENT) {
		t.Errorf("second Delete = %v, want ENOENT", err)
	}
	if err := efd.Close(); err != nil {
		t.Fatal(err)
	}
	if err := efd.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
}

func TestPidWatch(t *testing.T) {
	// Keep the child blocked until we are watching: it reads a pipe.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "read x")
	cmd.Stdin = r
	if err := cmd.Start(); err != nil {
		t.Skipf("no /bin/sh to run a child: %v", err)
	}
	r.Close()
	pw, err := WatchPid(cmd.Process.Pid)
	if err != nil {
		w.Close()
		cmd.Wait()
		t.Fatal(err)
	}
	defer pw.Close()
	if exited, err := pw.Exited(); exited || err != nil {
		t.Errorf("Exited before exit = %v, %v", exited, err)
	}
	ep, err := NewEpoll()
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	if err := ep.Add(pw.FD(), EPOLLIN, 1); err != nil {
		t.Fatal(err)
	}
	w.Close() // the child's read ends: it exits
	evs := make([]EpollEvent, 1)
	if n, err := ep.Wait(evs, 10000); n != 1 || err != nil {
		t.Fatalf("pidfd not ready after exit: %d, %v", n, err)
	}
	if exited, err := pw.Exited(); !exited || err != nil {
		t.Errorf("Exited after exit = %v, %v", exited, err)
	}
	cmd.Wait()
	if _, err := WatchPid(cmd.Process.Pid); !errors.Is(err, ESRCH) {
		t.Errorf("WatchPid of a reaped pid = %v, want ESRCH", err)
	}
}
