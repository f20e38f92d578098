// Package worker is `vcored worker`: a process that gets memory in one of
// four ways (a vcored dataspace, a minimal userfaultfd handler in the
// worker's own process or in a process of its own, or plain anonymous
// memory), touches every page once in a chosen order,
// times each first touch, checks the content and the placement of the
// pages, and writes what it measured as a bench.WorkerResult.
//
// Only measured values are reported. A touch is one 8-byte access of the
// page, timed with the monotonic clock; the timer's own cost (measured on
// a present page) is reported as TimerOverheadNS.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/irqstat"
	"github.com/vcored/vcored/internal/linux"
)

// Mapping is an attached dataspace (vcore/client.Mapping satisfies it).
type Mapping interface {
	Bytes() []byte
	Close() error
}

// AttachFunc attaches the dataspace name of size bytes (vcore/client.Attach
// in the real command; injected so this package stays below the engines).
type AttachFunc func(ctx context.Context, name string, size int) (Mapping, error)

// Config is what one worker run does.
type Config struct {
	Mode bench.WorkerMode
	// Dataspaces are attached (uffd mode) in order; in raw, xproc and kernel mode
	// each name is one anonymous region of its own.
	Dataspaces []string
	// Pages per dataspace (each of the page size).
	Pages   int
	Pattern bench.Pattern
	Stride  int
	// Seed orders PatternRandom.
	Seed uint64
	// Verify is the expected content; empty Kind = no check. Touches write
	// the expected word (0 for zero content), so content is kept.
	Verify bench.Verify
	// Read makes each touch a read instead of a write.
	Read bool
	// CPU pins the touching thread (and, in raw mode, the handler thread);
	// -1 leaves it unpinned.
	CPU int
	// HandlerCPU pins the raw handler thread elsewhere than CPU (-1: same
	// CPU): the cross-CPU reference round trip.
	HandlerCPU int
	// HandlerCommand is the argv prefix that runs this program as `vcored
	// worker` (xproc mode starts its handler process with it plus
	// --raw-handler …). Flags.Config sets it to [this executable, worker].
	HandlerCommand []string
	// HandlerRole makes Run serve as the handler process of an xproc
	// worker (`vcored worker --raw-handler`): the uffd arrives on fd 3;
	// Verify, FaultAround and CPU are the handler's, nothing is touched and
	// Run returns no result.
	HandlerRole bool
	// FaultAround is the pages resolved per fault by the raw handler (>=1).
	FaultAround int
	// Rounds repeats the touch loop: after each round but the last the
	// pages are verified and dropped (MADV_DONTNEED), so the next round
	// faults again. 0 means 1. Soak tests use it to reach millions of
	// faults in little memory.
	Rounds int
	// WaitFile, when set, makes the worker wait after attaching until the
	// file exists before it touches anything (tests use it to kill a pager
	// between attach and the first fault).
	WaitFile string
	// Attach is required in uffd mode.
	Attach AttachFunc
	// Ckpt, when set, makes the worker run the checkpoint scenario
	// (RunCkpt) instead; the other fields do not apply.
	Ckpt *CkptConfig
	Log  *slog.Logger
}

// ErrVerify is wrapped when a page does not hold the expected content.
var ErrVerify = errors.New("worker: content mismatch")

