// Package supervise runs and watches one subsystem's processes: it starts
// the command already inside its cgroup, restarts it by policy with
// exponential backoff up to a maximum count, stops it (SIGTERM, then SIGKILL
// after a grace period, until the cgroup is empty), and can adopt processes
// it did not start — a restarted vcore finds its subsystems in their cgroups
// and watches them through pidfds instead of starting duplicates.
//
// Processes started here run in their own session (setsid), so a Ctrl-C on
// the supervisor's terminal does not reach them, and with no parent-death
// signal: they survive the supervisor. Their stdout and stderr go to a log
// file opened with O_APPEND, never to a pipe, so a dead supervisor cannot
// kill them with SIGPIPE. They inherit no other file descriptor: every
// descriptor above 2 is marked close-on-exec before a start.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/linux"
)

// Policy says when a subsystem is restarted after its process exits.
type Policy string

// Restart policies.
const (
	Never     Policy = "never"      // never restart (the zero value means Never too)
	OnFailure Policy = "on-failure" // restart after a non-zero exit, a signal, or an unknown status (adopted, old kernel)
	Always    Policy = "always"     // restart after any exit, also a clean one
)

// ParsePolicy checks a policy name from a config file.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case Never, OnFailure, Always:
		return p, nil
	case "":
		return Never, nil
	}
	return "", fmt.Errorf("supervise: unknown restart policy %q (want never, on-failure or always): %w", s, ErrBadSpec)
}

// State is where a supervised subsystem is in its life.
type State string

// States.
const (
	Starting State = "starting" // being started
	Running  State = "running"  // its process runs
	Backoff  State = "backoff"  // exited; waiting to be restarted
	Failed   State = "failed"   // exited with failure and will not be restarted (policy, or too many restarts)
	Stopped  State = "stopped"  // stopped by Stop
	Exited   State = "exited"   // exited cleanly and the policy does not restart it
	Detached State = "detached" // no longer supervised (Detach); its processes were left alone
)

// Defaults for zero Spec fields.
const (
	DefaultMaxRestarts    = 5
	DefaultBackoffInitial = 100 * time.Millisecond
	DefaultBackoffMax     = 30 * time.Second
	DefaultStopGrace      = 10 * time.Second
	DefaultStableAfter    = 10 * time.Second
)

// ErrBadSpec is wrapped by errors about an invalid Spec.
var ErrBadSpec = errors.New("supervise: bad spec")

// Spec describes one subsystem to supervise.
type Spec struct {
	Name    string   // for logs and status
	Command []string // argv; Command[0] is looked up in PATH
	Env     []string // "K=V" added to the supervisor's environment (VCORE_SOCKET, ...)
	Dir     string   // working directory; empty = the supervisor's

	// Group is the cgroup the processes run in; nil runs them without one.
	// On v1 a process joins it through the exec shim before exec; on v2 it
	// is cloned straight into it (CLONE_INTO_CGROUP).
	Group *cgroups.Group
	// Shim is the vcored binary whose hidden `exec-in-cgroup` subcommand
	// joins the cgroup and execs the command; default os.Executable().
	Shim string
	// NoCloneIntoCgroup makes v2 use the shim too instead of CLONE_INTO_CGROUP.
	NoCloneIntoCgroup bool

	// LogPath receives stdout and stderr (appended); empty = /dev/null.
	LogPath string

	Restart Policy // zero = Never
	// MaxRestarts is how many restarts in a row (without a run of at least
	// StableAfter in between) are made before the subsystem is marked
	// failed; 0 = DefaultMaxRestarts.
	MaxRestarts int
	// BackoffInitial is the delay before the first restart, doubled for each
	// further one up to BackoffMax.
	BackoffInitial, BackoffMax time.Duration
	// StableAfter: a process that ran at least this long resets the backoff
	// and the restart streak.
	StableAfter time.Duration
	// StopGrace is how long Stop waits after SIGTERM before SIGKILL.
	StopGrace time.Duration
}

// Status is a snapshot of a supervised subsystem.
type Status struct {
	Name     string
	State    State
	Pids     []int     // its live processes (the whole cgroup when it has one)
	Restarts int       // restarts made so far (in total)
	LastExit string    // how the last process ended ("exit status 1", "signal: killed", ...)
	Since    time.Time // when State was entered
}

// Sub is one supervised subsystem. Its methods are safe for concurrent use.
type Sub struct {
	spec Spec
	log  *slog.Logger

	mu       sync.Mutex
	state    State
	since    time.Time
	restarts int
	streak   int // restarts since the last stable run
	lastExit string
	gen      *generation // the processes being watched; nil while none
	stopping bool        // Stop was called
	detached bool        // Detach was called

	wake chan struct{} // closed by Stop/Detach: ends a backoff wait
	done chan struct{} // closed when the supervision goroutine has returned
}

