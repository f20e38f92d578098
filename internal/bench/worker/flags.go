package worker

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// Synopsis is the one-line usage of `vcored worker`.
const Synopsis = "--mode uffd|raw|xproc|kernel --dataspace NAME[,NAME] (--pages N | --size BYTES) [--pattern seq|random|stride] [--verify KIND:SEED] [--read] [--cpu N] [--handler-cpu N] [--fault-around N] [--rounds N] [--unbound] [--wait-file FILE] [--result FILE] | --ckpt-role checkpoint|restore --ckpt-control DIR …"

// listFlag collects a repeatable, comma-separated string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

// Flags are the command-line flags of `vcored worker`.
type Flags struct {
	mode, size, pattern, verify, result                 *string
	names                                               listFlag
	pages, stride, cpu, faultAround, rounds, handlerCPU *int
	waitFile                                            *string
	seed                                                *uint64
	read, unbound, rawHandler                           *bool
	// The checkpoint scenario (bench modes checkpoint and restore).
	ckptRole, ckptControl                             *string
	ckptTrackPages, ckptEpochs, ckptPasses, ckptIncrs *int
	ckptHotPages                                      *int
	ckptPrefetch                                      *bool
}

// BindFlags defines the worker's flags on fs.
func BindFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{}
	f.mode = fs.String("mode", "uffd", "uffd: dataspaces served by vcored (needs $VCORE_SOCKET); raw: minimal in-process userfaultfd handler; xproc: the same handler in a process of its own; kernel: plain anonymous memory")
	fs.Var(&f.names, "dataspace", "dataspace `NAME` to attach (repeatable or comma-separated); in raw/xproc/kernel mode a label per region")
	f.pages = fs.Int("pages", 0, "pages per dataspace")
	f.size = fs.String("size", "", "bytes per dataspace, e.g. 64MiB (instead of --pages)")
	f.pattern = fs.String("pattern", "seq", "touch order: seq, random or stride")
	f.stride = fs.Int("stride", 16, "page stride for --pattern stride")
	f.seed = fs.Uint64("seed", 1, "seed of the random order")
	f.verify = fs.String("verify", "", "check content after touching: zero:0 or pattern:SEED (write touches store the expected word)")
	f.read = fs.Bool("read", false, "touch by reading instead of writing")
	f.result = fs.String("result", "", "write the measurements as JSON to `FILE` (stdout when empty)")
	f.cpu = fs.Int("cpu", -1, "pin the touching thread (and the raw/xproc handler) to this CPU; -1: no pinning")
	f.faultAround = fs.Int("fault-around", 1, "raw and xproc modes: pages resolved per fault")
	f.unbound = fs.Bool("unbound", false, "uffd mode: attach without binding the memory to the vcore's node (pages land where the pager runs)")
	f.handlerCPU = fs.Int("handler-cpu", -1, "raw and xproc modes: pin the handler thread to this CPU instead of --cpu (a cross-CPU round trip); -1: same as --cpu")
	f.rounds = fs.Int("rounds", 1, "touch every page this many times, dropping the pages (MADV_DONTNEED) between rounds so each round faults again")
	f.waitFile = fs.String("wait-file", "", "after attaching, wait until `FILE` exists before touching")
	f.rawHandler = fs.Bool("raw-handler", false, "internal: be the handler process of an xproc worker (the worker's socket is fd 3)")
	f.ckptRole = fs.String("ckpt-role", "", "run the checkpoint scenario instead (bench modes checkpoint, restore): checkpoint or restore; --dataspace names the persistent dataspace, then a plain one")
	f.ckptControl = fs.String("ckpt-control", "", "checkpoint scenario: the control `DIR` shared with the bench (step files)")
	f.ckptTrackPages = fs.Int("ckpt-track-pages", 0, "checkpoint scenario: pages of the write loop and of the plain dataspace (default: --pages)")
	f.ckptEpochs = fs.Int("ckpt-epochs", 5, "checkpoint scenario: epochs of the write loop (a checkpoint after each)")
	f.ckptPasses = fs.Int("ckpt-passes", 16, "checkpoint scenario: full-page write passes per epoch over the hot working set")
	f.ckptPrefetch = fs.Bool("ckpt-prefetch", false, "checkpoint scenario, restore role: the persistent dataspace has restore_prefetch = true; the restarted life waits until every page is present instead of touching")
	f.ckptHotPages = fs.Int("ckpt-hot-pages", 0, "checkpoint scenario: the write loop's hot working set, the first N pages (default: --ckpt-track-pages)")
	f.ckptIncrs = fs.Int("ckpt-incrementals", 3, "checkpoint scenario: incremental checkpoints of 1 % of the pages")
	return f
}

// Unbound reports --unbound: the attach function should not bind the
// memory to the vcore's node.
func (f *Flags) Unbound() bool { return *f.unbound }

