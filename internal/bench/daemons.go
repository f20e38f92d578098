package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/api"
)

// Timeouts of a daemon run.
const (
	daemonReadyTimeout = 15 * time.Second
	daemonStopTimeout  = 10 * time.Second
	pollInterval       = 20 * time.Millisecond
)

// daemon is one started `vcored core` or `vcored vcore` child.
type daemon struct {
	name   string // "core", "vcore0"
	socket string
	log    string // its stdout+stderr file
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // after exited is closed
}

// startDaemon starts exe args with output to logPath; env is added to
// the bench's environment.
func startDaemon(name, socket, logPath, exe string, env []string, args ...string) (*daemon, error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("bench: %s log: %w", name, err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	d := &daemon{name: name, socket: socket, log: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		out.Close()
		close(d.exited)
	}()
	return d, nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) dead() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

// logTail is the end of the daemon's output, for error messages.
func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	return tail(string(b), 600)
}

// deadErr describes a daemon that exited on its own.
func (d *daemon) deadErr() error {
	return fmt.Errorf("%s exited early (%v): %s", d.name, d.err, d.logTail())
}

// stop sends SIGTERM and waits; SIGKILL after daemonStopTimeout.
func (d *daemon) stop() error {
	if d.dead() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(daemonStopTimeout):
		_ = d.cmd.Process.Kill()
		<-d.exited
		return fmt.Errorf("%s did not stop within %v after SIGTERM: killed", d.name, daemonStopTimeout)
	}
	var ee *exec.ExitError
	if d.err != nil && !(errors.As(d.err, &ee) && ee.ExitCode() == 0) {
		// A signal exit is expected only if the daemon ignores SIGTERM's
		// clean path; report it.
		return fmt.Errorf("%s stopped with %v: %s", d.name, d.err, d.logTail())
	}
	return nil
}

// waitReady polls path on the daemon's socket until it answers 200.
func (d *daemon) waitReady(ctx context.Context, path string, v any) error {
	c := api.NewClient(d.socket)
	deadline := time.Now().Add(daemonReadyTimeout)
	var last error
	for time.Now().Before(deadline) {
		if d.dead() {
			return d.deadErr()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if last = c.Get(ctx, path, v); last == nil {
			return nil
		}
		time.Sleep(pollInterval)
	}
	return fmt.Errorf("%s not ready after %v (GET %s: %v): %s", d.name, daemonReadyTimeout, path, last, d.logTail())
}

// runDaemons is one local or central run: core and a vcore per partition
// as children, the workers as the vcores' subsystems.
func runDaemons(ctx context.Context, r *DaemonRun, log *slog.Logger) (s RunSample) {
	if err := r.Validate(); err != nil {
		return RunSample{Err: err}
	}
	if err := os.MkdirAll(filepath.Join(r.Dir, "results"), 0o755); err != nil {
		return RunSample{Err: err}
	}
	if err := os.WriteFile(r.CoreConfigPath(), []byte(r.CoreTOML()), 0o644); err != nil {
		return RunSample{Err: err}
	}
	for i := range r.Layout.Partitions {
		if err := os.WriteFile(r.VCoreConfigPath(i), []byte(r.VCoreTOML(i)), 0o644); err != nil {
			return RunSample{Err: err}
		}
	}

	var daemons []*daemon // stopped in reverse order: vcores, then core
	defer func() {
		for _, d := range slices.Backward(daemons) {
			if err := d.stop(); err != nil {
				s.Err = errors.Join(s.Err, err)
			}
		}
	}()

	core, err := startDaemon("core", r.CoreSocket(), filepath.Join(r.Dir, "core.log"), r.Exe, nil,
		"core", "--config", r.CoreConfigPath(), "--pager", string(r.Pager))
	if err != nil {
		return RunSample{Err: err}
	}
	daemons = append(daemons, core)
	var parts []api.Partition
	if err := core.waitReady(ctx, "/v1/partitions", &parts); err != nil {
		return RunSample{Err: err}
	}
	var vcores []*daemon
	for i, p := range r.Layout.Partitions {
		name := fmt.Sprintf("vcore%d", p.Node)
		d, err := startDaemon(name, r.VCoreSocket(i), filepath.Join(r.Dir, name+".log"), r.Exe, nil,
			"vcore", "--config", r.VCoreConfigPath(i))
		if err != nil {
			return RunSample{Err: err}
		}
		daemons = append(daemons, d)
		vcores = append(vcores, d)
	}
	for _, d := range vcores {
		var subs []api.Subsystem
		if err := d.waitReady(ctx, "/v1/subsystems", &subs); err != nil {
			return RunSample{Err: err}
		}
	}

	// Wait for every worker: result file written and subsystem exited.
	timeout := 30*time.Second + time.Duration(r.Pages*r.Workers)*2*time.Millisecond
	if err := waitWorkers(ctx, r, core, vcores, timeout); err != nil {
		s.Err = err
	}

	// What the daemons say, before stopping them.
	s.VmHWM = map[string]uint64{}
	for _, d := range daemons {
		if b, err := vmHWM(d.pid()); err == nil {
			s.VmHWM[d.name] = b
		} else {
			log.Debug("no VmHWM", "daemon", d.name, "err", err)
		}
	}
	collectPagerStats(ctx, &s, core, vcores, log)

	for i := range r.Layout.Partitions {
		for w := range r.Workers {
			res, err := ReadWorkerResult(r.ResultPath(i, w))
			if err != nil {
				s.Err = errors.Join(s.Err, err)
				continue
			}
			s.Results = append(s.Results, res)
		}
	}
	return s
}

// finished subsystem states.
func subsystemDone(state string) bool {
	switch state {
	case "exited", "failed", "stopped", "done":
		return true
	}
	return false
}

func waitWorkers(ctx context.Context, r *DaemonRun, core *daemon, vcores []*daemon, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var lastAsked time.Time
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if core.dead() {
			return core.deadErr()
		}
		// Poll the result files first (a stat, no work for the daemons on
		// the measured CPUs); ask the vcores once every worker wrote, and
		// meanwhile only once a second (to notice a worker that died
		// without a result).
		written := true
		for i := range vcores {
			for w := range r.Workers {
				if _, err := os.Stat(r.ResultPath(i, w)); err != nil {
					written = false
				}
			}
		}
		all := true
		for i, d := range vcores {
			if d.dead() {
				return d.deadErr()
			}
			if !written && time.Since(lastAsked) < time.Second {
				all = false
				continue
			}
			var subs []api.Subsystem
			if i == len(vcores)-1 {
				lastAsked = time.Now()
			}
			if err := api.NewClient(d.socket).Get(ctx, "/v1/subsystems", &subs); err != nil {
				all = false
				continue
			}
			for w := range r.Workers {
				name := r.WorkerName(i, w)
				idx := slices.IndexFunc(subs, func(s api.Subsystem) bool { return s.Name == name })
				if idx < 0 {
					all = false
					continue
				}
				st := subs[idx]
				_, statErr := os.Stat(r.ResultPath(i, w))
				if !subsystemDone(st.State) {
					all = false
					continue
				}
				if statErr != nil {
					return fmt.Errorf("worker %s ended (%s %s) without a result: see %s", name, st.State, st.LastExit,
						filepath.Join(r.Dir, "state"))
				}
			}
		}
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workers not done after %v", timeout)
		}
		time.Sleep(pollInterval)
	}
}