// Start starts spec's command and supervises it. ctx bounds only the start:
// a canceled ctx starts nothing; supervision lasts until Stop or Detach.
// If the first start fails (the shim or command cannot be run), the error is
// returned and nothing is left running or supervised.
func Start(ctx context.Context, spec Spec, log *slog.Logger) (*Sub, error) {
	s, err := newSub(ctx, spec, log)
	if err != nil {
		return nil, err
	}
	s.setState(Starting)
	gen, err := s.spawn()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.gen = gen
	s.state, s.since = Running, time.Now()
	s.mu.Unlock()
	go s.run(gen)
	return s, nil
}

// Adopt supervises processes that already run (found in the subsystem's
// cgroup after a vcore restart). The supervisor is not their parent, so it
// watches them through pidfds (readable when a process exits) and reads
// their exit status from the pidfd once their parent has reaped them (Linux
// 6.15 PIDFD_INFO_EXIT; reap waits up to a second for that). Where the
// kernel gives none, LastExit is "exited (status unknown)" and the state
// Exited, not Failed; the on-failure policy still restarts it (an unknown
// status may be a failure). Of pids, the roots — those
// whose parent is not among pids — are watched; the subsystem has exited
// when every root has. Pids already gone are skipped; if none is left, the
// subsystem is treated as having just exited.
func Adopt(ctx context.Context, spec Spec, pids []int, log *slog.Logger) (*Sub, error) {
	s, err := newSub(ctx, spec, log)
	if err != nil {
		return nil, err
	}
	gen := &generation{started: time.Now(), exited: make(chan struct{})}
	for _, pid := range roots(pids) {
		w, err := watchPid(pid)
		if errors.Is(err, linux.ESRCH) {
			continue
		}
		if err != nil {
			gen.close()
			return nil, fmt.Errorf("supervise %s: adopt pid %d: %w", spec.Name, pid, err)
		}
		gen.watchers = append(gen.watchers, w)
	}
	gen.startWatching()
	s.mu.Lock()
	s.gen = gen
	s.state, s.since = Running, time.Now()
	s.mu.Unlock()
	s.log.Info("adopted running subsystem", "pids", gen.pids())
	go s.run(gen)
	return s, nil
}

func newSub(ctx context.Context, spec Spec, log *slog.Logger) (*Sub, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("supervise %s: %w", spec.Name, err)
	}
	if len(spec.Command) == 0 {
		return nil, fmt.Errorf("supervise %s: no command: %w", spec.Name, ErrBadSpec)
	}
	p, err := ParsePolicy(string(spec.Restart))
	if err != nil {
		return nil, fmt.Errorf("supervise %s: %w", spec.Name, err)
	}
	spec.Restart = p
	if spec.MaxRestarts <= 0 {
		spec.MaxRestarts = DefaultMaxRestarts
	}
	if spec.BackoffInitial <= 0 {
		spec.BackoffInitial = DefaultBackoffInitial
	}
	if spec.BackoffMax <= 0 {
		spec.BackoffMax = DefaultBackoffMax
	}
	if spec.BackoffMax < spec.BackoffInitial {
		spec.BackoffMax = spec.BackoffInitial
	}
	if spec.StableAfter <= 0 {
		spec.StableAfter = DefaultStableAfter
	}
	if spec.StopGrace <= 0 {
		spec.StopGrace = DefaultStopGrace
	}
	if spec.Group != nil && spec.Shim == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("supervise %s: find the vcored binary for the exec shim: %w", spec.Name, err)
		}
		spec.Shim = exe
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sub{
		spec: spec,
		log:  log.With("subsystem", spec.Name),
		wake: make(chan struct{}),
		done: make(chan struct{}),
	}, nil
}

// Status returns a snapshot.
func (s *Sub) Status() Status {
	s.mu.Lock()
	st := Status{Name: s.spec.Name, State: s.state, Restarts: s.restarts, LastExit: s.lastExit, Since: s.since}
	gen := s.gen
	s.mu.Unlock()
	if s.spec.Group != nil {
		if pids, err := s.spec.Group.Procs(); err == nil {
			st.Pids = pids
			return st
		}
	}
	if gen != nil {
		st.Pids = gen.alive()
	}
	return st
}

// Done is closed when supervision has ended: the subsystem exited for good
// (Exited or Failed), or Stop or Detach returned.
func (s *Sub) Done() <-chan struct{} { return s.done }

