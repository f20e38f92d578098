package irqstat

import (
	"errors"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/vcored/vcored/internal/hw"
)

func readFixture(t *testing.T, name string) Snapshot {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Read(fstest.MapFS{"interrupts": {Data: data}})
	if err != nil {
		t.Fatalf("Read(%s): %v", name, err)
	}
	return s
}

func TestParseFixtures(t *testing.T) {
	for _, tc := range []struct {
		file   string
		cpus   []hw.CPU
		perCPU []Counts
	}{
		{
			// A real copy of the dev machine's file (2 vCPUs, KVM).
			file: "kvm-2cpu.txt",
			cpus: []hw.CPU{0, 1},
			perCPU: []Counts{
				{CAL: 81805, RES: 27296, TLB: 39061, Total: 369778}, // totals cross-checked with awk
				{CAL: 68175, RES: 25216, TLB: 38637, Total: 434047},
			},
		},
		{
			// CPU 2 offline: columns are CPU0 CPU1 CPU3 CPU4; ERR/MIS are global.
			file: "4cpu-offline2.txt",
			cpus: []hw.CPU{0, 1, 3, 4},
			perCPU: []Counts{
				{CAL: 100, RES: 10, TLB: 5, Total: 40 + 7 + 1 + 1000 + 10 + 100 + 5},
				{CAL: 200, RES: 20, TLB: 6, Total: 1200 + 2 + 2000 + 20 + 200 + 6},
				{CAL: 300, RES: 30, TLB: 7, Total: 3 + 3 + 3000 + 30 + 300 + 7},
				{CAL: 400, RES: 40, TLB: 8, Total: 4 + 4000 + 40 + 400 + 8},
			},
		},
	} {
		t.Run(tc.file, func(t *testing.T) {
			s := readFixture(t, tc.file)
			if len(s.CPUs) != len(tc.cpus) {
				t.Fatalf("CPUs = %v, want %v", s.CPUs, tc.cpus)
			}
			for i, cpu := range tc.cpus {
				if s.CPUs[i] != cpu {
					t.Errorf("CPUs[%d] = %d, want %d", i, s.CPUs[i], cpu)
				}
				got, ok := s.CPU(cpu)
				if !ok || got != tc.perCPU[i] {
					t.Errorf("CPU %d: %+v (ok=%v), want %+v", cpu, got, ok, tc.perCPU[i])
				}
			}
			var want Counts
			for _, c := range tc.perCPU {
				want = want.Add(c)
			}
			if got := s.Sum(); got != want {
				t.Errorf("Sum = %+v, want %+v", got, want)
			}
			if _, ok := s.CPU(99); ok {
				t.Error("CPU 99 reported present")
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, name := range []string{"bad-number.txt", "short-row.txt", "bad-header.txt"} {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(strings.NewReader(string(data))); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err = %v, want ErrFormat", name, err)
		}
	}
	if _, err := Parse(strings.NewReader("")); !errors.Is(err, ErrFormat) {
		t.Errorf("empty: err = %v, want ErrFormat", err)
	}
	if _, err := Read(fstest.MapFS{}); err == nil {
		t.Error("Read of an fs without interrupts succeeded")
	}
}

func TestSub(t *testing.T) {
	before := Snapshot{CPUs: []hw.CPU{0, 1}, PerCPU: []Counts{{CAL: 10, RES: 5, TLB: 1, Total: 100}, {CAL: 7, RES: 2, TLB: 9, Total: 50}}}
	after := Snapshot{CPUs: []hw.CPU{0, 1}, PerCPU: []Counts{{CAL: 12, RES: 5, TLB: 4, Total: 130}, {CAL: 6, RES: 3, TLB: 9, Total: 60}}}
	d, err := Sub(before, after)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := d.CPU(0); c != (Counts{CAL: 2, RES: 0, TLB: 3, Total: 30}) {
		t.Errorf("CPU0 delta %+v", c)
	}
	// CPU1's CAL went backwards (a wrapped counter): counted as 0.
	if c, _ := d.CPU(1); c != (Counts{CAL: 0, RES: 1, TLB: 0, Total: 10}) {
		t.Errorf("CPU1 delta %+v", c)
	}
	if s := d.Sum(); s != (Counts{CAL: 2, RES: 1, TLB: 3, Total: 40}) || s.IPIs() != 6 {
		t.Errorf("Sum %+v", s)
	}
	two, err := Delta{}.Add(d)
	if err != nil {
		t.Fatal(err)
	}
	two, err = two.Add(d)
	if err != nil {
		t.Fatal(err)
	}
	if s := two.Sum(); s != (Counts{CAL: 4, RES: 2, TLB: 6, Total: 80}) {
		t.Errorf("double Sum %+v", s)
	}
	other := Snapshot{CPUs: []hw.CPU{0, 2}, PerCPU: make([]Counts, 2)}
	if _, err := Sub(before, other); !errors.Is(err, ErrCPUsChanged) {
		t.Errorf("Sub with changed CPUs: %v", err)
	}
	if _, err := d.Add(Delta{CPUs: []hw.CPU{3}, PerCPU: make([]Counts, 1)}); !errors.Is(err, ErrCPUsChanged) {
		t.Errorf("Add with changed CPUs: %v", err)
	}
}

// TestLiveProc reads this machine's /proc/interrupts twice: the parse must
// succeed and no counter may go down.
func TestLiveProc(t *testing.T) {
	proc := os.DirFS("/proc")
	a, err := Read(proc)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			t.Skipf("no /proc/interrupts here: %v", err)
		}
		t.Fatal(err)
	}
	b, err := Read(proc)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Sub(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.CPUs) == 0 || a.Sum().Total == 0 {
		t.Errorf("live snapshot looks empty: %+v", a)
	}
}