// Run does the work of cfg and returns what it measured. Content mismatches
// are errors (wrapping ErrVerify, naming the dataspace and offset); the
// result is returned along with them so it can still be written.
func Run(ctx context.Context, cfg Config) (*bench.WorkerResult, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.HandlerRole {
		return nil, ServeRawHandler(ctx, cfg.Verify, max(cfg.FaultAround, 1), cfg.CPU)
	}
	if err := check(&cfg); err != nil {
		return nil, err
	}
	ps := linux.PageSize()
	res := &bench.WorkerResult{
		Mode: cfg.Mode, Pid: os.Getpid(), CPU: cfg.CPU, Node: -1, Pattern: cfg.Pattern,
		Access: "write", FaultAround: cfg.FaultAround, PageSize: ps,
	}
	if cfg.Read {
		res.Access = "read"
	}

	// The touching happens on this goroutine's OS thread, pinned if asked.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if cfg.CPU >= 0 {
		if err := linux.SetThreadAffinity(hw.NewSet(hw.CPU(cfg.CPU))); err != nil {
			return nil, fmt.Errorf("worker: pin to CPU %d: %w", cfg.CPU, err)
		}
	}
	if cpu, node, err := linux.Getcpu(); err == nil {
		res.Node = int(node)
		if cfg.CPU < 0 {
			res.CPU = int(cpu)
		}
	}
	res.TimerOverheadNS = timerOverhead()

	order := bench.Order(cfg.Pattern, cfg.Pages, cfg.Stride, cfg.Seed)
	var errs []error
	for _, name := range cfg.Dataspaces {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		ds, err := runOne(ctx, cfg, name, order)
		if err != nil {
			errs = append(errs, err)
			res.Errors = append(res.Errors, err.Error())
		}
		if ds != nil {
			res.Dataspaces = append(res.Dataspaces, *ds)
		}
	}
	return res, errors.Join(errs...)
}

func check(cfg *Config) error {
	switch {
	case len(cfg.Dataspaces) == 0:
		return fmt.Errorf("%w: no dataspace named", bench.ErrUsage)
	case cfg.Pages < 1:
		return fmt.Errorf("%w: pages %d (want >= 1)", bench.ErrUsage, cfg.Pages)
	case cfg.Mode == bench.WorkerUffd && cfg.Attach == nil:
		return fmt.Errorf("%w: uffd mode needs an attach function", bench.ErrUsage)
	case cfg.Mode == bench.WorkerXproc && len(cfg.HandlerCommand) == 0:
		return fmt.Errorf("%w: xproc mode needs the command that runs the handler process", bench.ErrUsage)
	case cfg.Rounds > 1 && (cfg.Mode == bench.WorkerRaw || cfg.Mode == bench.WorkerXproc):
		// The raw handler resolves each page once: after MADV_DONTNEED it
		// would only wake the re-faulting toucher, which faults again, for
		// ever (it spun a CPU).
		return fmt.Errorf("%w: rounds %d: the raw handler serves each page once (rounds apply to uffd and kernel modes)", bench.ErrUsage, cfg.Rounds)
	case cfg.Mode == bench.WorkerKernel && cfg.Verify.Kind == "pattern":
		return fmt.Errorf("%w: kernel mode memory is zero-filled; verify pattern needs uffd or raw", bench.ErrUsage)
	}
	if cfg.FaultAround < 1 {
		cfg.FaultAround = 1
	}
	if cfg.Rounds < 1 {
		cfg.Rounds = 1
	}
	if cfg.Pattern == "" {
		cfg.Pattern = bench.PatternSeq
	}
	return nil
}

