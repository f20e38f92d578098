package cgroups

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"

	"github.com/vcored/vcored/internal/linux"
)

// Join moves the calling process (all its threads) into the cgroups whose
// cgroup.procs files are given — on v1 one per controller hierarchy, as
// Group.ProcsFiles returns them. The kernel applies the cpuset at once: the
// caller's threads are pinned when Join returns.
func Join(procsFiles []string) error {
	if len(procsFiles) == 0 {
		return errors.New("cgroups: join: no cgroup.procs file given")
	}
	pid := strconv.Itoa(os.Getpid())
	for _, f := range procsFiles {
		if err := writeFile(f, pid); err != nil {
			return fmt.Errorf("cgroups: join: %w", err)
		}
	}
	return nil
}

// JoinAndExec joins the cgroups (see Join) and then replaces the calling
// process with argv (argv[0] looked up in PATH), keeping the environment.
// The command is inside its cgroups before it runs a single instruction,
// and receives no file descriptor but 0, 1 and 2 (every other one is marked
// close-on-exec first). It returns only on error. This is `vcored exec-in-cgroup`, the shim
// supervise starts subsystems through on v1.
func JoinAndExec(procsFiles []string, argv []string) error {
	if len(argv) == 0 {
		return errors.New("cgroups: exec: no command given")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("cgroups: exec: %w", err)
	}
	if err := Join(procsFiles); err != nil {
		return err
	}
	// Only stdin, stdout and stderr reach the command, whatever the caller
	// of the shim left open without close-on-exec.
	if err := linux.CloseOnExecFrom(3); err != nil {
		return fmt.Errorf("cgroups: exec: %w", err)
	}
	err = syscall.Exec(path, argv, os.Environ())
	return fmt.Errorf("cgroups: exec %s: %w", path, err)
}
