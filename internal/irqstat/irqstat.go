// Package irqstat reads /proc/interrupts and counts the inter-processor
// interrupts a piece of work caused: function-call IPIs (CAL), rescheduling
// IPIs (RES) and TLB shootdowns (TLB), per CPU, plus the total of every
// per-CPU row.
//
// Take a Snapshot before and after the work and subtract them with Delta.
// Readers take an fs.FS rooted at /proc (os.DirFS("/proc")) or an io.Reader,
// so tests run on fixture files.
package irqstat

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/vcored/vcored/internal/hw"
)

// ErrFormat is wrapped by every parse error.
var ErrFormat = errors.New("irqstat: malformed /proc/interrupts")

// ErrCPUsChanged is wrapped by Delta when the two snapshots do not list the
// same CPUs (a CPU went on- or offline in between).
var ErrCPUsChanged = errors.New("irqstat: CPU set changed between snapshots")

// The rows counted separately. Names are the labels of /proc/interrupts
// without the colon.
const (
	RowCAL = "CAL" // function call interrupts (smp_call_function*: remote work, TLB flush on some kernels)
	RowRES = "RES" // rescheduling interrupts (remote wakeups)
	RowTLB = "TLB" // TLB shootdowns
)

// globalRows are rows that carry one machine-wide number, not one per CPU.
var globalRows = map[string]bool{"ERR": true, "MIS": true}

// Counts are interrupt counts of one CPU (or summed over CPUs).
type Counts struct {
	CAL   uint64 `json:"cal"`
	RES   uint64 `json:"res"`
	TLB   uint64 `json:"tlb"`
	Total uint64 `json:"total"` // every per-CPU row, device interrupts and timer included
}

// IPIs is CAL+RES+TLB.
func (c Counts) IPIs() uint64 { return c.CAL + c.RES + c.TLB }

// Add returns c+o.
func (c Counts) Add(o Counts) Counts {
	return Counts{CAL: c.CAL + o.CAL, RES: c.RES + o.RES, TLB: c.TLB + o.TLB, Total: c.Total + o.Total}
}

// Snapshot is one reading of /proc/interrupts.
type Snapshot struct {
	// CPUs are the CPUs of the header line, in column order (online CPUs).
	CPUs []hw.CPU
	// PerCPU holds the counts of CPUs[i] at index i.
	PerCPU []Counts
}

// Read parses the file "interrupts" of fsys, an fs.FS rooted at /proc.
func Read(fsys fs.FS) (Snapshot, error) {
	f, err := fsys.Open("interrupts")
	if err != nil {
		return Snapshot{}, fmt.Errorf("irqstat: open interrupts: %w", err)
	}
	defer f.Close()
	s, err := Parse(f)
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading interrupts: %w", err)
	}
	return s, nil
}