// runOne gets the memory of one dataspace, touches, verifies and locates it.
func runOne(ctx context.Context, cfg Config, name string, order []int) (_ *bench.DataspaceResult, err error) {
	ps := linux.PageSize()
	size := cfg.Pages * ps
	ds := &bench.DataspaceResult{Name: name, Verify: cfg.Verify.String()}

	var mem []byte
	var handler faultHandler
	switch cfg.Mode {
	case bench.WorkerUffd:
		m, err := cfg.Attach(ctx, name, size)
		if err != nil {
			return nil, fmt.Errorf("worker: attach %q (%d bytes): %w", name, size, err)
		}
		defer func() { err = errors.Join(err, closeErr("detach "+name, m.Close())) }()
		mem = m.Bytes()
		if len(mem) < size {
			return nil, fmt.Errorf("worker: dataspace %q maps %d bytes, want %d", name, len(mem), size)
		}
	case bench.WorkerRaw, bench.WorkerXproc, bench.WorkerKernel:
		mem, err = linux.Mmap(size, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_ANONYMOUS|linux.MAP_NORESERVE)
		if err != nil {
			return nil, fmt.Errorf("worker: %s: %w", name, err)
		}
		defer func() { err = errors.Join(err, closeErr("unmap "+name, linux.Munmap(mem))) }()
		// Compare 4 KiB faults with 4 KiB faults: no transparent huge page
		// may serve 512 first touches at once.
		if err := linux.Madvise(mem, linux.MADV_NOHUGEPAGE); err != nil {
			return nil, fmt.Errorf("worker: %s: %w", name, err)
		}
		hcpu := cfg.CPU
		if cfg.HandlerCPU >= 0 {
			hcpu = cfg.HandlerCPU
		}
		switch cfg.Mode {
		case bench.WorkerRaw:
			h, err := startRawHandler(mem, cfg.Verify, cfg.FaultAround, hcpu)
			if err != nil {
				return nil, fmt.Errorf("worker: %s: raw handler: %w", name, err)
			}
			handler = h
		case bench.WorkerXproc:
			h, err := startXprocHandler(ctx, cfg.HandlerCommand, mem, cfg.Verify, cfg.FaultAround, hcpu)
			if err != nil {
				return nil, fmt.Errorf("worker: %s: raw handler process: %w", name, err)
			}
			handler = h
		}
	default:
		return nil, fmt.Errorf("%w: mode %q", bench.ErrUsage, cfg.Mode)
	}
	defer func() {
		// On the error paths that return before the handler is stopped
		// below (it must not outlive the run); before the unmap above.
		if handler != nil {
			_, herr := handler.stop()
			err = errors.Join(err, closeErr("stop handler of "+name, herr))
		}
	}()

	if cfg.WaitFile != "" {
		if err := waitFile(ctx, cfg.WaitFile); err != nil {
			return nil, fmt.Errorf("worker: %s: %w", name, err)
		}
	}

	h := hist.New()
	proc := os.DirFS("/proc")
	before, irqErr := irqstat.Read(proc)
	start := time.Now()
	for r := 1; r < cfg.Rounds; r++ {
		ds.TouchNS += touch(mem, order, ps, cfg.Read, wordFor(cfg.Verify), h)
		if cfg.Verify.Kind != "" {
			n, verr := verify(mem[:size], ps, cfg.Verify)
			ds.VerifiedPages += n
			if verr != nil {
				verr = fmt.Errorf("dataspace %q round %d: %w", name, r, verr)
				ds.Errors = append(ds.Errors, verr.Error())
				return ds, verr
			}
		}
		if err := linux.Madvise(mem[:size], linux.MADV_DONTNEED); err != nil {
			return ds, fmt.Errorf("worker: %s: drop pages after round %d: %w", name, r, err)
		}
	}
	ds.TouchNS += touch(mem, order, ps, cfg.Read, wordFor(cfg.Verify), h)
	ds.WallNS = int64(time.Since(start))
	if irqErr == nil {
		var after irqstat.Snapshot
		if after, irqErr = irqstat.Read(proc); irqErr == nil {
			var d irqstat.Delta
			if d, irqErr = irqstat.Sub(before, after); irqErr == nil {
				ds.IRQ = &d
			}
		}
	}
	if irqErr != nil {
		cfg.Log.Warn("no IPI counts", "dataspace", name, "err", irqErr)
	}
	ds.Pages = len(order) * cfg.Rounds
	ds.Latency = h.Snapshot()
	ds.LatencyBinsNS = ds.Latency.RangesNS()

	if handler != nil {
		faults, herr := handler.stop()
		handler = nil
		ds.HandlerFaults = faults
		if herr != nil {
			ds.Errors = append(ds.Errors, herr.Error())
			return ds, fmt.Errorf("worker: %s: raw handler: %w", name, herr)
		}
	}

	ds.Placement, err = placement(mem[:size], ps)
	if err != nil {
		ds.Errors = append(ds.Errors, err.Error())
		cfg.Log.Warn("placement query failed", "dataspace", name, "err", err)
	}

	if cfg.Verify.Kind != "" {
		n, verr := verify(mem[:size], ps, cfg.Verify)
		ds.VerifiedPages += n
		if verr != nil {
			verr = fmt.Errorf("dataspace %q: %w", name, verr)
			ds.Errors = append(ds.Errors, verr.Error())
			return ds, verr
		}
	}
	return ds, nil
}

