package supervise

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// watcher watches one process through a pidfd. The pidfd is non-blocking and
// handed to Go's poller (os.NewFile), so waiting costs no thread and Close
// ends the wait — the stop path of every watch.
type watcher struct {
	pid    int
	f      *os.File
	exited atomic.Bool
}

// watchPid opens a pidfd for pid. A process already gone gives an error Is
// ESRCH.
func watchPid(pid int) (*watcher, error) {
	fd, err := linux.PidfdOpen(pid)
	if err != nil {
		return nil, err
	}
	return &watcher{pid: pid, f: os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid))}, nil
}

// wait blocks until the process exits (true) or the watcher is closed
// (false).
func (w *watcher) wait() bool {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return false
	}
	var exited bool
	err = rc.Read(func(fd uintptr) bool {
		e, perr := linux.PidfdExited(int(fd))
		exited = e && perr == nil
		return e || perr != nil // false: wait until the pidfd is readable, then ask again
	})
	if err == nil {
		if exited {
			w.exited.Store(true)
		}
		return exited
	}
	if errors.Is(err, os.ErrClosed) {
		return false
	}
	// The poller refused the fd (it should not: pidfds support poll since
	// they exist). Fall back to asking every 50ms until exit or close.
	for {
		var e bool
		cerr := rc.Control(func(fd uintptr) { e, _ = linux.PidfdExited(int(fd)) })
		if cerr != nil {
			return false
		}
		if e {
			w.exited.Store(true)
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// signal sends sig through the pidfd; an exited process is not an error.
func (w *watcher) signal(sig syscall.Signal) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return nil // closed: nothing to signal
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = linux.PidfdSendSignal(int(fd), sig) }); err != nil {
		return nil
	}
	if errors.Is(serr, linux.ESRCH) {
		return nil
	}
	return serr
}

// adoptedStatusWait bounds how long reap waits for the parent of an adopted
// process (usually init, after the old vcore died) to reap it: only then
// does the kernel hand out its exit status through the pidfd.
const adoptedStatusWait = time.Second

// exitStatus returns the exited process's wait status from its pidfd
// (PIDFD_INFO_EXIT, Linux 6.15), waiting up to wait for its parent to reap
// it. The error wraps linux.ErrExitUnknown when the kernel has none.
func (w *watcher) exitStatus(wait time.Duration) (syscall.WaitStatus, error) {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return 0, err
	}
	deadline := time.Now().Add(wait)
	for {
		var st syscall.WaitStatus
		var serr error
		if err := rc.Control(func(fd uintptr) { st, serr = linux.PidfdExitStatus(int(fd)) }); err != nil {
			return 0, err
		}
		if serr == nil || errors.Is(serr, linux.ErrNotSupported) || !errors.Is(serr, linux.ErrExitUnknown) || time.Now().After(deadline) {
			return st, serr
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// describeWait says how a process ended, as os.ProcessState.String does.
func describeWait(st syscall.WaitStatus) string {
	switch {
	case st.Exited():
		return fmt.Sprintf("exit status %d", st.ExitStatus())
	case st.Signaled():
		s := "signal: " + st.Signal().String()
		if st.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("wait status %#x", int(st))
}

// generation is one run of a subsystem: the started child (cmd) or the
// adopted processes, watched until every one has exited.
type generation struct {
	cmd      *exec.Cmd // nil for adopted processes: not our children
	started  time.Time
	watchers []*watcher
	startErr error         // the restart could not start the process
	exited   chan struct{} // closed when every watched process has exited

	closeOnce sync.Once
	wg        sync.WaitGroup // the watcher goroutines
}

// startWatching starts one goroutine per watcher; exited is closed when all
// have seen their process exit. A goroutine ends when its process exits or
// the generation is closed.
func (g *generation) startWatching() {
	if len(g.watchers) == 0 {
		close(g.exited)
		return
	}
	var left atomic.Int32
	left.Store(int32(len(g.watchers)))
	for _, w := range g.watchers {
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if w.wait() && left.Add(-1) == 0 {
				close(g.exited)
			}
		}()
	}
}

// close ends the watches (without touching the processes) and waits for
// the watcher goroutines.
func (g *generation) close() {
	g.closeOnce.Do(func() {
		for _, w := range g.watchers {
			_ = w.f.Close()
		}
	})
	g.wg.Wait()
}

// statusUnknown is LastExit of an adopted process whose exit status the
// kernel does not give (before Linux 6.15, or its parent has not reaped it).
const statusUnknown = "exited (status unknown)"

// reap collects how the generation ended, once every process has exited:
// the child's exit status; for adopted processes the status their pidfds
// give (Linux 6.15 PIDFD_INFO_EXIT), else statusUnknown. clean is true only
// when every status is known and 0; known is false when a status is missing.
func (g *generation) reap() (exit string, clean, known bool) {
	defer g.close()
	switch {
	case g.startErr != nil:
		g.close()
		return "start failed: " + g.startErr.Error(), false, true
	case g.cmd == nil:
		return g.reapAdopted()
	}
	g.close()
	_ = g.cmd.Wait() // the process has exited: this only reaps it
	st := g.cmd.ProcessState
	if st == nil {
		return statusUnknown, false, false
	}
	return st.String(), st.Success(), true
}

// reapAdopted reads the adopted roots' exit statuses from their pidfds
// (before close). With several roots, the first that did not exit 0 is
// reported.
func (g *generation) reapAdopted() (exit string, clean, known bool) {
	g.wg.Wait() // every watcher has seen its process exit (or was closed)
	if len(g.watchers) == 0 {
		return statusUnknown, false, false
	}
	exit, clean = "", true
	for _, w := range g.watchers {
		st, err := w.exitStatus(adoptedStatusWait)
		if err != nil {
			return statusUnknown, false, false
		}
		if d := describeWait(st); exit == "" || (clean && !(st.Exited() && st.ExitStatus() == 0)) {
			exit = d
		}
		clean = clean && st.Exited() && st.ExitStatus() == 0
	}
	return exit + " (adopted; read from its pidfd)", clean, true
}

// signal sends sig to every watched process that has not exited.
func (g *generation) signal(sig syscall.Signal) {
	for _, w := range g.watchers {
		if !w.exited.Load() {
			_ = w.signal(sig)
		}
	}
}

// pids returns the watched pids.
func (g *generation) pids() []int {
	out := make([]int, 0, len(g.watchers))
	for _, w := range g.watchers {
		out = append(out, w.pid)
	}
	return out
}

// alive returns the watched pids whose exit has not been seen.
func (g *generation) alive() []int {
	var out []int
	for _, w := range g.watchers {
		if !w.exited.Load() {
			out = append(out, w.pid)
		}
	}
	return out
}