// Parse parses the text of /proc/interrupts. The header names the CPU
// columns ("CPU0 CPU1 CPU3"); each row is a label and one count per column,
// then a description. Rows with one global number (ERR, MIS) are skipped.
func Parse(r io.Reader) (Snapshot, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	var s Snapshot
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		if s.CPUs == nil {
			cpus, err := parseHeader(text)
			if err != nil {
				return Snapshot{}, fmt.Errorf("%w: line %d: %w", ErrFormat, line, err)
			}
			s.CPUs = cpus
			s.PerCPU = make([]Counts, len(cpus))
			continue
		}
		label, rest, ok := strings.Cut(text, ":")
		if !ok {
			return Snapshot{}, fmt.Errorf("%w: line %d: no label in %q", ErrFormat, line, text)
		}
		label = strings.TrimSpace(label)
		if globalRows[label] {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) < len(s.CPUs) {
			return Snapshot{}, fmt.Errorf("%w: line %d: row %s has %d fields, want %d counts",
				ErrFormat, line, label, len(fields), len(s.CPUs))
		}
		for i := range s.CPUs {
			n, err := strconv.ParseUint(fields[i], 10, 64)
			if err != nil {
				return Snapshot{}, fmt.Errorf("%w: line %d: row %s, column %d: %w", ErrFormat, line, label, i, err)
			}
			c := &s.PerCPU[i]
			c.Total += n
			switch label {
			case RowCAL:
				c.CAL += n
			case RowRES:
				c.RES += n
			case RowTLB:
				c.TLB += n
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Snapshot{}, fmt.Errorf("irqstat: read: %w", err)
	}
	if s.CPUs == nil {
		return Snapshot{}, fmt.Errorf("%w: empty", ErrFormat)
	}
	return s, nil
}

func parseHeader(text string) ([]hw.CPU, error) {
	fields := strings.Fields(text)
	if len(fields) == 0 {
		return nil, errors.New("empty header")
	}
	cpus := make([]hw.CPU, 0, len(fields))
	for _, f := range fields {
		num, ok := strings.CutPrefix(f, "CPU")
		if !ok {
			return nil, fmt.Errorf("header field %q is not CPU<n>", f)
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("header field %q: bad CPU number", f)
		}
		if len(cpus) > 0 && hw.CPU(n) <= cpus[len(cpus)-1] {
			return nil, fmt.Errorf("header CPUs not increasing at %q", f)
		}
		cpus = append(cpus, hw.CPU(n))
	}
	return cpus, nil
}

// CPU returns the counts of cpu, and false if the snapshot has no column for it.
func (s Snapshot) CPU(cpu hw.CPU) (Counts, bool) {
	i := slices.Index(s.CPUs, cpu)
	if i < 0 {
		return Counts{}, false
	}
	return s.PerCPU[i], true
}

// Sum returns the counts summed over every CPU.
func (s Snapshot) Sum() Counts {
	var t Counts
	for _, c := range s.PerCPU {
		t = t.Add(c)
	}
	return t
}

// Delta is what happened between two snapshots.
type Delta struct {
	// CPUs and PerCPU as in Snapshot: PerCPU[i] is the increase on CPUs[i].
	CPUs   []hw.CPU `json:"cpus"`
	PerCPU []Counts `json:"per_cpu"`
}

// Sub returns after−before. Counters never go backwards; if one does (a
// wrapped 32-bit counter) its increase is taken as 0 rather than a huge
// number. Snapshots with different CPU columns give ErrCPUsChanged.
func Sub(before, after Snapshot) (Delta, error) {
	if !slices.Equal(before.CPUs, after.CPUs) {
		return Delta{}, fmt.Errorf("%w: %v then %v", ErrCPUsChanged, hw.NewSet(before.CPUs...), hw.NewSet(after.CPUs...))
	}
	d := Delta{CPUs: slices.Clone(after.CPUs), PerCPU: make([]Counts, len(after.CPUs))}
	sub := func(a, b uint64) uint64 {
		if a < b {
			return 0
		}
		return a - b
	}
	for i := range after.PerCPU {
		a, b := after.PerCPU[i], before.PerCPU[i]
		d.PerCPU[i] = Counts{CAL: sub(a.CAL, b.CAL), RES: sub(a.RES, b.RES), TLB: sub(a.TLB, b.TLB), Total: sub(a.Total, b.Total)}
	}
	return d, nil
}

// Sum returns the increase summed over every CPU.
func (d Delta) Sum() Counts {
	var t Counts
	for _, c := range d.PerCPU {
		t = t.Add(c)
	}
	return t
}

// CPU returns the increase on cpu, and false if there is no column for it.
func (d Delta) CPU(cpu hw.CPU) (Counts, bool) {
	i := slices.Index(d.CPUs, cpu)
	if i < 0 {
		return Counts{}, false
	}
	return d.PerCPU[i], true
}

// Add returns d+o (both must have the same CPU columns; otherwise ErrCPUsChanged).
// The zero Delta is an identity: adding to it gives o.
func (d Delta) Add(o Delta) (Delta, error) {
	if d.CPUs == nil {
		return Delta{CPUs: slices.Clone(o.CPUs), PerCPU: slices.Clone(o.PerCPU)}, nil
	}
	if !slices.Equal(d.CPUs, o.CPUs) {
		return Delta{}, fmt.Errorf("%w: %v and %v", ErrCPUsChanged, hw.NewSet(d.CPUs...), hw.NewSet(o.CPUs...))
	}
	r := Delta{CPUs: slices.Clone(d.CPUs), PerCPU: make([]Counts, len(d.CPUs))}
	for i := range d.PerCPU {
		r.PerCPU[i] = d.PerCPU[i].Add(o.PerCPU[i])
	}
	return r, nil
}
