package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/irqstat"
)

// WorkerMode is how a worker's pages get their first-touch faults served.
type WorkerMode string

// Worker modes.
const (
	// WorkerUffd attaches dataspaces through the vcore (vcore/client): a vcored
	// pager (local or central) serves the faults.
	WorkerUffd WorkerMode = "uffd"
	// WorkerRaw is the reference floor: a minimal userfaultfd handler thread
	// in the worker itself, pinned to the toucher's CPU, no framework.
	WorkerRaw WorkerMode = "raw"
	// WorkerXproc is the same minimal handler in a process of its own
	// (pinned to the toucher's CPU), fed the worker's uffd over a unix
	// socket: the floor of any pager outside the worker.
	WorkerXproc WorkerMode = "xproc"
	// WorkerKernel touches plain anonymous memory: the kernel's own first
	// touch, no userfaultfd.
	WorkerKernel WorkerMode = "kernel"
)

// ParseWorkerMode parses "uffd", "raw", "xproc" or "kernel".
func ParseWorkerMode(s string) (WorkerMode, error) {
	switch m := WorkerMode(s); m {
	case WorkerUffd, WorkerRaw, WorkerXproc, WorkerKernel:
		return m, nil
	}
	return "", fmt.Errorf("%w: mode %q (want uffd, raw, xproc or kernel)", ErrUsage, s)
}

// Pattern is the order in which a worker touches its pages.
type Pattern string

// Access patterns.
const (
	PatternSeq    Pattern = "seq"    // 0, 1, 2, …
	PatternRandom Pattern = "random" // a fixed pseudo-random permutation
	PatternStride Pattern = "stride" // 0, K, 2K, …, then 1, 1+K, …: every page once
)

// ParsePattern parses "seq", "random" or "stride".
func ParsePattern(s string) (Pattern, error) {
	switch p := Pattern(s); p {
	case PatternSeq, PatternRandom, PatternStride:
		return p, nil
	}
	return "", fmt.Errorf("%w: pattern %q (want seq, random or stride)", ErrUsage, s)
}

// Order returns the page indexes 0..n-1 in the order pattern p visits them.
// Every page appears exactly once. stride is used by PatternStride (values
// below 1 mean 1); seed makes PatternRandom reproducible.
func Order(p Pattern, n, stride int, seed uint64) []int {
	out := make([]int, 0, n)
	switch p {
	case PatternRandom:
		for i := range n {
			out = append(out, i)
		}
		// Fisher-Yates with a splitmix64 generator: same seed, same order.
		x := seed
		next := func() uint64 {
			x += 0x9e3779b97f4a7c15
			z := x
			z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
			z = (z ^ (z >> 27)) * 0x94d049bb133111eb
			return z ^ (z >> 31)
		}
		for i := n - 1; i > 0; i-- {
			j := int(next() % uint64(i+1))
			out[i], out[j] = out[j], out[i]
		}
	case PatternStride:
		if stride < 1 {
			stride = 1
		}
		for start := 0; start < stride && start < n; start++ {
			for i := start; i < n; i += stride {
				out = append(out, i)
			}
		}
	default:
		for i := range n {
			out = append(out, i)
		}
	}
	return out
}

// Verify names the content a worker checks its pages against after
// touching them: "zero:0" or "pattern:SEED" (content.Pattern(SEED)).
type Verify struct {
	Kind string // "" (no verification), "zero" or "pattern"
	Seed uint64
}

// ParseVerify parses "zero", "zero:0" or "pattern:SEED".
func ParseVerify(s string) (Verify, error) {
	kind, seed, hasSeed := strings.Cut(s, ":")
	switch kind {
	case "zero":
		if hasSeed && seed != "0" && seed != "" {
			return Verify{}, fmt.Errorf("%w: verify %q: zero content takes no seed", ErrUsage, s)
		}
		return Verify{Kind: "zero"}, nil
	case "pattern":
		n, err := strconv.ParseUint(seed, 0, 64)
		if !hasSeed || err != nil {
			return Verify{}, fmt.Errorf("%w: verify %q: want pattern:SEED with a number", ErrUsage, s)
		}
		return Verify{Kind: "pattern", Seed: n}, nil
	}
	return Verify{}, fmt.Errorf("%w: verify %q (want zero:0 or pattern:SEED)", ErrUsage, s)
}