// collectPagerStats reads /v1/pager of the vcores and core (best effort).
func collectPagerStats(ctx context.Context, s *RunSample, core *daemon, vcores []*daemon, log *slog.Logger) {
	matches := func(ds, name string) bool {
		return ds == name || strings.HasSuffix(ds, "/"+name) || strings.HasSuffix(ds, ":"+name)
	}
	var brN float64
	var br [3]float64
	sum := func(ds []*daemon) (faults int64, track, pages uint64, fwdMed, fwdP99 int64) {
		for _, d := range ds {
			var p api.Pager
			if err := api.NewClient(d.socket).Get(ctx, "/v1/pager", &p); err != nil {
				log.Debug("no pager stats", "daemon", d.name, "err", err)
				continue
			}
			// The workers are gone by now: their regions were dropped, so
			// take the pager's high-water mark.
			track += p.PeakTrackingBytes
			pages += p.PeakTrackedPages
			for _, st := range p.Dataspaces {
				if matches(st.Dataspace, LocalDataspace) {
					faults += int64(st.Faults)
					if st.WorkMeanNs > 0 {
						br[0] += st.ReadMeanNs
						br[1] += st.WorkMeanNs
						br[2] += st.IoctlMeanNs
						brN++
					}
				}
				if matches(st.Dataspace, SharedDataspace) && st.ForwardMedianNs > 0 {
					fwdMed, fwdP99 = max(fwdMed, st.ForwardMedianNs), max(fwdP99, st.ForwardP99Ns)
				}
			}
		}
		return
	}
	f, t, p, fm, fp := sum(vcores)
	if f == 0 { // central mode: core's pager served them
		var ct, cp uint64
		f, ct, cp, _, _ = sum([]*daemon{core})
		t, p = t+ct, p+cp
	}
	s.PagerFaults, s.TrackingBytes, s.TrackedPages, s.ForwardMedianNS, s.ForwardP99NS = f, t, p, fm, fp
	if brN > 0 {
		s.PagerReadNS, s.PagerWorkNS, s.PagerIoctlNS = br[0]/brN, br[1]/brN, br[2]/brN
	}
}

// vmHWM reads the peak RSS of pid from /proc/pid/status, in bytes.
func vmHWM(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseVmHWM(f)
}

func parseVmHWM(f interface{ Read([]byte) (int, error) }) (uint64, error) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("bad VmHWM line %q", sc.Text())
		}
		kb, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bad VmHWM line %q: %w", sc.Text(), err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmHWM line")
}

// cgroupRoots are where a cgroup_parent may appear (v1 controllers, the
// v2 unified tree of a hybrid host, or a pure v2 host).
func cgroupRoots() []string {
	roots := []string{"/sys/fs/cgroup"}
	if ents, err := os.ReadDir("/sys/fs/cgroup"); err == nil {
		for _, e := range ents {
			if e.IsDir() {
				roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
			}
		}
	}
	return roots
}

// removeCgroupTrees removes what is left of the cgroup tree parent (the
// bench's own, unique per bench process) in every hierarchy: the daemons
// remove theirs on SIGTERM, so this only acts after a crash. Processes
// still inside are killed first. It returns the paths it could not remove.
func removeCgroupTrees(parent string) []string {
	var left []string
	for _, root := range cgroupRoots() {
		dir := filepath.Join(root, parent)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if err := removeCgroup(dir); err != nil {
			left = append(left, dir)
		}
	}
	return left
}

func removeCgroup(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			_ = removeCgroup(filepath.Join(dir, e.Name()))
		}
	}
	for attempt := 0; attempt < 50; attempt++ {
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("cannot remove cgroup %s", dir)
}