// Stop ends the subsystem: SIGTERM to every process (the whole cgroup), then
// SIGKILL after StopGrace, and waits until every process is gone (and the
// cgroup is empty). It returns ctx's error if ctx ends first; the processes
// have then been sent SIGKILL but may not be gone yet. Stop after Detach is
// an error.
func (s *Sub) Stop(ctx context.Context) error {
	s.mu.Lock()
	if s.detached {
		s.mu.Unlock()
		return fmt.Errorf("supervise %s: stop after detach", s.spec.Name)
	}
	if !s.stopping {
		s.stopping = true
		close(s.wake)
	}
	s.mu.Unlock()

	s.signal(syscall.SIGTERM)
	grace := time.NewTimer(s.spec.StopGrace)
	defer grace.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	killed := false
	for {
		if s.gone() {
			break
		}
		select {
		case <-ctx.Done():
			if !killed {
				s.signal(syscall.SIGKILL)
			}
			return fmt.Errorf("supervise %s: stop: %w", s.spec.Name, ctx.Err())
		case <-grace.C:
			if !killed {
				s.log.Warn("still running after the stop grace period; sending SIGKILL", "grace", s.spec.StopGrace)
				s.signal(syscall.SIGKILL)
				killed = true
			}
		case <-tick.C:
			if killed { // a process forked between two kills: repeat
				s.signal(syscall.SIGKILL)
			}
		}
	}
	<-s.done
	s.setState(Stopped)
	s.log.Info("stopped")
	return nil
}

// Detach stops supervising without touching the processes: they keep
// running (this is what a dying vcore amounts to; tests use it to prepare an
// Adopt). Processes Start made remain children of this process: they become
// zombies when they exit, until this process exits or reaps them.
func (s *Sub) Detach() {
	s.mu.Lock()
	if s.detached || s.stopping {
		s.mu.Unlock()
		<-s.done
		return
	}
	s.detached = true
	close(s.wake)
	gen := s.gen
	s.mu.Unlock()
	if gen != nil {
		gen.close() // ends the watchers; the run loop sees detached
	}
	<-s.done
	s.setState(Detached)
}

// gone reports whether no process of the subsystem is left: the supervision
// goroutine has finished and the cgroup (if any) is empty.
func (s *Sub) gone() bool {
	select {
	case <-s.done:
	default:
		return false
	}
	if s.spec.Group == nil {
		return true
	}
	pids, err := s.spec.Group.Procs()
	return err == nil && len(pids) == 0
}

// signal sends sig to the watched processes and to the whole cgroup.
func (s *Sub) signal(sig syscall.Signal) {
	s.mu.Lock()
	gen := s.gen
	s.mu.Unlock()
	if gen != nil {
		gen.signal(sig)
	}
	if s.spec.Group != nil {
		if err := s.spec.Group.Kill(sig); err != nil {
			s.log.Warn("signal cgroup", "signal", sig, "err", err)
		}
	}
}

func (s *Sub) setState(st State) {
	s.mu.Lock()
	s.state, s.since = st, time.Now()
	s.mu.Unlock()
}

// run is the supervision goroutine: wait for the generation to exit, decide,
// back off, start the next one.
func (s *Sub) run(gen *generation) {
	defer close(s.done)
	for {
		select {
		case <-gen.exited:
		case <-s.wake:
			s.mu.Lock()
			detached := s.detached
			s.mu.Unlock()
			if detached {
				gen.close() // Detach closes it too; whoever is first
				return
			}
			<-gen.exited // stopping: Stop signals the processes; wait for them to go
		}
		exit, clean, known := gen.reap()
		ran := time.Since(gen.started)
		s.emptyGroup()

		s.mu.Lock()
		s.lastExit = exit
		s.gen = nil
		if s.stopping {
			s.mu.Unlock()
			return
		}
		if ran >= s.spec.StableAfter {
			s.streak = 0
		}
		restart := s.spec.Restart == Always || (s.spec.Restart == OnFailure && !clean)
		switch {
		case !restart && (clean || !known):
			// An unknown status (an adopted process on a kernel without
			// PIDFD_INFO_EXIT) is not reported as a failure.
			s.state, s.since = Exited, time.Now()
			s.mu.Unlock()
			s.log.Info("exited", "status", exit)
			return
		case !restart:
			s.state, s.since = Failed, time.Now()
			s.mu.Unlock()
			s.log.Error("failed; restart policy does not restart it", "status", exit, "policy", s.spec.Restart)
			return
		case s.streak >= s.spec.MaxRestarts:
			s.state, s.since = Failed, time.Now()
			s.mu.Unlock()
			s.log.Error("failed; giving up after too many restarts in a row", "status", exit, "restarts", s.streak)
			return
		}
		delay := s.spec.BackoffInitial << min(s.streak, 30)
		if delay > s.spec.BackoffMax || delay <= 0 {
			delay = s.spec.BackoffMax
		}
		s.streak++
		s.restarts++
		s.state, s.since = Backoff, time.Now()
		s.mu.Unlock()
		s.log.Warn("exited; restarting after backoff", "status", exit, "backoff", delay, "restart", s.streak, "max", s.spec.MaxRestarts)

		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.wake:
			t.Stop()
			return
		}

		s.mu.Lock()
		if s.stopping || s.detached {
			s.mu.Unlock()
			return
		}
		s.state, s.since = Starting, time.Now()
		next, err := s.spawn() // under mu: Stop cannot miss a process started now
		if err != nil {
			// Counts as an immediate exit with failure.
			next = &generation{started: time.Now(), exited: make(chan struct{}), startErr: err}
			close(next.exited)
		} else {
			s.state, s.since = Running, time.Now()
		}
		s.gen = next
		s.mu.Unlock()
		gen = next
	}
}

