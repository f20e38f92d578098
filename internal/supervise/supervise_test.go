package supervise

import (
	"context"
	"errors"
	"fmt"
	"github.com/vcored/vcored/internal/testutil"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// Real tests: real processes, real cgroups (as root). The exec shim is this
// test binary: started as `<test binary> exec-in-cgroup --procs F... -- cmd`
// with shimEnv set, TestMain does what `vcored exec-in-cgroup` does.

const shimEnv = "VCORED_SUPERVISE_TEST_SHIM"

func TestMain(m *testing.M) {
	if os.Getenv(shimEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "exec-in-cgroup" {
		runShim(os.Args[2:])
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: leaked goroutines: %v\n", err)
			code = 1
		}
	}
	name := fmt.Sprintf("vcored-test-%d", os.Getpid()) // other test binaries run at the same time
	for _, pattern := range []string{cgroups.DefaultRoot + "/" + name, cgroups.DefaultRoot + "/*/" + name} {
		if left, _ := filepath.Glob(pattern); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: test cgroups left behind: %s\n", strings.Join(left, ", "))
			code = 1
		}
	}
	os.Exit(code)
}

// runShim: --procs FILE ... -- argv
func runShim(args []string) {
	var files []string
	for len(args) >= 2 && args[0] == "--procs" {
		files = append(files, args[1])
		args = args[2:]
	}
	if len(args) == 0 || args[0] != "--" {
		fmt.Fprintf(os.Stderr, "test shim: bad arguments %q\n", args)
		os.Exit(127)
	}
	err := cgroups.JoinAndExec(files, args[1:])
	fmt.Fprintln(os.Stderr, "test shim:", err)
	os.Exit(127)
}

func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testGroup creates vcored-test-<pid>/<test>/sub pinned to the last CPU and
// the first node of the root cpuset, deleted (with anything left in it) at
// cleanup. It skips when the host cannot.
func testGroup(t *testing.T) (*cgroups.Group, hw.CPUSet) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	m, err := cgroups.New(cgroups.Options{})
	if errors.Is(err, linux.ErrNotSupported) || errors.Is(err, cgroups.ErrUnavailable) {
		t.Skipf("host cgroups unusable: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	top := fmt.Sprintf("vcored-test-%d", os.Getpid())
	root, err := m.Create(top, cgroups.Resources{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Normally empty already; after a failed test, kill what is left
		// and wait for the kernel to let the processes go.
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if pids, err := root.Procs(); err != nil || len(pids) == 0 {
				break
			}
			_ = root.Kill(syscall.SIGKILL)
		}
		if err := root.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	st, err := root.Stats()
	if err != nil {
		t.Fatal(err)
	}
	cpus := st.CPUs.Slice()
	node, _ := st.Mems.Min()
	pin := hw.NewSet(cpus[len(cpus)-1])
	g, err := m.Create(top+"/"+t.Name()+"/sub", cgroups.Resources{CPUs: pin, Mems: hw.NewSet(node), MemoryLimit: 64 * hw.MiB})
	if err != nil {
		t.Fatal(err)
	}
	return g, pin
}

// groupSpec is a spec running argv in g through the test shim.
func groupSpec(g *cgroups.Group, argv ...string) Spec {
	return Spec{
		Name: "test", Command: argv, Group: g, Shim: os.Args[0], Env: []string{shimEnv + "=1"},
		BackoffInitial: time.Millisecond, BackoffMax: 4 * time.Millisecond, StopGrace: 5 * time.Second,
	}
}

// waitFor polls cond until it holds (or fails the test after 20s: a bound
// for a broken test, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func waitDone(t *testing.T, s *Sub) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("supervision did not end; status %+v", s.Status())
	}
}

