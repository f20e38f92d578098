package pager_test

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// The multi-page path against its floor, in one process: the Pager with
// fault-around (or prefetch), a minimal handler (one pinned thread,
// epoll_wait, read, ONE UFFDIO_COPY of the next K pages from a read-only
// zero mapping: what the bench's raw_floor_fa16 and prefetch_floor do) and
// the kernel's own first touch, each over the same number of fresh pages,
// interleaved (the order rotates every iteration), all on one CPU with the
// toucher. Each touch is a timed 8-byte write, as the bench's worker does.
// What the Pager costs over the floor here is its own work: no second
// address space, no cgroup, no daemon.

// floorHandler is the minimal handler: it maps the faulting page and the
// next pages-1 (clipped to the region) with one UFFDIO_COPY.
type floorHandler struct {
	u     *linux.Uffd
	stop  *linux.EventFD
	done  chan error
	start uintptr
	size  uintptr
	pages int
}

func startFloor(cpu hw.CPU, pages int) (*floorHandler, error) {
	u, err := linux.OpenUffd()
	if err != nil {
		return nil, err
	}
	if _, err := u.API(0); err != nil {
		u.Close()
		return nil, err
	}
	stop, err := linux.NewEventFD()
	if err != nil {
		u.Close()
		return nil, err
	}
	f := &floorHandler{u: u, stop: stop, done: make(chan error, 1), pages: pages}
	ready := make(chan error, 1)
	go f.serve(cpu, ready)
	if err := <-ready; err != nil {
		u.Close()
		stop.Close()
		return nil, err
	}
	return f, nil
}

// register makes [start, start+size) the handler's region; call it only
// between touch loops (the handler reads start and size without a lock,
// after the fault the register's syscalls happen before).
func (f *floorHandler) register(mem []byte) error {
	f.start, f.size = addrOf(mem), uintptr(len(mem))
	_, err := f.u.Register(f.start, f.size, linux.UFFDIO_REGISTER_MODE_MISSING)
	return err
}

func (f *floorHandler) close() error {
	err := f.stop.Signal()
	if err == nil {
		err = <-f.done
	}
	return errors.Join(err, f.u.Close(), f.stop.Close())
}

func (f *floorHandler) serve(cpu hw.CPU, ready chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := linux.SetThreadAffinity(hw.NewSet(cpu)); err != nil {
		ready <- err
		return
	}
	ps := uintptr(linux.PageSize())
	zero, err := linux.Mmap(f.pages*int(ps), linux.PROT_READ, linux.MAP_PRIVATE)
	if err != nil {
		ready <- err
		return
	}
	defer linux.Munmap(zero)
	ep, err := linux.NewEpoll()
	if err != nil {
		ready <- err
		return
	}
	defer ep.Close()
	if err := errors.Join(ep.Add(f.u.FD(), linux.EPOLLIN, 0), ep.Add(f.stop.FD(), linux.EPOLLIN, 1)); err != nil {
		ready <- err
		return
	}
	ready <- nil
	var evs [2]linux.EpollEvent
	var msgs [16]linux.UffdMsg
	for {
		n, err := ep.Wait(evs[:], -1)
		if err != nil {
			f.done <- err
			return
		}
		for _, ev := range evs[:n] {
			if ev.Token() == 1 {
				f.done <- nil
				return
			}
		}
		k, err := f.u.ReadMsgs(msgs[:])
		if errors.Is(err, linux.EAGAIN) {
			continue
		}
		if err != nil {
			f.done <- err
			return
		}
		for i := range k {
			if msgs[i].Event != linux.UFFD_EVENT_PAGEFAULT {
				continue
			}
			addr := msgs[i].PagefaultAddr() &^ (ps - 1)
			end := min(addr+uintptr(f.pages)*ps, f.start+f.size)
			if _, err := f.u.Copy(addr, zero[:end-addr], 0); err != nil && !errors.Is(err, linux.EEXIST) {
				f.done <- fmt.Errorf("copy at %#x: %w", addr, err)
				return
			} else if err != nil {
				_ = f.u.Wake(addr, ps)
			}
		}
	}
}

// touchTimed writes one byte per page, timing each write; it returns the
// summed time.
func touchTimed(mem []byte, ps int) time.Duration {
	var sum time.Duration
	for off := 0; off < len(mem); off += ps {
		t0 := time.Now()
		mem[off] = 0
		sum += time.Since(t0)
	}
	return sum
}