// Config turns the parsed flags into a Config; errors wrap bench.ErrUsage.
func (f *Flags) Config(attach AttachFunc) (Config, error) {
	if *f.rawHandler {
		return f.handlerConfig()
	}
	if *f.ckptRole != "" {
		return f.ckptConfig(attach)
	}
	mode, err := bench.ParseWorkerMode(*f.mode)
	if err != nil {
		return Config{}, err
	}
	pattern, err := bench.ParsePattern(*f.pattern)
	if err != nil {
		return Config{}, err
	}
	var verify bench.Verify
	if *f.verify != "" {
		if verify, err = bench.ParseVerify(*f.verify); err != nil {
			return Config{}, err
		}
	}
	n, err := pageCount(*f.pages, *f.size)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", bench.ErrUsage, err)
	}
	names := []string(f.names)
	if len(names) == 0 {
		if mode == bench.WorkerUffd {
			return Config{}, fmt.Errorf("%w: --dataspace is required in uffd mode", bench.ErrUsage)
		}
		names = []string{"anon"}
	}
	switch {
	case *f.faultAround < 1:
		return Config{}, fmt.Errorf("%w: --fault-around %d: want at least 1", bench.ErrUsage, *f.faultAround)
	case *f.handlerCPU >= 0 && !rawLike(mode):
		return Config{}, fmt.Errorf("%w: --handler-cpu applies to raw and xproc modes only", bench.ErrUsage)
	case *f.faultAround > 1 && !rawLike(mode):
		return Config{}, fmt.Errorf("%w: --fault-around applies to raw and xproc modes only (vcored's pagers take it from their config)", bench.ErrUsage)
	}
	var handler []string
	if mode == bench.WorkerXproc {
		exe, err := os.Executable()
		if err != nil {
			return Config{}, fmt.Errorf("worker: find own executable for the handler process: %w", err)
		}
		handler = []string{exe, "worker"}
	}
	return Config{HandlerCommand: handler,
		Mode: mode, Dataspaces: names, Pages: n, Pattern: pattern, Stride: *f.stride, Seed: *f.seed,
		Verify: verify, Read: *f.read, CPU: *f.cpu, FaultAround: *f.faultAround, Attach: attach,
		Rounds: *f.rounds, WaitFile: *f.waitFile, HandlerCPU: *f.handlerCPU,
	}, nil
}

// ckptConfig is the Config of the checkpoint scenario (--ckpt-role).
func (f *Flags) ckptConfig(attach AttachFunc) (Config, error) {
	n, err := pageCount(*f.pages, *f.size)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", bench.ErrUsage, err)
	}
	if len(f.names) != 2 {
		return Config{}, fmt.Errorf("%w: --ckpt-role needs --dataspace PERSISTENT,PLAIN", bench.ErrUsage)
	}
	track := *f.ckptTrackPages
	if track == 0 {
		track = n
	}
	c := &CkptConfig{Role: *f.ckptRole, Control: *f.ckptControl, Persistent: f.names[0], Plain: f.names[1],
		Pages: n, TrackPages: track, HotPages: *f.ckptHotPages, Prefetch: *f.ckptPrefetch, Epochs: *f.ckptEpochs, Passes: *f.ckptPasses, Incrementals: *f.ckptIncrs,
		Seed: *f.seed, CPU: *f.cpu, Attach: attach}
	if err := c.check(); err != nil {
		return Config{}, err
	}
	return Config{Ckpt: c}, nil
}

func rawLike(m bench.WorkerMode) bool { return m == bench.WorkerRaw || m == bench.WorkerXproc }

// handlerConfig is the Config of the handler role (--raw-handler): only
// --cpu, --fault-around and --verify apply.
func (f *Flags) handlerConfig() (Config, error) {
	var verify bench.Verify
	if *f.verify != "" {
		var err error
		if verify, err = bench.ParseVerify(*f.verify); err != nil {
			return Config{}, err
		}
	}
	if *f.faultAround < 1 {
		return Config{}, fmt.Errorf("%w: --fault-around %d: want at least 1", bench.ErrUsage, *f.faultAround)
	}
	return Config{HandlerRole: true, CPU: *f.cpu, FaultAround: *f.faultAround, Verify: verify}, nil
}

// pageCount turns --pages or --size into a page count.
func pageCount(pages int, size string) (int, error) {
	switch {
	case pages > 0 && size != "":
		return 0, errors.New("give --pages or --size, not both")
	case pages > 0:
		return pages, nil
	case size != "":
		b, err := hw.ParseBytes(size)
		if err != nil {
			return 0, fmt.Errorf("--size: %w", err)
		}
		ps := uint64(linux.PageSize())
		if uint64(b) < ps || uint64(b)%ps != 0 {
			return 0, fmt.Errorf("--size %s: want a positive multiple of the page size (%d bytes)", size, ps)
		}
		return int(uint64(b) / ps), nil
	}
	return 0, errors.New("give --pages N or --size BYTES")
}

// Main runs cfg and writes the result to the --result file, or to stdout
// as JSON when none was given. A result is written even when the run
// failed (content mismatch), and the run's error is returned.
func (f *Flags) Main(ctx context.Context, cfg Config, stdout io.Writer) error {
	if cfg.Ckpt != nil {
		return RunCkpt(ctx, *cfg.Ckpt)
	}
	res, runErr := Run(ctx, cfg)
	if res == nil {
		return runErr
	}
	if *f.result != "" {
		return errors.Join(runErr, res.WriteFile(*f.result))
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return errors.Join(runErr, enc.Encode(res))
}
