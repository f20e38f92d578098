package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/vcored/vcored/internal/cgroups"
)

// exitExecFailed is the exit status of the exec shim when it cannot join a
// cgroup or exec the command — the shell's "command not found" code, so a
// supervisor can tell a shim failure from the command's own exit codes.
const exitExecFailed = 127

// procsFlags collects repeated --procs values.
type procsFlags []string

func (p *procsFlags) String() string     { return strings.Join(*p, ",") }
func (p *procsFlags) Set(v string) error { *p = append(*p, v); return nil }

// runExecInCgroup is the hidden `vcored exec-in-cgroup --procs FILE
// [--procs FILE...] -- cmd args...`: it writes its own pid into each
// cgroup.procs file (joining the group in every v1 controller hierarchy, or
// the one v2 group), then execs cmd (looked up in PATH) with the environment
// it was given. The command is thus inside its cgroup — pinned, its memory
// charged — before it runs a single instruction. No parent-death signal is
// set: subsystems must survive their vcore. On any failure it prints the
// reason on stderr and exits 127; on success it never returns.
func runExecInCgroup(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "exec-in-cgroup", "--procs FILE [--procs FILE...] -- command [args...]")
	var procs procsFlags
	fs.Var(&procs, "procs", "a cgroup.procs `file` to write this process's pid into (repeatable; one per v1 controller)")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		fmt.Fprintf(e.stderr, "vcored exec-in-cgroup: %v\n", err)
		os.Exit(exitExecFailed)
	}
	if len(procs) == 0 || fs.NArg() == 0 {
		fmt.Fprintln(e.stderr, "vcored exec-in-cgroup: need at least one --procs file and a command after --")
		os.Exit(exitExecFailed)
	}
	err := cgroups.JoinAndExec(procs, fs.Args())
	fmt.Fprintf(e.stderr, "vcored exec-in-cgroup: %v\n", err)
	os.Exit(exitExecFailed)
	return err // not reached
}