// benchMultiPage runs the three sides over pages fresh pages each per
// iteration; around is the Pager's fault-around, prefetch its Prefetch,
// floorPages the floor's pages per copy.
func benchMultiPage(b *testing.B, around int, prefetch bool, floorPages int) {
	needUffd(b)
	cpus, err := linux.ThreadAffinity()
	if err != nil {
		b.Fatal(err)
	}
	cpu := cpus.Slice()[len(cpus.Slice())-1]
	p, err := pager.New(pager.Options{CPUs: hw.NewSet(cpu), FaultAround: around})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	u, err := linux.OpenUffd()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.AddUffd(1, u, 0, true); err != nil {
		b.Fatal(err)
	}
	fl, err := startFloor(cpu, floorPages)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := fl.close(); err != nil {
			b.Error(err)
		}
	}()
	// The toucher needs a P while the handler threads hold theirs.
	if runtime.GOMAXPROCS(0) < 3 {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	}
	lockAndPin(b, cpu, cpus)
	ps := linux.PageSize()
	const pages = 2048
	fresh := func() []byte {
		mem, err := linux.Mmap(pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
		if err != nil {
			b.Fatal(err)
		}
		if err := linux.Madvise(mem, linux.MADV_NOHUGEPAGE); err != nil {
			b.Fatal(err)
		}
		return mem
	}
	verify := func(side string, mem []byte) {
		if i := slices.IndexFunc(mem, func(c byte) bool { return c != 0 }); i >= 0 {
			b.Fatalf("%s: byte %d is %#x, want 0", side, i, mem[i])
		}
	}
	var mallocs uint64 // heap allocations during the Pager's touch loops (the Pager's threads and the toucher)
	sides := []struct {
		name string
		run  func() time.Duration
	}{
		{"pager", func() time.Duration {
			mem := fresh()
			defer linux.Munmap(mem)
			base := addrOf(mem)
			if err := p.AddRegion(1, pager.Region{Start: base, Length: uintptr(len(mem)), Dataspace: "bench", Content: content.Zero(), Prefetch: prefetch}); err != nil {
				b.Fatal(err)
			}
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			d := touchTimed(mem, ps)
			runtime.ReadMemStats(&m1)
			mallocs += m1.Mallocs - m0.Mallocs
			verify("pager", mem)
			if err := p.RemoveRegion(1, base); err != nil {
				b.Fatal(err)
			}
			return d
		}},
		{"floor", func() time.Duration {
			mem := fresh()
			defer linux.Munmap(mem)
			if err := fl.register(mem); err != nil {
				b.Fatal(err)
			}
			d := touchTimed(mem, ps)
			verify("floor", mem)
			return d
		}},
		{"kernel", func() time.Duration {
			mem := fresh()
			defer linux.Munmap(mem)
			return touchTimed(mem, ps)
		}},
	}
	sum := make([]time.Duration, len(sides))
	var ratios [2][]float64 // per iteration: pager ÷ floor, floor ÷ kernel
	b.ResetTimer()
	for i := range b.N {
		var d [3]time.Duration
		for k := range sides {
			j := (i + k) % len(sides)
			d[j] = sides[j].run()
			sum[j] += d[j]
		}
		ratios[0] = append(ratios[0], float64(d[0])/float64(d[1]))
		ratios[1] = append(ratios[1], float64(d[1])/float64(d[2]))
	}
	b.StopTimer()
	n := float64(b.N * pages)
	for k, s := range sides {
		b.ReportMetric(float64(sum[k])/n, s.name+"-ns/page")
	}
	median := func(xs []float64) float64 { slices.Sort(xs); return xs[len(xs)/2] }
	b.ReportMetric(median(ratios[0]), "pager/floor")
	b.ReportMetric(median(ratios[1]), "floor/kernel")
	st := p.Stats()["bench"]
	b.ReportMetric(float64(st.Faults)/n, "pager-faults/page")
	b.ReportMetric(float64(mallocs)/float64(max(st.Faults, 1)), "allocs/pager-fault")
	if st.Timed > 0 {
		b.ReportMetric(float64(st.ReadNS)/float64(st.Timed), "read-ns/fault")
		b.ReportMetric(float64(st.WorkNS)/float64(st.Timed), "work-ns/fault")
		b.ReportMetric(float64(st.IoctlNS)/float64(st.Timed), "ioctl-ns/fault")
	}
}

// BenchmarkMultiPage: fa16 is the Pager with fault-around 16 against the
// floor copying 16 pages per fault (the bench's local_fa16 and
// raw_floor_fa16); prefetch is the Pager with prefetch on (fault-around
// 1) against the floor copying 64 (local_prefetch and prefetch_floor).
func BenchmarkMultiPage(b *testing.B) {
	b.Run("fa16", func(b *testing.B) { benchMultiPage(b, 16, false, 16) })
	b.Run("prefetch", func(b *testing.B) { benchMultiPage(b, 1, true, 64) })
}
