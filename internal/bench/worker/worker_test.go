package worker

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"unsafe"

	"go.uber.org/goleak"

	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: userfaultfd of kernel faults is privileged here (vm.unprivileged_userfaultfd=0)")
	}
}

// TestRawAndKernelForReal runs the raw floor and the kernel mode with a
// few pages: every page is touched once, timed, verified and located.
func TestRawAndKernelForReal(t *testing.T) {
	needRoot(t)
	defer goleak.VerifyNone(t)
	fds := openFDs(t)
	const pages = 256
	for _, tc := range []struct {
		name        string
		mode        bench.WorkerMode
		pattern     bench.Pattern
		faultAround int
		verify      string
		read        bool
		wantFaults  int64 // handler faults (raw mode)
	}{
		{"raw seq", bench.WorkerRaw, bench.PatternSeq, 1, "pattern:7", false, pages},
		{"raw random read", bench.WorkerRaw, bench.PatternRandom, 1, "pattern:7", true, pages},
		{"raw seq fault-around 16", bench.WorkerRaw, bench.PatternSeq, 16, "pattern:9", false, pages / 16},
		{"raw stride fault-around 4", bench.WorkerRaw, bench.PatternStride, 4, "zero:0", false, -1},
		{"kernel seq", bench.WorkerKernel, bench.PatternSeq, 1, "zero:0", false, 0},
		{"kernel random", bench.WorkerKernel, bench.PatternRandom, 1, "zero:0", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := bench.ParseVerify(tc.verify)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Run(context.Background(), Config{
				Mode: tc.mode, Dataspaces: []string{"a", "b"}, Pages: pages, Pattern: tc.pattern, Stride: 8, Seed: 3,
				Verify: v, Read: tc.read, CPU: 0, FaultAround: tc.faultAround,
			})
			if errors.Is(err, linux.ErrNotSupported) {
				t.Skipf("kernel lacks a feature: %v", err)
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.CPU != 0 || res.Node < 0 || res.PageSize != os.Getpagesize() || len(res.Dataspaces) != 2 {
				t.Fatalf("result cpu %d node %d page size %d dataspaces %d", res.CPU, res.Node, res.PageSize, len(res.Dataspaces))
			}
			for _, ds := range res.Dataspaces {
				h, err := ds.Hist()
				if err != nil {
					t.Fatal(err)
				}
				if ds.Pages != pages || h.Count() != pages || ds.VerifiedPages != pages {
					t.Errorf("%s: pages %d, timed %d, verified %d; want %d each", ds.Name, ds.Pages, h.Count(), ds.VerifiedPages, pages)
				}
				if ds.TouchNS <= 0 || ds.WallNS < ds.TouchNS || h.Quantile(0.5) <= 0 {
					t.Errorf("%s: touch %d ns, wall %d ns, median %d", ds.Name, ds.TouchNS, ds.WallNS, h.Quantile(0.5))
				}
				switch {
				case tc.wantFaults >= 0 && ds.HandlerFaults != tc.wantFaults:
					t.Errorf("%s: handler faults %d, want %d", ds.Name, ds.HandlerFaults, tc.wantFaults)
				case tc.wantFaults < 0 && (ds.HandlerFaults < pages/4 || ds.HandlerFaults > pages):
					t.Errorf("%s: handler faults %d, want %d..%d", ds.Name, ds.HandlerFaults, pages/4, pages)
				}
				if ds.Placement[res.Node] != pages {
					t.Errorf("%s: placement %v, want all %d pages on node %d", ds.Name, ds.Placement, pages, res.Node)
				}
				if ds.IRQ == nil || len(ds.IRQ.CPUs) == 0 {
					t.Errorf("%s: no interrupt counts", ds.Name)
				}
			}
		})
	}
	if got := openFDs(t); got != fds {
		t.Errorf("open fds %d after the runs, %d before", got, fds)
	}
}

func TestVerifyReportsOffset(t *testing.T) {
	ps := os.Getpagesize()
	mem := make([]byte, 4*ps)
	for i := range 4 {
		if err := content.Pattern(5).Fill(mem[i*ps:(i+1)*ps], uint64(i*ps)); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := verify(mem, ps, bench.Verify{Kind: "pattern", Seed: 5}); err != nil || n != 4 {
		t.Fatalf("verify of good pages: %d, %v", n, err)
	}
	mem[2*ps+64] ^= 1
	n, err := verify(mem, ps, bench.Verify{Kind: "pattern", Seed: 5})
	if !errors.Is(err, ErrVerify) || n != 2 || !strings.Contains(err.Error(), "page 2") {
		t.Fatalf("verify of a bad page: %d, %v", n, err)
	}
	zero := make([]byte, 2*ps)
	*(*uint64)(unsafe.Pointer(&zero[ps+8])) = 5
	if n, err := verify(zero, ps, bench.Verify{Kind: "zero"}); !errors.Is(err, ErrVerify) || n != 1 || !strings.Contains(err.Error(), "0x1008") {
		t.Fatalf("zero verify: %d, %v", n, err)
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no dataspace":   {Mode: bench.WorkerRaw, Pages: 1},
		"no pages":       {Mode: bench.WorkerRaw, Dataspaces: []string{"a"}},
		"uffd no attach": {Mode: bench.WorkerUffd, Dataspaces: []string{"a"}, Pages: 1},
		"kernel pattern": {Mode: bench.WorkerKernel, Dataspaces: []string{"a"}, Pages: 1, Verify: bench.Verify{Kind: "pattern", Seed: 1}},
		"bad mode":       {Mode: "tcg", Dataspaces: []string{"a"}, Pages: 1},
	} {
		if _, err := Run(context.Background(), cfg); !errors.Is(err, bench.ErrUsage) {
			t.Errorf("%s: err = %v, want ErrUsage", name, err)
		}
	}
}

// fakeMapping lets the uffd path run on plain memory: it checks that Run
// attaches each dataspace with the right size and closes it.
type fakeMapping struct {
	b      []byte
	closed *int
}

func (f fakeMapping) Bytes() []byte { return f.b }
func (f fakeMapping) Close() error  { *f.closed++; return nil }

func TestUffdModeAttachesAndCloses(t *testing.T) {
	ps := os.Getpagesize()
	closed := 0
	var attached []string
	res, err := Run(context.Background(), Config{
		Mode: bench.WorkerUffd, Dataspaces: []string{"x", "y"}, Pages: 8, Pattern: bench.PatternSeq, CPU: -1,
		Verify: bench.Verify{Kind: "zero"},
		Attach: func(_ context.Context, name string, size int) (Mapping, error) {
			if size != 8*ps {
				t.Errorf("attach %s size %d, want %d", name, size, 8*ps)
			}
			attached = append(attached, name)
			return fakeMapping{b: make([]byte, size), closed: &closed}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(attached, ",") != "x,y" || closed != 2 || len(res.Dataspaces) != 2 || res.Dataspaces[1].VerifiedPages != 8 {
		t.Errorf("attached %v closed %d result %+v", attached, closed, res)
	}
}
