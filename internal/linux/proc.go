package linux

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vcored/vcored/internal/hw"
)

// This file holds process-level helpers: pidfds, signals, process-wide CPU
// affinity and /proc readers. (Per-thread helpers live in thread*.go.)

// PidfdOpen returns a pidfd for pid (pidfd_open(2), Linux 5.3). The fd is
// close-on-exec and non-blocking (PIDFD_NONBLOCK), so it can be handed to
// Go's poller (os.NewFile): it becomes readable when the process exits. The
// caller owns the fd. A missing process gives an error Is ESRCH.
func PidfdOpen(pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) {
			return -1, &UnsupportedError{Feature: "pidfd_open", Hint: "Linux 5.3"}
		}
		return -1, sysErr(fmt.Sprintf("pidfd_open pid %d", pid), err)
	}
	return fd, nil
}

// PidfdSendSignal sends sig to the process pidfd refers to
// (pidfd_send_signal(2)). Unlike kill(2) it cannot hit a recycled pid. A
// process that has already exited gives an error Is ESRCH.
func PidfdSendSignal(pidfd int, sig syscall.Signal) error {
	err := unix.PidfdSendSignal(pidfd, sig, nil, 0)
	if errors.Is(err, unix.ENOSYS) {
		return &UnsupportedError{Feature: "pidfd_send_signal", Hint: "Linux 5.1"}
	}
	return sysErr(fmt.Sprintf("pidfd_send_signal fd %d %v", pidfd, sig), err)
}

// PidfdExited reports, without blocking, whether the process pidfd refers to
// has exited (the pidfd polls readable). It works for processes that are not
// the caller's children, where waitid(2) cannot be used.
func PidfdExited(pidfd int) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, sysErr(fmt.Sprintf("poll pidfd %d", pidfd), err)
		}
		return n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0, nil
	}
}

// Kill sends sig to pid (kill(2)), keeping errno identity (ESRCH when the
// process is gone). Prefer PidfdSendSignal when a pidfd is at hand.
func Kill(pid int, sig syscall.Signal) error {
	return sysErr(fmt.Sprintf("kill pid %d %v", pid, sig), unix.Kill(pid, sig))
}

// PinProcess sets the CPU affinity of every thread of the calling process to
// cpus (sched_setaffinity on each task in /proc/self/task). Threads created
// later inherit the affinity of their creator, so the whole process stays on
// cpus. It repeats until a pass finds no thread it had not yet pinned, so a
// thread started during the call is not missed.
func PinProcess(cpus hw.CPUSet) error {
	if cpus.IsEmpty() {
		return fmt.Errorf("pin process: empty CPU set: %w", EINVAL)
	}
	var set unix.CPUSet
	set.Zero()
	for _, c := range cpus.Slice() {
		set.Set(int(c))
	}
	done := map[int]bool{}
	for {
		tids, err := taskIDs("/proc/self/task")
		if err != nil {
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if done[tid] {
				continue
			}
			fresh++
			err := unix.SchedSetaffinity(tid, &set)
			if errors.Is(err, unix.ESRCH) { // the thread exited meanwhile
				continue
			}
			if err != nil {
				return sysErr(fmt.Sprintf("sched_setaffinity tid %d cpus %s", tid, cpus), err)
			}
			done[tid] = true
		}
		if fresh == 0 {
			return nil
		}
	}
}

// ProcessAffinity returns the CPU affinity of pid (of its main thread;
// sched_getaffinity(2)). pid 0 means the calling thread.
func ProcessAffinity(pid int) (hw.CPUSet, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(pid, &set); err != nil {
		return hw.CPUSet{}, sysErr(fmt.Sprintf("sched_getaffinity pid %d", pid), err)
	}
	var cpus []hw.CPU
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, hw.CPU(i))
		}
	}
	return hw.NewSet(cpus...), nil
}

// ParentPid returns the parent pid of pid, from /proc/<pid>/stat. A missing
// process gives an error Is ENOENT (fs.ErrNotExist).
func ParentPid(pid int) (int, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return parseStatPPid(string(b))
}

// ProcessLive reports whether pid names a live process: it exists and is
// not a zombie (whose memory is gone already), from /proc/<pid>/stat.
func ProcessLive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	return statLive(string(b))
}

// statLive reads field 3 (state) of a /proc/<pid>/stat line: Z (zombie)
// and X (dead) are not live.
func statLive(stat string) bool {
	i := strings.LastIndexByte(stat, ')')
	f := strings.Fields(stat[i+1:])
	return i < 0 || len(f) == 0 || (f[0] != "Z" && f[0] != "X")
}

// parseStatPPid extracts field 4 (ppid) of a /proc/<pid>/stat line. The comm
// field (2) is in parentheses and may itself hold spaces and ')', so the
// fields are counted after the last ')'.
func parseStatPPid(stat string) (int, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc stat %q: no comm field", stat)
	}
	f := strings.Fields(stat[i+1:]) // state ppid pgrp ...
	if len(f) < 2 {
		return 0, fmt.Errorf("parse /proc stat %q: too few fields", stat)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, fmt.Errorf("parse /proc stat ppid %q: %w", f[1], err)
	}
	return ppid, nil
}

// taskIDs lists the thread ids in a /proc/<pid>/task directory.
func taskIDs(dir string) ([]int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list threads in %s: %w", dir, err)
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
