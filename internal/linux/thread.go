package linux

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vcored/vcored/internal/hw"
)

// SetThreadAffinity pins the calling OS thread to cpus. The caller must
// hold its goroutine on the thread (runtime.LockOSThread), or the pin ends
// up on whatever thread the goroutine happened to run.
func SetThreadAffinity(cpus hw.CPUSet) error {
	var set unix.CPUSet
	for _, c := range cpus.Slice() {
		if c < 0 || int(c) >= len(set)*64 {
			return fmt.Errorf("sched_setaffinity %s: cpu %d: %w", cpus, c, unix.EINVAL)
		}
		set.Set(int(c))
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("sched_setaffinity %s: %w", cpus, err)
	}
	return nil
}

// ThreadAffinity returns the CPUs the calling OS thread may run on.
func ThreadAffinity() (hw.CPUSet, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return hw.CPUSet{}, fmt.Errorf("sched_getaffinity: %w", err)
	}
	var ids []hw.CPU
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			ids = append(ids, hw.CPU(i))
		}
	}
	return hw.NewSet(ids...), nil
}

// Gettid is the calling OS thread's id.
func Gettid() int { return unix.Gettid() }

// Getcpu returns the CPU and node the calling thread is running on now.
func Getcpu() (cpu hw.CPU, node hw.Node, err error) {
	var c, n uint32
	_, _, errno := unix.Syscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&c)), uintptr(unsafe.Pointer(&n)), 0)
	if errno != 0 {
		return 0, 0, fmt.Errorf("getcpu: %w", errno)
	}
	return hw.CPU(c), hw.Node(n), nil
}

// SetThreadIdle moves the calling OS thread to SCHED_IDLE: it runs only
// when nothing else wants its CPU, and any other thread that wakes there
// preempts it. The caller must hold its goroutine on the thread
// (runtime.LockOSThread) and should let the thread end with the goroutine.
func SetThreadIdle() error {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		return fmt.Errorf("sched_setattr SCHED_IDLE: %w", err)
	}
	return nil
}
