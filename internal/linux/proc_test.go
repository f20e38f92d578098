package linux

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
)

func TestProcPidfdLifecycle(t *testing.T) {
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	fd, err := PidfdOpen(pid)
	if errors.Is(err, ErrNotSupported) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)

	if exited, err := PidfdExited(fd); err != nil || exited {
		t.Fatalf("PidfdExited of a running sleep = %v, %v; want false, nil", exited, err)
	}
	if err := PidfdSendSignal(fd, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The pidfd polls readable once the process has exited, before it is reaped.
	deadline := time.Now().Add(10 * time.Second)
	for {
		exited, err := PidfdExited(fd)
		if err != nil {
			t.Fatal(err)
		}
		if exited {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("pidfd never became readable after SIGKILL")
		}
		time.Sleep(5 * time.Millisecond)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("sleep ended with %v, want killed by SIGKILL", err)
	}
	// Reaped: signalling through the pidfd now reports ESRCH instead of
	// hitting whatever process reuses the pid.
	if err := PidfdSendSignal(fd, 0); !errors.Is(err, ESRCH) {
		t.Fatalf("PidfdSendSignal after reap = %v, want ESRCH", err)
	}
	if err := Kill(pid, 0); !errors.Is(err, ESRCH) {
		t.Logf("kill(%d, 0) after reap = %v (pid reused?)", pid, err)
	}
}

func TestProcPidfdOpenMissing(t *testing.T) {
	// pid_max is at most 4194304; this pid cannot exist.
	_, err := PidfdOpen(1 << 23)
	if errors.Is(err, ErrNotSupported) {
		t.Skip(err)
	}
	if !errors.Is(err, ESRCH) && !errors.Is(err, EINVAL) {
		t.Fatalf("PidfdOpen(missing) = %v, want ESRCH or EINVAL", err)
	}
}

func TestProcPinProcess(t *testing.T) {
	orig, err := ProcessAffinity(0)
	if err != nil {
		t.Fatal(err)
	}
	if orig.Len() < 2 {
		t.Skipf("needs 2 CPUs in the affinity mask, have %s", orig)
	}
	last := orig.Slice()[orig.Len()-1]
	want := hw.NewSet(last)
	defer func() {
		if err := PinProcess(orig); err != nil {
			t.Errorf("restore affinity %s: %v", orig, err)
		}
	}()
	if err := PinProcess(want); err != nil {
		t.Fatal(err)
	}
	// Every existing thread, read back from the kernel.
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(tasks) == 0 {
		t.Fatalf("glob tasks: %v %v", tasks, err)
	}
	for _, st := range tasks {
		if got := procStatusField(t, st, "Cpus_allowed_list"); got != want.String() {
			t.Errorf("%s Cpus_allowed_list = %q, want %q", st, got, want)
		}
	}
	// A thread created afterwards inherits the mask.
	got := make(chan hw.CPUSet, 1)
	go func() {
		runtime.LockOSThread() // a fresh goroutine may get a fresh thread; locked, it keeps it
		defer runtime.UnlockOSThread()
		s, _ := ProcessAffinity(0)
		got <- s
	}()
	if s := <-got; !s.Equal(want) {
		t.Errorf("affinity of a later thread = %s, want %s", s, want)
	}
	if s, err := ProcessAffinity(os.Getpid()); err != nil || !s.Equal(want) {
		t.Errorf("ProcessAffinity(self) = %s, %v; want %s", s, err, want)
	}
}

func TestProcPinProcessEmpty(t *testing.T) {
	if err := PinProcess(hw.CPUSet{}); !errors.Is(err, EINVAL) {
		t.Fatalf("PinProcess(empty) = %v, want EINVAL", err)
	}
}

func TestProcParentPid(t *testing.T) {
	ppid, err := ParentPid(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if ppid != os.Getppid() {
		t.Fatalf("ParentPid(self) = %d, want %d", ppid, os.Getppid())
	}
	if _, err := ParentPid(1 << 23); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ParentPid(missing) = %v, want not exist", err)
	}
}

func TestProcParseStatPPid(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want int
		ok   bool
	}{
		{"1234 (sleep) S 77 1234 1234 0 -1", 77, true},
		{"1234 (a) b) (c) R 5 6 7", 5, true}, // comm with ") (" inside
		{"1234 (x y) S 1", 1, true},
		{"1234 sleep S 77", 0, false},
		{"1234 (sleep) S", 0, false},
		{"1234 (sleep) S x", 0, false},
	} {
		got, err := parseStatPPid(tc.stat)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseStatPPid(%q) = %d, %v; want %d ok=%v", tc.stat, got, err, tc.want, tc.ok)
		}
	}
}

func procStatusField(t *testing.T, path, key string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("%s: no %s line", path, key)
	return ""
}

func TestProcessLive(t *testing.T) {
	if !ProcessLive(os.Getpid()) {
		t.Error("this process is not live")
	}
	for stat, want := range map[string]bool{
		"42 (sleep) S 1 42 42 0": true,
		"42 (a) b) R 1 42":       true, // ')' inside comm
		"42 (sleep) Z 1 42 42 0": false,
		"42 (sleep) X 1 42 42 0": false,
	} {
		if got := statLive(stat); got != want {
			t.Errorf("statLive(%q) = %v, want %v", stat, got, want)
		}
	}
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(30 * time.Second)
	for ProcessLive(pid) { // exits, then is a zombie until waited for
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still live", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Wait()
	if ProcessLive(pid) {
		t.Errorf("reaped pid %d is live", pid)
	}
}