// String is the flag form ("pattern:7"), "" when unset.
func (v Verify) String() string {
	if v.Kind == "" {
		return ""
	}
	return fmt.Sprintf("%s:%d", v.Kind, v.Seed)
}

// WorkerResult is what `vcored worker --result FILE` writes: everything it
// measured. The bench reads it back with ReadWorkerResult.
type WorkerResult struct {
	Mode        WorkerMode `json:"mode"`
	Pid         int        `json:"pid"`
	CPU         int        `json:"cpu"`  // the toucher's CPU after pinning (-1: not pinned, see RanOn)
	Node        int        `json:"node"` // the node of the CPU the toucher ran on
	Pattern     Pattern    `json:"pattern"`
	Access      string     `json:"access"` // "write" or "read"
	FaultAround int        `json:"fault_around"`
	PageSize    int        `json:"page_size"`
	// TimerOverheadNS is the median cost of an empty timed access (a page
	// already present), included in every recorded latency.
	TimerOverheadNS int64             `json:"timer_overhead_ns"`
	Dataspaces      []DataspaceResult `json:"dataspaces"`
	Errors          []string          `json:"errors,omitempty"`
}

// DataspaceResult is one dataspace (or anonymous region) of a worker.
type DataspaceResult struct {
	Name string `json:"name"`
	// Pages is how many pages were touched, each exactly once, and timed.
	Pages int `json:"pages"`
	// Latency holds one value per first touch (ns), fault or not: with
	// fault-around most touches find the page already there.
	Latency hist.Snapshot `json:"latency"`
	// LatencyBinsNS is Latency's bins with explicit bounds: [lowest ns,
	// highest ns, count] per non-empty bin, in order (hist.BinRange;
	// docs/PROTOCOL.md, "Histogram bins").
	LatencyBinsNS [][3]int64 `json:"latency_bins_ns,omitempty"`
	// TouchNS is the sum of all timed touches; WallNS the whole touch loop.
	TouchNS int64 `json:"touch_ns"`
	WallNS  int64 `json:"wall_ns"`
	// HandlerFaults is the number of faults the raw handler served (raw
	// and xproc modes only; 0 otherwise).
	HandlerFaults int64 `json:"handler_faults,omitempty"`
	// VerifiedPages passed the content check; Verify is the content checked.
	VerifiedPages int    `json:"verified_pages"`
	Verify        string `json:"verify,omitempty"`
	// Placement counts pages per node id; negative keys are -errno from
	// move_pages (-2 = not present).
	Placement map[int]int `json:"placement,omitempty"`
	// IRQ is the increase of /proc/interrupts over the touch loop (read
	// just before and just after it), nil if it could not be read.
	IRQ    *irqstat.Delta `json:"irq,omitempty"`
	Errors []string       `json:"errors,omitempty"`
}

// Hist restores the latency histogram.
func (d DataspaceResult) Hist() (*hist.Histogram, error) {
	h, err := hist.FromSnapshot(d.Latency)
	if err != nil {
		return nil, fmt.Errorf("dataspace %q: %w", d.Name, err)
	}
	return h, nil
}

// LocalShare is the fraction of placed pages that are on node (0..1); -1
// when no page could be located.
func (d DataspaceResult) LocalShare(node int) float64 {
	var placed, local int
	for n, c := range d.Placement {
		if n < 0 {
			continue
		}
		placed += c
		if n == node {
			local += c
		}
	}
	if placed == 0 {
		return -1
	}
	return float64(local) / float64(placed)
}

// WriteFile writes r as JSON to path (atomically: a temp file renamed).
func (r *WorkerResult) WriteFile(path string) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: encode worker result: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: write worker result: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("bench: write worker result: %w", err)
	}
	return nil
}

// ReadWorkerResult reads a result file written by WriteFile.
func ReadWorkerResult(path string) (*WorkerResult, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bench: read worker result: %w", err)
	}
	var r WorkerResult
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("bench: worker result %s: %w", path, err)
	}
	if len(r.Dataspaces) == 0 {
		return nil, fmt.Errorf("bench: worker result %s: %w", path, errors.New("no dataspaces"))
	}
	return &r, nil
}
