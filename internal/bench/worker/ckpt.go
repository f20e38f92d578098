package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

// processStart is the wall clock at this package's initialisation: the
// restarted worker's first Go statement, as near to exec as Go code gets.
var processStart = time.Now()

// CkptConfig is a checkpoint-scenario worker (see bench.CkptStep): the
// persistent dataspace Persistent of Pages pages and the plain one Plain
// of TrackPages pages, both zero content, attached through the vcore.
type CkptConfig struct {
	Role       string // bench.CkptRoleCheckpoint or bench.CkptRoleRestore
	Control    string // the control directory
	Persistent string
	Plain      string
	Pages      int
	TrackPages int
	// HotPages is the write loop's hot working set (≤ TrackPages).
	HotPages int
	// Prefetch: the persistent dataspace restores with restore_prefetch;
	// the restarted life measures how long until every page is present.
	Prefetch bool
	// Epochs of the write loop, Passes per epoch, Incrementals (1 %
	// writes, each followed by a checkpoint): role checkpoint.
	Epochs, Passes, Incrementals int
	Seed                         uint64
	CPU                          int
	Attach                       AttachFunc
}

// errRestart is the first life's exit for the restart (a failure exit,
// which the subsystem's restart = "on-failure" answers).
var errRestart = errors.New("worker: checkpoint scenario: exiting to be restarted")

// ErrRestartExit reports whether err is the planned exit for the restart.
func ErrRestartExit(err error) bool { return errors.Is(err, errRestart) }

func (c *CkptConfig) check() error {
	switch {
	case c.Role != bench.CkptRoleCheckpoint && c.Role != bench.CkptRoleRestore:
		return fmt.Errorf("%w: --ckpt-role %q (want checkpoint or restore)", bench.ErrUsage, c.Role)
	case c.Control == "":
		return fmt.Errorf("%w: --ckpt-control is required", bench.ErrUsage)
	case c.Persistent == "" || c.Plain == "":
		return fmt.Errorf("%w: the checkpoint scenario needs two dataspaces: the persistent one, then a plain one", bench.ErrUsage)
	case c.Pages < 1 || c.TrackPages < 1 || c.TrackPages > c.Pages:
		return fmt.Errorf("%w: pages %d, track pages %d (want 1 ≤ track pages ≤ pages)", bench.ErrUsage, c.Pages, c.TrackPages)
	case c.Attach == nil:
		return fmt.Errorf("%w: no attach function", bench.ErrUsage)
	}
	c.Epochs, c.Passes, c.Incrementals = max(c.Epochs, 1), max(c.Passes, 1), max(c.Incrementals, 1)
	if c.HotPages < 1 || c.HotPages > c.TrackPages {
		c.HotPages = c.TrackPages
	}
	return nil
}

// ckptWorker is one life of a checkpoint-scenario worker.
type ckptWorker struct {
	c    CkptConfig
	ps   int
	p, u []byte   // the persistent and the plain dataspace
	gen  []uint16 // per persistent page: the generation last written
	ugen uint16   // the plain dataspace's pages' generation
	uhot uint16   // that of its first HotPages pages after the write loop (0: ugen)
	step int
}

