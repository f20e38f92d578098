// Command vcored is a NUMA-partitioned resource manager: a root core daemon
// hands CPU and memory partitions to per-node vcore daemons, which run
// subsystems in cpuset cgroups and serve their page faults locally with
// userfaultfd. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes, as documented in the README.
const (
	exitOK      = 0
	exitFailure = 1 // runtime failure
	exitUsage   = 2 // bad usage or bad configuration: nothing was changed
)

// env is what every subcommand gets: its streams and logger. Subcommands
// write results to stdout, diagnostics to the logger (stderr).
type env struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
	hidden  bool // internal helpers (the exec shim, the bench worker)
}

// commands is the table of subcommands; each lives in its own file.
var commands = []command{
	{name: "topology", summary: "show the machine's NUMA nodes, CPUs, caches and distances", run: runTopology},
	{name: "check", summary: "validate core and vcore configuration files", run: runCheck},
	{name: "core", summary: "run the root daemon that owns the machine and leases partitions", run: runCore},
	{name: "vcore", summary: "run a per-node daemon: subsystems, cgroups and local pagers", run: runVcore},
	{name: "nri", summary: "run the containerd NRI plugin: place annotated pods' containers on the vcores' partitions", run: runNRI},
	{name: "status", summary: "show partitions, vcores and subsystems of a running core or vcore", run: runStatus},
	{name: "bench", summary: "compare local pagers with the single-pager baseline", run: runBench},
	{name: "worker", summary: "a worker that attaches dataspaces and touches pages (used by bench and tests)", run: runWorker},
	{name: "exec-in-cgroup", summary: "internal: join cgroups, then exec a subsystem command", run: runExecInCgroup, hidden: true},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr, log: newLogger(stderr)}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return exitCode(e, c.name, c.run(ctx, e, args[1:]))
	}
	fmt.Fprintf(stderr, "vcored: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: vcored <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		if !c.hidden {
			fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(w, "\nRun 'vcored <command> --help' for a command's flags.\nExit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.\n")
}

func newLogger(w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("VCORED_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// usageError marks an error as the caller's: bad flags, bad config, a
// refused claim. It maps to exit code 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// usagef returns a usageError with a formatted message.
func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// asUsage wraps err (if any) as a usage error.
func asUsage(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

func exitCode(e *env, name string, err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, new(usageError)):
		fmt.Fprintf(e.stderr, "vcored %s: %v\n", name, err)
		return exitUsage
	default:
		fmt.Fprintf(e.stderr, "vcored %s: %v\n", name, err)
		return exitFailure
	}
}

// newFlagSet returns a FlagSet whose parse errors are usage errors and
// whose --help prints the command's summary and flags.
func newFlagSet(e *env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: vcored %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args; a bad flag is a usage error, --help is ErrHelp.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	return nil
}