// emptyGroup kills what the exited main process left in the cgroup, so a
// restart never runs next to leftovers of the previous run.
func (s *Sub) emptyGroup() {
	g := s.spec.Group
	if g == nil {
		return
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := g.Procs()
		if err != nil || len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.log.Error("processes left in the cgroup after its main process exited", "pids", pids)
			return
		}
		_ = g.Kill(syscall.SIGKILL)
		time.Sleep(10 * time.Millisecond)
	}
}

// spawn starts one process of the subsystem, already inside its cgroup.
func (s *Sub) spawn() (*generation, error) {
	sp := s.spec
	argv := sp.Command
	attr := &syscall.SysProcAttr{Setsid: true}
	var cgdir *os.File
	if sp.Group != nil {
		if dir, ok := sp.Group.UnifiedDir(); ok && !sp.NoCloneIntoCgroup {
			// v2: clone3(CLONE_INTO_CGROUP) puts the child in the group atomically.
			f, err := os.Open(dir)
			if err != nil {
				return nil, fmt.Errorf("supervise %s: open cgroup %s: %w", sp.Name, dir, err)
			}
			cgdir = f
			attr.UseCgroupFD, attr.CgroupFD = true, int(f.Fd())
		} else {
			// v1: the shim writes its pid into each hierarchy's cgroup.procs, then execs.
			argv = []string{sp.Shim, "exec-in-cgroup"}
			for _, f := range sp.Group.ProcsFiles() {
				argv = append(argv, "--procs", f)
			}
			argv = append(append(argv, "--"), sp.Command...)
		}
	}
	if cgdir != nil {
		defer cgdir.Close()
	}

	out, err := s.openLog()
	if err != nil {
		return nil, err
	}
	defer out.Close() // the child has its own copy

	// The child gets stdin (/dev/null), stdout and stderr, nothing else: a
	// descriptor this process inherited without close-on-exec (a lock file
	// held by whoever started the daemon, ...) must not reach subsystems.
	// Marked here, before every start, it also covers descriptors opened
	// since the daemon started; the v1 shim marks them again child-side.
	if err := linux.CloseOnExecFrom(3); err != nil {
		return nil, fmt.Errorf("supervise %s: %w", sp.Name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), sp.Env...)
	cmd.Dir = sp.Dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("supervise %s: start %q: %w", sp.Name, argv, err)
	}
	w, err := watchPid(cmd.Process.Pid) // our unreaped child: the pid cannot be reused yet
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("supervise %s: watch pid %d: %w", sp.Name, cmd.Process.Pid, err)
	}
	gen := &generation{cmd: cmd, started: time.Now(), watchers: []*watcher{w}, exited: make(chan struct{})}
	gen.startWatching()
	s.log.Info("started", "pid", cmd.Process.Pid, "command", sp.Command)
	return gen, nil
}

// openLog opens the subsystem's log for appending, with a marker line.
func (s *Sub) openLog() (*os.File, error) {
	if s.spec.LogPath == "" {
		f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("supervise %s: %w", s.spec.Name, err)
		}
		return f, nil
	}
	f, err := os.OpenFile(s.spec.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("supervise %s: open log: %w", s.spec.Name, err)
	}
	fmt.Fprintf(f, "--- vcored: starting %s %q at %s\n", s.spec.Name, s.spec.Command, time.Now().Format(time.RFC3339))
	return f, nil
}

// roots returns the pids whose parent is not among pids (the top processes
// of the subsystem's tree), in order. Pids already gone are dropped.
func roots(pids []int) []int {
	var out []int
	for _, pid := range pids {
		ppid, err := linux.ParentPid(pid)
		if err != nil {
			continue
		}
		if !slices.Contains(pids, ppid) {
			out = append(out, pid)
		}
	}
	return out
}
