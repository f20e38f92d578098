package worker

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/linux"
)

// handlerEnv makes this test binary act as `vcored worker` (the xproc
// handler process) when a test starts it as os.Args[0] worker ….
const handlerEnv = "VCORED_WORKER_TEST_AS_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(handlerEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "worker" {
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		f := BindFlags(fs)
		if err := fs.Parse(os.Args[2:]); err != nil {
			os.Exit(2)
		}
		cfg, err := f.Config(nil)
		if err == nil {
			err = f.Main(context.Background(), cfg, os.Stdout)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// children lists the pids of this process's children.
func children(t *testing.T) []string {
	t.Helper()
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	var out []string
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		out = append(out, strings.Fields(string(b))...)
	}
	return out
}

// TestXprocForReal: the minimal handler in another process serves every
// page (patterned content, verified), pinned to the toucher's CPU, and
// leaves no process, fd or goroutine behind.
func TestXprocForReal(t *testing.T) {
	needRoot(t)
	defer goleak.VerifyNone(t)
	t.Setenv(handlerEnv, "1")
	fds := openFDs(t)
	const pages = 256
	for _, tc := range []struct {
		name        string
		faultAround int
		verify      string
		wantFaults  int64
	}{
		{"pattern", 1, "pattern:7", pages},
		{"zero fault-around 16", 16, "zero:0", pages / 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := bench.ParseVerify(tc.verify)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Run(context.Background(), Config{
				Mode: bench.WorkerXproc, Dataspaces: []string{"a", "b"}, Pages: pages, Pattern: bench.PatternSeq,
				Verify: v, CPU: 0, FaultAround: tc.faultAround, HandlerCommand: []string{os.Args[0], "worker"},
			})
			if errors.Is(err, linux.ErrNotSupported) {
				t.Skipf("kernel lacks a feature: %v", err)
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.Mode != bench.WorkerXproc || len(res.Dataspaces) != 2 {
				t.Fatalf("result mode %s, %d dataspaces", res.Mode, len(res.Dataspaces))
			}
			for _, ds := range res.Dataspaces {
				// Each page is resolved once by the handler (it tracks the
				// pages it filled; a repeated fault is only woken).
				if ds.Pages != pages || ds.VerifiedPages != pages || ds.HandlerFaults != tc.wantFaults {
					t.Errorf("%s: pages %d verified %d handler faults %d, want %d/%d/%d", ds.Name, ds.Pages, ds.VerifiedPages, ds.HandlerFaults, pages, pages, tc.wantFaults)
				}
				if ds.Placement[res.Node] != pages {
					t.Errorf("%s: placement %v", ds.Name, ds.Placement)
				}
			}
			if c := children(t); len(c) != 0 {
				t.Errorf("children left: %v", c)
			}
		})
	}
	if got := openFDs(t); got != fds {
		t.Errorf("open fds %d after the runs, %d before", got, fds)
	}
}

// TestXprocHandlerThatNeverServes: a handler process that exits before it
// serves is an error naming its exit, promptly, not a hang.
func TestXprocHandlerThatNeverServes(t *testing.T) {
	needRoot(t)
	defer goleak.VerifyNone(t)
	fds := openFDs(t)
	start := time.Now()
	_, err := Run(context.Background(), Config{
		Mode: bench.WorkerXproc, Dataspaces: []string{"a"}, Pages: 8, CPU: -1,
		HandlerCommand: []string{"/bin/sh", "-c", "echo no handler here >&2; exit 3", "sh"},
	})
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "no handler here") {
		t.Fatalf("Run: %v, want the handler's exit and stderr", err)
	}
	if d := time.Since(start); d > xprocTimeout/2 {
		t.Errorf("took %v", d)
	}
	if got := openFDs(t); got != fds {
		t.Errorf("open fds %d after the run, %d before", got, fds)
	}
}

// TestHandlerStoppedOnEarlyReturn: a run that ends before touching (here
// waiting for a file that never comes) still stops its raw handler; the
// handler goroutine and its fds used to be left behind.
func TestHandlerStoppedOnEarlyReturn(t *testing.T) {
	needRoot(t)
	defer goleak.VerifyNone(t)
	t.Setenv(handlerEnv, "1")
	fds := openFDs(t)
	for _, mode := range []bench.WorkerMode{bench.WorkerRaw, bench.WorkerXproc} {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err := Run(ctx, Config{
			Mode: mode, Dataspaces: []string{"a"}, Pages: 8, CPU: -1, HandlerCommand: []string{os.Args[0], "worker"},
			WaitFile: filepath.Join(t.TempDir(), "never"),
		})
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s: Run: %v, want the wait's deadline", mode, err)
		}
	}
	if got := openFDs(t); got != fds {
		t.Errorf("open fds %d after the runs, %d before", got, fds)
	}
	if c := children(t); len(c) != 0 {
		t.Errorf("children left: %v", c)
	}
}

// TestRawRoundsRefused: several rounds in raw or xproc mode are a usage
// error, not a toucher that re-faults for ever on a page the handler
// believes present (it spun a CPU at 100%).
func TestRawRoundsRefused(t *testing.T) {
	for _, mode := range []bench.WorkerMode{bench.WorkerRaw, bench.WorkerXproc} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err := Run(ctx, Config{Mode: mode, Dataspaces: []string{"a"}, Pages: 4, CPU: -1, Rounds: 2,
			HandlerCommand: []string{os.Args[0], "worker"}})
		cancel()
		if !errors.Is(err, bench.ErrUsage) {
			t.Errorf("%s with 2 rounds: %v, want a usage error", mode, err)
		}
	}
}