// alive reports whether pid exists and is not a zombie (an orphan's zombie
// lingers until init reaps it).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || !strings.HasPrefix(string(b[i+1:]), " Z")
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func procStatus(t *testing.T, pid int, key string) string {
	t.Helper()
	v, err := testutil.ProcStatus(pid, key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// running waits until the group holds exactly n processes that have all
// exec'ed something named name (not the shim any more) and returns them.
func running(t *testing.T, s *Sub, n int, names ...string) []int {
	t.Helper()
	var pids []int
	waitFor(t, fmt.Sprintf("%d processes %v running", n, names), func() bool {
		st := s.Status()
		pids = st.Pids
		if st.State != Running || len(pids) != n {
			return false
		}
		for _, p := range pids {
			if !slices.Contains(names, comm(p)) {
				return false
			}
		}
		return true
	})
	return pids
}

func TestPinnedInCgroup(t *testing.T) {
	g, pin := testGroup(t)
	logPath := filepath.Join(t.TempDir(), "sub.log")
	spec := groupSpec(g, "sh", "-c", "echo hello from $VCORE_SUBSYSTEM; exec sleep 100")
	spec.Env = append(spec.Env, "VCORE_SUBSYSTEM=pinned")
	spec.LogPath = logPath
	s, err := Start(context.Background(), spec, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	pid := running(t, s, 1, "sleep")[0]
	if got := procStatus(t, pid, "Cpus_allowed_list"); got != pin.String() {
		t.Errorf("Cpus_allowed_list = %q, want %q", got, pin)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if !strings.Contains(string(cg), ":/"+g.Path()+"\n") {
		t.Errorf("/proc/%d/cgroup = %q, want %s", pid, cg, g.Path())
	}
	// Own session: a signal to the supervisor's process group misses it.
	if sid, err := syscall.Getpgid(pid); err != nil || sid != pid {
		t.Errorf("pgid of %d = %d, %v; want its own (setsid)", pid, sid, err)
	}
	waitFor(t, "the log line", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "hello from pinned\n")
	})

	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := s.Status()
	if st.State != Stopped || len(st.Pids) != 0 {
		t.Errorf("after Stop: %+v, want stopped with no pids", st)
	}
	if alive(pid) {
		t.Errorf("sleep %d still runs after Stop", pid)
	}
}

func TestRestartBackoffThenFailed(t *testing.T) {
	g, _ := testGroup(t)
	logPath := filepath.Join(t.TempDir(), "sub.log")
	spec := groupSpec(g, "sh", "-c", "echo run; exit 1")
	spec.Restart, spec.MaxRestarts, spec.LogPath = OnFailure, 3, logPath
	s, err := Start(context.Background(), spec, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	st := s.Status()
	if st.State != Failed || st.Restarts != 3 || st.LastExit != "exit status 1" {
		t.Errorf("status %+v, want failed after 3 restarts with exit status 1", st)
	}
	b, _ := os.ReadFile(logPath)
	if n := strings.Count(string(b), "run\n"); n != 4 {
		t.Errorf("command ran %d times (log %q), want 4 (1 + 3 restarts)", n, b)
	}
	if err := s.Stop(context.Background()); err != nil { // nothing left; must not hang
		t.Fatal(err)
	}
}

func TestPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy   Policy
		code     int
		state    State
		restarts int
	}{
		{Never, 1, Failed, 0},
		{Never, 0, Exited, 0},
		{"", 3, Failed, 0},
		{OnFailure, 0, Exited, 0},
		{OnFailure, 2, Failed, 2},
		{Always, 0, Failed, 2}, // restarted although clean, until the limit
	} {
		t.Run(fmt.Sprintf("%s-exit%d", tc.policy, tc.code), func(t *testing.T) {
			logPath := filepath.Join(t.TempDir(), "log")
			spec := Spec{
				Name: "p", Command: []string{"sh", "-c", fmt.Sprintf("echo run; exit %d", tc.code)},
				Restart: tc.policy, MaxRestarts: 2, BackoffInitial: time.Millisecond, LogPath: logPath,
			}
			s, err := Start(context.Background(), spec, testLog(t))
			if err != nil {
				t.Fatal(err)
			}
			waitDone(t, s)
			st := s.Status()
			if st.State != tc.state || st.Restarts != tc.restarts || st.LastExit != fmt.Sprintf("exit status %d", tc.code) {
				t.Errorf("status %+v, want %s after %d restarts", st, tc.state, tc.restarts)
			}
			b, _ := os.ReadFile(logPath)
			if n := strings.Count(string(b), "run\n"); n != tc.restarts+1 {
				t.Errorf("ran %d times, want %d", n, tc.restarts+1)
			}
		})
	}
}

func TestStopKillsAfterGrace(t *testing.T) {
	g, _ := testGroup(t)
	// SIG_IGN for TERM is inherited by sleep too: only SIGKILL ends them.
	spec := groupSpec(g, "sh", "-c", `trap "" TERM; sleep 100; true`)
	spec.StopGrace = 200 * time.Millisecond
	spec.Restart = Always
	s, err := Start(context.Background(), spec, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	pids := running(t, s, 2, "sh", "sleep")
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := s.Status()
	if st.State != Stopped || len(st.Pids) != 0 || st.LastExit != "signal: killed" || st.Restarts != 0 {
		t.Errorf("after Stop: %+v; want stopped, no pids, killed, not restarted", st)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %d (%s) survived Stop", pid, comm(pid))
		}
	}
}

func TestStopTimesOut(t *testing.T) {
	s, err := Start(context.Background(), Spec{Name: "t", Command: []string{"sh", "-c", `trap "" TERM; exec sleep 100`}, StopGrace: time.Hour}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sleep", func() bool { p := s.Status().Pids; return len(p) == 1 && comm(p[0]) == "sleep" })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stop with a short ctx = %v, want DeadlineExceeded", err)
	}
	// The ctx ran out: SIGKILL was sent; a second Stop completes.
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.State != Stopped || st.LastExit != "signal: killed" {
		t.Errorf("status %+v", st)
	}
}