// faultHandler is a raw handler, in this process or in another one.
type faultHandler interface {
	// stop ends the service and returns the faults served and the first
	// error the handler hit.
	stop() (int64, error)
}

// waitFile polls until path exists or ctx ends.
func waitFile(ctx context.Context, path string) error {
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", path, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func closeErr(what string, err error) error {
	if err != nil {
		return fmt.Errorf("worker: %s: %w", what, err)
	}
	return nil
}

// wordFor returns the 8-byte value a write touch stores at a page's first
// word: the value the content already has there, so content survives.
func wordFor(v bench.Verify) func(off uint64) uint64 {
	if v.Kind == "pattern" {
		seed := v.Seed
		return func(off uint64) uint64 { return content.PatternWord(seed, off) }
	}
	return func(uint64) uint64 { return 0 }
}

// touch accesses the first word of each page of mem in order, timing each
// access into h, and returns the sum of the timed durations.
func touch(mem []byte, order []int, ps int, read bool, word func(off uint64) uint64, h *hist.Histogram) int64 {
	var total int64
	var acc uint64
	for _, pg := range order {
		off := pg * ps
		p := (*uint64)(unsafe.Pointer(&mem[off]))
		if read {
			t0 := time.Now()
			acc ^= *p
			d := int64(time.Since(t0))
			h.Record(d)
			total += d
		} else {
			w := word(uint64(off))
			t0 := time.Now()
			*p = w
			d := int64(time.Since(t0))
			h.Record(d)
			total += d
		}
	}
	runtime.KeepAlive(acc) // the timed reads must not be optimised away
	return total
}

// timerOverhead is the median time of a timed access to a present page.
func timerOverhead() int64 {
	word := new(uint64)
	var acc uint64
	h := hist.New()
	for range 2000 {
		t0 := time.Now()
		acc ^= *word
		h.Record(int64(time.Since(t0)))
	}
	runtime.KeepAlive(acc)
	return h.Quantile(0.5)
}

// placement counts mem's pages per node (move_pages query).
func placement(mem []byte, ps int) (map[int]int, error) {
	const batch = 1024
	out := map[int]int{}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(mem)))
	addrs := make([]uintptr, 0, batch)
	n := len(mem) / ps
	for i := 0; i < n; i += batch {
		addrs = addrs[:0]
		for j := i; j < n && j < i+batch; j++ {
			addrs = append(addrs, base+uintptr(j*ps))
		}
		nodes, err := linux.PageNodes(0, addrs)
		if err != nil {
			return out, fmt.Errorf("worker: placement: %w", err)
		}
		for _, nd := range nodes {
			out[nd]++
		}
	}
	return out, nil
}

// verify checks every page of mem against v; it returns the pages that
// passed before the first mismatch.
func verify(mem []byte, ps int, v bench.Verify) (int, error) {
	n := len(mem) / ps
	for i := range n {
		off := i * ps
		page := mem[off : off+ps]
		switch v.Kind {
		case "pattern":
			if err := content.VerifyPattern(page, v.Seed, uint64(off)); err != nil {
				return i, fmt.Errorf("%w: page %d: %w", ErrVerify, i, err)
			}
		case "zero":
			words := unsafe.Slice((*uint64)(unsafe.Pointer(&page[0])), ps/8)
			for j, w := range words {
				if w != 0 {
					return i, fmt.Errorf("%w: offset %#x holds %#x, want 0", ErrVerify, off+j*8, w)
				}
			}
		}
	}
	return n, nil
}