// RunCkpt runs one life of a checkpoint-scenario worker. A restore
// worker's first life returns an error for which ErrRestartExit is true:
// its command should exit with a failure status to be restarted.
func RunCkpt(ctx context.Context, c CkptConfig) error {
	if err := c.check(); err != nil {
		return err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if c.CPU >= 0 {
		if err := linux.SetThreadAffinity(hw.NewSet(hw.CPU(c.CPU))); err != nil {
			return fmt.Errorf("worker: pin to CPU %d: %w", c.CPU, err)
		}
	}
	w := &ckptWorker{c: c, ps: linux.PageSize()}
	if c.Role == bench.CkptRoleRestore {
		if _, err := os.Stat(bench.CkptDonePath(c.Control)); err == nil {
			return w.restored(ctx)
		}
		if err := waitFile(ctx, bench.CkptStartPath(c.Control)); err != nil {
			return err
		}
	}
	return w.firstLife(ctx)
}

// attach maps both dataspaces; the returned func detaches them.
func (w *ckptWorker) attach(ctx context.Context) (detachP, detachU func() error, err error) {
	mp, err := w.c.Attach(ctx, w.c.Persistent, w.c.Pages*w.ps)
	if err != nil {
		return nil, nil, fmt.Errorf("worker: attach %q: %w", w.c.Persistent, err)
	}
	mu, err := w.c.Attach(ctx, w.c.Plain, w.c.TrackPages*w.ps)
	if err != nil {
		mp.Close()
		return nil, nil, fmt.Errorf("worker: attach %q: %w", w.c.Plain, err)
	}
	w.p, w.u = mp.Bytes()[:w.c.Pages*w.ps], mu.Bytes()[:w.c.TrackPages*w.ps]
	return mp.Close, mu.Close, nil
}

// report writes step k's result and waits for the bench's go.
func (w *ckptWorker) report(ctx context.Context, s *bench.CkptStep) error {
	s.Step, s.Pid = w.step, os.Getpid()
	if err := bench.WriteCkptStep(bench.CkptStepPath(w.c.Control, w.step), s); err != nil {
		return err
	}
	if err := waitFile(ctx, bench.CkptGoPath(w.c.Control, w.step)); err != nil {
		return err
	}
	w.step++
	return nil
}

func (w *ckptWorker) firstLife(ctx context.Context) (err error) {
	detachP, detachU, err := w.attach(ctx)
	if err != nil {
		return err
	}
	pAttached, uAttached := true, true
	defer func() {
		if pAttached {
			err = errors.Join(err, closeErr("detach "+w.c.Persistent, detachP()))
		}
		if uAttached {
			err = errors.Join(err, closeErr("detach "+w.c.Plain, detachU()))
		}
	}()
	seed := w.c.Seed
	w.gen = make([]uint16, w.c.Pages)
	for i := range w.c.Pages {
		w.gen[i] = 1
		writePage(w.p, i, w.ps, seed, 1)
	}
	w.ugen = 1
	for i := range w.c.TrackPages {
		writePage(w.u, i, w.ps, seed, 1)
	}
	if err := w.report(ctx, &bench.CkptStep{Kind: bench.StepPopulate}); err != nil {
		return err
	}
	gen := uint16(1)
	if w.c.Role == bench.CkptRoleCheckpoint {
		// The write loop: a hot working set (the first HotPages pages of
		// each dataspace) rewritten Passes times per epoch, full-page
		// writes; the bench checkpoints after each epoch, which
		// write-protects the persistent pages again, so tracking costs one
		// write-protect fault per hot page per epoch.
		hot := w.c.HotPages
		for e := range w.c.Epochs {
			gen++
			s := &bench.CkptStep{Kind: bench.StepTrack, Passes: w.c.Passes, Pages: hot}
			pass := func(mem []byte) (cpu, wall int64) {
				c0, t0 := threadCPUNS(), time.Now()
				for i := range hot {
					writePage(mem, i, w.ps, seed, gen)
				}
				return threadCPUNS() - c0, int64(time.Since(t0))
			}
			// Pass by pass, alternating which dataspace goes first, so that
			// both see the same machine (the first tracked pass takes the
			// write-protect faults).
			for k := range w.c.Passes {
				var uc, uw, tc, tw int64
				if (e+k)%2 == 0 {
					uc, uw = pass(w.u)
					tc, tw = pass(w.p)
				} else {
					tc, tw = pass(w.p)
					uc, uw = pass(w.u)
				}
				s.UntrackedNS, s.UntrackedWallNS = s.UntrackedNS+uc, s.UntrackedWallNS+uw
				s.TrackedNS, s.TrackedWallNS = s.TrackedNS+tc, s.TrackedWallNS+tw
			}
			// Pages beyond the hot set keep their generation; the plain
			// dataspace is checked page by page too.
			w.uhot = gen
			for i := range hot {
				w.gen[i] = gen
			}
			if err := w.report(ctx, s); err != nil {
				return err
			}
		}
	}
	incrementals := w.c.Incrementals
	if w.c.Role == bench.CkptRoleRestore {
		incrementals = 1 // the image the restart restores has two layers
	}
	for k := 1; k <= incrementals; k++ {
		gen++
		s := &bench.CkptStep{Kind: bench.StepIncremental}
		for i := range w.c.Pages {
			if bench.CkptIncrementalPage(i, k) {
				writePage(w.p, i, w.ps, seed, gen)
				w.gen[i] = gen
				s.WrittenPages++
			}
		}
		if err := w.report(ctx, s); err != nil {
			return err
		}
	}
	done := &bench.CkptStep{Kind: bench.StepDone}
	n, verr := w.verifyAll()
	done.VerifiedPages = n
	if verr != nil {
		done.Errors = append(done.Errors, verr.Error())
	}
	if w.c.Role == bench.CkptRoleCheckpoint {
		if err := w.report(ctx, done); err != nil {
			return errors.Join(verr, err)
		}
		return verr
	}
	// Restore: detach both dataspaces first (the exit then has no
	// dataspace memory left to free, whatever its size), record, exit.
	pAttached, uAttached = false, false
	if err := errors.Join(closeErr("detach "+w.c.Persistent, detachP()), closeErr("detach "+w.c.Plain, detachU())); err != nil {
		return errors.Join(verr, err)
	}
	done.Step, done.Pid, done.ExitUnixNS = w.step, os.Getpid(), time.Now().UnixNano()
	if err := bench.WriteCkptStep(bench.CkptDonePath(w.c.Control), done); err != nil {
		return errors.Join(verr, err)
	}
	if verr != nil {
		return verr
	}
	return errRestart
}

// verifyAll checks every page of both dataspaces.
func (w *ckptWorker) verifyAll() (int, error) {
	n := 0
	for i := range w.c.Pages {
		if err := checkPage(w.p, i, w.ps, w.c.Seed, w.gen[i]); err != nil {
			return n, fmt.Errorf("dataspace %q: %w", w.c.Persistent, err)
		}
		n++
	}
	for i := range w.c.TrackPages {
		g := w.ugen
		if w.uhot != 0 && i < w.c.HotPages {
			g = w.uhot
		}
		if err := checkPage(w.u, i, w.ps, w.c.Seed, g); err != nil {
			return n, fmt.Errorf("dataspace %q: %w", w.c.Plain, err)
		}
		n++
	}
	return n, nil
}

// restored is the restarted life of a restore worker: attach, first-touch
// every page (reads), verify what the first life wrote.
func (w *ckptWorker) restored(ctx context.Context) (err error) {
	s := &bench.CkptStep{Kind: bench.StepRestored, Pid: os.Getpid(), StartUnixNS: processStart.UnixNano()}
	attachStart := time.Now()
	detachP, detachU, err := w.attach(ctx)
	if err != nil {
		return err
	}
	defer func() {
		err = errors.Join(err, closeErr("detach "+w.c.Persistent, detachP()), closeErr("detach "+w.c.Plain, detachU()))
	}()
	s.AttachedUnixNS = time.Now().UnixNano()
	// What the first life left: generation 1, then one incremental (2).
	w.gen = make([]uint16, w.c.Pages)
	for i := range w.gen {
		w.gen[i] = 1
		if bench.CkptIncrementalPage(i, 1) {
			w.gen[i] = 2
		}
	}
	// The plain dataspace is not persistent: zero again.
	w.ugen, w.uhot = 0, 0
	if w.c.Prefetch {
		n, ns, err := w.waitPresent(ctx, attachStart)
		s.PresentPages, s.PresentNS = n, ns
		if err != nil {
			s.Errors = append(s.Errors, err.Error())
			return errors.Join(err, bench.WriteCkptStep(bench.CkptRestoredPath(w.c.Control), s))
		}
		nv, verr := w.verifyAll()
		s.VerifiedPages = nv
		if verr != nil {
			s.Errors = append(s.Errors, verr.Error())
		}
		return errors.Join(verr, bench.WriteCkptStep(bench.CkptRestoredPath(w.c.Control), s))
	}
	hp, hu := hist.New(), hist.New()
	var acc uint64
	for i := range w.c.TrackPages {
		acc ^= timedRead(w.p, i*w.ps, hp)
		acc ^= timedRead(w.u, i*w.ps, hu)
	}
	t0 := time.Now()
	for i := w.c.TrackPages; i < w.c.Pages; i++ {
		acc ^= *(*uint64)(unsafe.Pointer(&w.p[i*w.ps]))
	}
	s.SeqWallNS = int64(time.Since(t0))
	runtime.KeepAlive(acc)
	s.SeqPages = w.c.Pages - w.c.TrackPages
	s.RestoreLatency, s.LocalLatency = hp.Snapshot(), hu.Snapshot()
	n, verr := w.verifyAll()
	s.VerifiedPages = n
	if verr != nil {
		s.Errors = append(s.Errors, verr.Error())
	}
	return errors.Join(verr, bench.WriteCkptStep(bench.CkptRestoredPath(w.c.Control), s))
}

// waitPresent waits, touching nothing, until every page of the
// persistent dataspace is present (the vcore's restore prefetch mapped
// it), polling its pagemap every millisecond (sleeping in between: the
// prefetch runs at idle priority on this CPU). It returns the pages
// present and the time since t0 (the attach's start: the attach maps and
// registers the region, and the prefetch may start before it returns);
// an error when the prefetch makes no progress for 10 s.
func (w *ckptWorker) waitPresent(ctx context.Context, t0 time.Time) (int, int64, error) {
	pm, err := linux.OpenPagemap(os.Getpid())
	if err != nil {
		return 0, 0, err
	}
	defer pm.Close()
	start := uintptr(unsafe.Pointer(unsafe.SliceData(w.p)))
	end := start + uintptr(len(w.p))
	last, lastT := -1, t0
	for {
		pres, err := pm.PresentPages(start, end)
		if err != nil {
			return len(pres), int64(time.Since(t0)), err
		}
		if len(pres) >= w.c.Pages {
			return len(pres), int64(time.Since(t0)), nil
		}
		if len(pres) != last {
			last, lastT = len(pres), time.Now()
		} else if time.Since(lastT) > 10*time.Second {
			return last, int64(time.Since(t0)), fmt.Errorf("worker: restore prefetch stalled at %d of %d pages present", last, w.c.Pages)
		}
		select {
		case <-ctx.Done():
			return last, int64(time.Since(t0)), ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
}

// threadCPUNS is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID;
// the ckpt worker runs locked to its OS thread).
func threadCPUNS() int64 {
	var ts syscall.Timespec
	const clockThreadCPUTimeID = 3
	if _, _, e := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
		return 0
	}
	return ts.Nano()
}

func timedRead(mem []byte, off int, h *hist.Histogram) uint64 {
	p := (*uint64)(unsafe.Pointer(&mem[off]))
	t0 := time.Now()
	v := *p
	h.Record(int64(time.Since(t0)))
	return v
}

// writePage stores generation gen's word (bench.CkptWord) at every word
// of page i: a store and two ALU operations per word, so that the loop is
// bound by the stores (the untracked loop is as cheap as it can be, and
// tracking's share of the tracked one as large).
func writePage(mem []byte, i, ps int, seed uint64, gen uint16) {
	off := i * ps
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&mem[off])), ps/8)
	step := uint64(bench.CkptWordStep)
	base, x, inc := bench.CkptWordBase(seed, uint64(gen)), uint64(off)*step, 8*step
	for j := range words {
		words[j] = base ^ x
		x += inc
	}
}

// checkPage verifies page i against generation gen (0: all zero).
func checkPage(mem []byte, i, ps int, seed uint64, gen uint16) error {
	off := i * ps
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&mem[off])), ps/8)
	for j, got := range words {
		want := uint64(0)
		if gen > 0 {
			want = bench.CkptWord(seed, uint64(gen), uint64(off+8*j))
		}
		if got != want {
			return fmt.Errorf("%w: page %d offset %#x holds %#x, want %#x (generation %d)", ErrVerify, i, off+8*j, got, want, gen)
		}
	}
	return nil
}