func TestAdoptAfterDetach(t *testing.T) {
	g, pin := testGroup(t)
	spec := groupSpec(g, "sleep", "100")
	spec.Restart, spec.MaxRestarts = OnFailure, 2
	first, err := Start(context.Background(), spec, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	old := running(t, first, 1, "sleep")[0]
	first.Detach() // the vcore "dies": its subsystem keeps running
	if st := first.Status(); st.State != Detached {
		t.Errorf("after Detach: %+v", st)
	}
	if err := syscall.Kill(old, 0); err != nil {
		t.Fatalf("sleep %d did not survive Detach: %v", old, err)
	}
	if err := first.Stop(context.Background()); err == nil {
		t.Error("Stop after Detach succeeded")
	}

	pids, err := g.Procs()
	if err != nil || !slices.Equal(pids, []int{old}) {
		t.Fatalf("group procs = %v, %v; want [%d]", pids, err, old)
	}
	second, err := Adopt(context.Background(), spec, pids, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if st := second.Status(); st.State != Running || !slices.Equal(st.Pids, []int{old}) || st.Restarts != 0 {
		t.Fatalf("adopted status %+v, want running [%d]", st, old)
	}

	// Killed behind the supervisor's back: the pidfd reports it and, once
	// reaped, how it ended (Linux 6.15); the policy restarts it.
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus // we are still its parent (first started it): reap it
	if _, err := syscall.Wait4(old, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	var now int
	waitFor(t, "a restarted sleep", func() bool {
		st := second.Status()
		if st.State == Running && len(st.Pids) == 1 && st.Pids[0] != old && comm(st.Pids[0]) == "sleep" {
			now = st.Pids[0]
			return true
		}
		return false
	})
	st := second.Status()
	want := "signal: killed (adopted; read from its pidfd)"
	if !exitInfoSupported(t) {
		want = statusUnknown
	}
	if st.Restarts != 1 || st.LastExit != want {
		t.Errorf("after the adopted process died: %+v; want 1 restart, last exit %q", st, want)
	}
	if got := procStatus(t, now, "Cpus_allowed_list"); got != pin.String() {
		t.Errorf("restarted process Cpus_allowed_list = %q, want %q", got, pin)
	}
	if err := second.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if pids, err := g.Procs(); err != nil || len(pids) != 0 {
		t.Errorf("group after Stop: %v, %v", pids, err)
	}
}

// Adopting a tree watches its roots: the child of an adopted shell is not a
// root, so its exit alone does not count as the subsystem exiting.
func TestAdoptWatchesRoots(t *testing.T) {
	g, _ := testGroup(t)
	spec := groupSpec(g, "sh", "-c", "sleep 100; sleep 100")
	spec.Restart = Never
	first, err := Start(context.Background(), spec, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	pids := running(t, first, 2, "sh", "sleep")
	first.Detach()
	second, err := Adopt(context.Background(), spec, pids, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	sh, sleeper := pids[0], pids[1]
	if ppid, _ := linux.ParentPid(sh); ppid == sleeper {
		sh, sleeper = sleeper, sh
	}
	if ppid, _ := linux.ParentPid(sleeper); ppid != sh {
		t.Fatalf("pids %v are not a shell and its child", pids)
	}
	waitFor(t, "the first sleep", func() bool { return comm(sleeper) == "sleep" })
	_ = syscall.Kill(sleeper, syscall.SIGKILL) // sh reaps it and starts the second sleep
	waitFor(t, "the second sleep", func() bool {
		p, _ := g.Procs()
		return len(p) == 2 && !slices.Contains(p, sleeper)
	})
	if st := second.Status(); st.State != Running {
		t.Errorf("after a non-root child died: %+v, want running", st)
	}
	_ = syscall.Kill(sh, syscall.SIGKILL)
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(sh, &ws, 0, nil)
	waitDone(t, second) // Never: failed, and the orphaned sleep is killed
	if st := second.Status(); st.State != Failed || len(st.Pids) != 0 {
		t.Errorf("after the root died: %+v, want failed and an empty group", st)
	}
}

func TestAdoptGone(t *testing.T) {
	s, err := Adopt(context.Background(), Spec{Name: "gone", Command: []string{"true"}, Restart: Never}, []int{1 << 23}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	if st := s.Status(); st.State != Exited || st.LastExit != statusUnknown {
		t.Errorf("adopting nothing: %+v, want exited (status unknown)", st)
	}
}

// exitInfoSupported probes whether the kernel gives an exited process's
// status through its pidfd (PIDFD_INFO_EXIT, Linux 6.15).
func exitInfoSupported(t *testing.T) bool {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := linux.PidfdOpen(p.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if _, err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	_, err = linux.PidfdExitStatus(fd)
	if err != nil && !errors.Is(err, linux.ErrNotSupported) {
		t.Fatalf("PidfdExitStatus of a reaped child: %v", err)
	}
	return err == nil
}

// adoptTrigger starts `sh` that exits with code once trigger exists, detaches
// it and adopts it with policy; it returns the adopted Sub and the shell's pid
// (this process is its parent and must reap it).
func adoptTrigger(t *testing.T, policy Policy, code int, trigger string) (*Sub, int) {
	t.Helper()
	g, _ := testGroup(t)
	spec := groupSpec(g, "sh", "-c", fmt.Sprintf(`while ! [ -e %s ]; do sleep 0.02; done; exit %d`, trigger, code))
	spec.Restart, spec.MaxRestarts = policy, 2
	first, err := Start(context.Background(), spec, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	var sh int
	waitFor(t, "the shell", func() bool {
		for _, p := range first.Status().Pids {
			if comm(p) == "sh" {
				sh = p
				return true
			}
		}
		return false
	})
	first.Detach()
	pids, err := g.Procs()
	if err != nil {
		t.Fatal(err)
	}
	second, err := Adopt(context.Background(), spec, pids, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = second.Stop(context.Background()) })
	return second, sh
}

// TestAdoptedExitStatus: an adopted process that exits is reported by its
// real exit status where the kernel gives it: a clean exit is exited, not
// failed, and on-failure does not restart it; exit 3 is a failure.
func TestAdoptedExitStatus(t *testing.T) {
	if !exitInfoSupported(t) {
		t.Skip("the kernel gives no exit status through a pidfd (PIDFD_INFO_EXIT, Linux 6.15)")
	}
	for _, tc := range []struct {
		policy Policy
		code   int
		state  State
		exit   string
	}{
		{Never, 0, Exited, "exit status 0 (adopted; read from its pidfd)"},
		{OnFailure, 0, Exited, "exit status 0 (adopted; read from its pidfd)"},
		{Never, 3, Failed, "exit status 3 (adopted; read from its pidfd)"},
	} {
		t.Run(fmt.Sprintf("%s-exit%d", tc.policy, tc.code), func(t *testing.T) {
			trigger := filepath.Join(t.TempDir(), "go")
			s, sh := adoptTrigger(t, tc.policy, tc.code, trigger)
			reaped := make(chan error, 1)
			go func() { // the parent (this process) reaps it, as init would
				var ws syscall.WaitStatus
				_, err := syscall.Wait4(sh, &ws, 0, nil)
				reaped <- err
			}()
			if err := os.WriteFile(trigger, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			waitDone(t, s)
			if err := <-reaped; err != nil {
				t.Fatal(err)
			}
			if st := s.Status(); st.State != tc.state || st.LastExit != tc.exit || st.Restarts != 0 {
				t.Errorf("status %+v, want %s with %q and no restart", st, tc.state, tc.exit)
			}
		})
	}
}

// TestAdoptedExitStatusUnknown: when the kernel has no status for the
// adopted process (here: its parent does not reap it in time), it is
// "exited (status unknown)", not failed.
func TestAdoptedExitStatusUnknown(t *testing.T) {
	trigger := filepath.Join(t.TempDir(), "go")
	s, sh := adoptTrigger(t, Never, 0, trigger)
	if err := os.WriteFile(trigger, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(sh, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.State != Exited || st.LastExit != statusUnknown {
		t.Errorf("status %+v, want exited with %q", st, statusUnknown)
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := Start(context.Background(), Spec{Name: "x"}, nil); !errors.Is(err, ErrBadSpec) {
		t.Errorf("no command: %v", err)
	}
	if _, err := Start(context.Background(), Spec{Name: "x", Command: []string{"true"}, Restart: "sometimes"}, nil); !errors.Is(err, ErrBadSpec) {
		t.Errorf("bad policy: %v", err)
	}
	if _, err := Start(context.Background(), Spec{Name: "x", Command: []string{"/nonexistent/cmd"}}, nil); err == nil {
		t.Error("starting a missing command succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Start(ctx, Spec{Name: "x", Command: []string{"true"}}, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled ctx: %v", err)
	}
}

// A command the shim cannot exec: the shim exits 127 (after joining nothing).
// On v2 there is no shim (CLONE_INTO_CGROUP): Start itself fails.
func TestShimFailure(t *testing.T) {
	g, _ := testGroup(t)
	s, err := Start(context.Background(), groupSpec(g, "/nonexistent/cmd"), testLog(t))
	if g.Mode() == cgroups.ModeV2 {
		if err == nil {
			s.Stop(context.Background())
			t.Fatal("starting a missing command on cgroup v2 succeeded")
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	waitDone(t, s)
	if st := s.Status(); st.State != Failed || st.LastExit != "exit status 127" {
		t.Errorf("status %+v, want failed with exit status 127", st)
	}
}

// On v2 a process is cloned straight into its group (CLONE_INTO_CGROUP); on
// a hybrid host this runs against the controller-less v2 mount at
// /sys/fs/cgroup/unified, which exercises the same clone and bookkeeping.
func TestV2CloneIntoCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	if cgroups.HostMode() != cgroups.ModeHybrid {
		t.Skipf("needs a hybrid host for a v2 mount without controllers; host mode %q", cgroups.HostMode())
	}
	m, err := cgroups.New(cgroups.Options{Root: cgroups.DefaultRoot + "/unified", Mode: cgroups.ModeV2, V2Controllers: []string{}})
	if err != nil {
		t.Skipf("no usable v2 mount: %v", err)
	}
	top := fmt.Sprintf("vcored-test-%d", os.Getpid())
	for _, viaShim := range []bool{false, true} {
		t.Run(fmt.Sprintf("shim=%v", viaShim), func(t *testing.T) {
			g, err := m.Create(top+"/"+t.Name(), cgroups.Resources{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				root, err := m.Load(top)
				if err == nil {
					err = root.Delete()
				}
				if err != nil {
					t.Errorf("cleanup: %v", err)
				}
			})
			spec := groupSpec(g, "sleep", "100")
			spec.NoCloneIntoCgroup = viaShim
			if !viaShim {
				spec.Shim = "/nonexistent/shim" // proves the shim is not used
			}
			s, err := Start(context.Background(), spec, testLog(t))
			if err != nil {
				t.Fatal(err)
			}
			pid := running(t, s, 1, "sleep")[0]
			cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			if !strings.Contains(string(cg), "0::/"+g.Path()+"\n") {
				t.Errorf("/proc/%d/cgroup = %q, want 0::/%s", pid, cg, g.Path())
			}
			if err := s.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			if st := s.Status(); st.State != Stopped || len(st.Pids) != 0 {
				t.Errorf("after Stop: %+v", st)
			}
		})
	}
}

// TestSubsystemGetsOnlyStdio: a descriptor this process holds without
// close-on-exec (a lock file, as a wrapper that started the daemon may
// leave) does not reach a subsystem, whichever way it is started: no
// cgroup, the v1 exec shim, or CLONE_INTO_CGROUP on v2 (the hybrid host's
// controller-less v2 mount).
func TestSubsystemGetsOnlyStdio(t *testing.T) {
	lock := filepath.Join(t.TempDir(), "daemon.lock")
	fd, err := syscall.Open(lock, syscall.O_RDWR|syscall.O_CREAT, 0o600) // no O_CLOEXEC
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Flock(fd, syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	type variant struct {
		name string
		spec func(t *testing.T) Spec
	}
	variants := []variant{
		{"no-cgroup", func(t *testing.T) Spec { return Spec{Name: "fds", Command: []string{"sleep", "100"}} }},
		{"cgroup-shim", func(t *testing.T) Spec { g, _ := testGroup(t); return groupSpec(g, "sleep", "100") }},
	}
	if os.Geteuid() == 0 && cgroups.HostMode() == cgroups.ModeHybrid {
		variants = append(variants, variant{"v2-clone-into-cgroup", func(t *testing.T) Spec {
			m, err := cgroups.New(cgroups.Options{Root: cgroups.DefaultRoot + "/unified", Mode: cgroups.ModeV2, V2Controllers: []string{}})
			if err != nil {
				t.Skipf("no usable v2 mount: %v", err)
			}
			top := fmt.Sprintf("vcored-test-%d", os.Getpid())
			g, err := m.Create(top+"/"+t.Name(), cgroups.Resources{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if root, err := m.Load(top); err == nil {
					if err := root.Delete(); err != nil {
						t.Errorf("cleanup: %v", err)
					}
				}
			})
			spec := groupSpec(g, "sleep", "100")
			spec.Shim = "/nonexistent/shim" // proves the shim is not used
			return spec
		}})
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			// Each start marks the descriptors close-on-exec in this process:
			// clear the flag again so every variant starts from a leak.
			if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_SETFD, 0); errno != 0 {
				t.Fatal(errno)
			}
			if cloexec, err := linux.FDCloseOnExec(fd); err != nil || cloexec {
				t.Fatalf("lock fd %d close-on-exec = %v, %v before the start", fd, cloexec, err)
			}
			s, err := Start(context.Background(), v.spec(t), testLog(t))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Stop(context.Background())
			pid := running(t, s, 1, "sleep")[0]
			// Right after exec the dynamic loader may still hold a library
			// open (fd 3 -> libc.so.6): that one goes away; an inherited
			// descriptor stays. Read until only 0, 1, 2 remain, a while.
			var fds []string
			deadline := time.Now().Add(5 * time.Second)
			for {
				ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
				if err != nil {
					t.Fatal(err)
				}
				fds = fds[:0]
				for _, e := range ents {
					target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
					fds = append(fds, e.Name()+"->"+target)
				}
				if len(ents) == 3 && ents[0].Name() == "0" && ents[1].Name() == "1" && ents[2].Name() == "2" {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("subsystem %d has fds %v, want only 0, 1, 2 (the lock file is fd %d)", pid, fds, fd)
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := s.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
