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
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/vcored/vcored/internal/config"
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
	// geteuid is os.Geteuid; tests replace it to see what a non-root
	// user is told.
	geteuid func() int
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
	{name: "checkpoint", summary: "write a checkpoint of a subsystem's persistent dataspaces", run: runCheckpoint},
	{name: "move", summary: "move a subsystem to another node (live or restart), or back", run: runMove},
	{name: "bench", summary: "compare local pagers with the single-pager baseline", run: runBench},
	{name: "worker", summary: "a worker that attaches dataspaces and touches pages (used by bench and tests)", run: runWorker},
	{name: "move-worker", summary: "internal: the subsystem the move benchmark moves", run: runMoveWorker, hidden: true},
	{name: "exec-in-cgroup", summary: "internal: join cgroups, then exec a subsystem command", run: runExecInCgroup, hidden: true},
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	return runEnv(&env{stdout: stdout, stderr: stderr, log: newLogger(stderr), geteuid: os.Geteuid}, args)
}

func runEnv(e *env, args []string) int {
	stdout, stderr := e.stdout, e.stderr
	switch {
	case len(args) == 0:
		usage(stderr)
		return exitUsage
	case args[0] == "-h" || args[0] == "--help" || args[0] == "-help" || args[0] == "help":
		usage(stdout)
		return exitOK
	case args[0] == "--version" || args[0] == "-version" || args[0] == "version":
		printVersion(stdout)
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
	if strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(stderr, "vcored: flag %s before the command: flags follow it (vcored <command> [flags]); run 'vcored --help'\n", args[0])
		return exitUsage
	}
	if s := suggest(args[0]); s != "" {
		fmt.Fprintf(stderr, "vcored: unknown command %q; did you mean %q?\nRun 'vcored --help' for the list of commands.\n", args[0], s)
		return exitUsage
	}
	fmt.Fprintf(stderr, "vcored: unknown command %q\n\n", args[0])
	usage(stderr)
	return exitUsage
}

// suggest returns the visible command closest to a mistyped name (edit
// distance at most 2, or a prefix of it), or "".
func suggest(name string) string {
	best, bestD := "", 3
	for _, c := range commands {
		if c.hidden {
			continue
		}
		d := editDistance(name, c.name)
		if len(name) >= 2 && strings.HasPrefix(c.name, name) {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = c.name, d
		}
	}
	return best
}

// editDistance is the Damerau-Levenshtein distance (optimal string
// alignment: insertions, deletions, substitutions and swaps of adjacent
// bytes each cost 1) between a and b.
func editDistance(a, b string) int {
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

// printVersion prints the module version and the VCS stamp the Go
// toolchain recorded in the binary (debug.ReadBuildInfo).
func printVersion(w io.Writer) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintln(w, "vcored: no build information in this binary")
		return
	}
	fmt.Fprint(w, versionString(bi))
}

// versionString formats bi as `vcored --version` prints it.
func versionString(bi *debug.BuildInfo) string {
	var b strings.Builder
	version := bi.Main.Version
	if version == "" {
		version = "(unknown)"
	}
	fmt.Fprintf(&b, "vcored %s (module %s, %s)\n", version, bi.Main.Path, bi.GoVersion)
	set := map[string]string{}
	for _, s := range bi.Settings {
		set[s.Key] = s.Value
	}
	if rev := set["vcs.revision"]; rev != "" {
		fmt.Fprintf(&b, "revision %s", rev)
		if t := set["vcs.time"]; t != "" {
			fmt.Fprintf(&b, ", committed %s", t)
		}
		if set["vcs.modified"] == "true" {
			b.WriteString(", with uncommitted changes")
		}
		b.WriteString("\n")
	} else {
		b.WriteString("revision unknown (built without VCS stamping: outside a git checkout, in a git worktree, or with -buildvcs=false)\n")
	}
	return b.String()
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: vcored <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		if !c.hidden {
			fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(w, "\nRun 'vcored <command> --help' for a command's flags, 'vcored --version' for the build.\nExit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.\n")
}

func newLogger(w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv("VCORED_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// daemonLogger is the logger of a daemon whose file sets log_level:
// that level, unless VCORED_DEBUG asks for debug.
func daemonLogger(e *env, l config.LogLevel) *slog.Logger {
	lvl, ok := slogLevel(l)
	if !ok || os.Getenv("VCORED_DEBUG") != "" {
		return e.log
	}
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: lvl}))
}

// slogLevel maps a config log level to slog's.
func slogLevel(l config.LogLevel) (slog.Level, bool) {
	switch l {
	case config.LogDebug:
		return slog.LevelDebug, true
	case config.LogInfo:
		return slog.LevelInfo, true
	case config.LogWarn:
		return slog.LevelWarn, true
	case config.LogError:
		return slog.LevelError, true
	}
	return 0, false
}

// needRoot refuses to run a daemon as another user, before it reads or
// creates anything: what it does needs root, and the first failure (a state
// directory, a cgroup) would not say so.
func needRoot(e *env, why string) error {
	if uid := e.geteuid(); uid != 0 {
		return usagef("must run as root (%s); you are uid %d: run it with sudo, or as the systemd unit in contrib/systemd", why, uid)
	}
	return nil
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
// whose --help prints the command's synopsis and flags on stdout.
func newFlagSet(e *env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(e.stdout, "usage: vcored %s %s\n\nflags:\n", name, synopsis)
		fs.SetOutput(e.stdout)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// parseFlags parses args. --help prints the usage and returns ErrHelp; a
// bad flag is a usage error, printed once (by exitCode) with a pointer to
// --help, not followed by the whole usage.
func parseFlags(fs *flag.FlagSet, args []string) error {
	usage := fs.Usage
	fs.Usage = func() {} // the flag package calls it on every error
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	fs.Usage = usage
	if err == nil {
		return nil
	}
	if errors.Is(err, flag.ErrHelp) {
		usage()
		return err
	}
	return usagef("%w (run 'vcored %s --help' for its flags)", err, fs.Name())
}
