// Package loadstat reads the load figures core's rebalancer samples: a
// cgroup's cumulative CPU time and CPU pressure stall, the machine's CPU
// pressure, and a node's free memory. Every read goes through an fs.FS
// rooted at "/" (os.DirFS("/") on the host, a tree under t.TempDir() in
// tests); nothing here writes.
//
// Where a group's figures come from, best first:
//
//   - cgroup v2 (a unified host, or the v2 mount of a hybrid host when the
//     group exists there): cpu.stat usage_usec and cpu.pressure. Both are
//     cgroup core files, present without the cpu controller enabled.
//   - cgroup v1 cpuacct: cpuacct.usage (nanoseconds). v1 has no per-group
//     pressure; MachinePressure (/proc/pressure/cpu) is the only PSI then.
//   - neither (vcored's v1 groups live in cpuset, memory and pids, not
//     cpuacct): the utime+stime of the processes in the group's cgroup.procs
//     of another hierarchy, from /proc/PID/stat. Time of processes that have
//     exited is lost, so the counter can go down; Rates treats a counter that
//     went down as a restart.
package loadstat

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// Sentinel errors.
var (
	// ErrNoGroup: the group is in none of the hierarchies the layout names.
	ErrNoGroup = errors.New("loadstat: no such cgroup")
	// ErrNoPressure: the kernel reports no CPU pressure here (PSI disabled,
	// or per-group PSI asked of a v1 group).
	ErrNoPressure = errors.New("loadstat: no CPU pressure information")
	// ErrMalformed: a file whose content cannot be understood.
	ErrMalformed = errors.New("loadstat: malformed file")
)

// Sources of a CPUSample's usage.
const (
	SourceV2      = "cpu.stat"
	SourceCPUAcct = "cpuacct.usage"
	SourceProcs   = "proc stat"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, which
// is 100 on every architecture Linux supports today.
const userHZ = 100

// Layout says where the hierarchies are, as paths relative to the FS root
// ("" where there is none).
type Layout struct {
	// V2 is the cgroup2 mount: "sys/fs/cgroup" on a unified host,
	// "sys/fs/cgroup/unified" on a hybrid one.
	V2 string
	// CPUAcct is the v1 cpuacct hierarchy: "sys/fs/cgroup/cpuacct" or
	// "sys/fs/cgroup/cpu,cpuacct".
	CPUAcct string
	// Procs are v1 hierarchies whose cgroup.procs list a group's processes
	// when it is in neither V2 nor CPUAcct (vcored's: cpuset first).
	Procs []string
}

// ProbeLayout finds the hierarchies under fsys's sys/fs/cgroup.
func ProbeLayout(fsys fs.FS) Layout {
	var l Layout
	const root = "sys/fs/cgroup"
	for _, d := range []string{root, root + "/unified"} {
		if exists(fsys, path.Join(d, "cgroup.controllers")) {
			l.V2 = d
			break
		}
	}
	for _, d := range []string{"cpuacct", "cpu,cpuacct", "cpuacct,cpu"} {
		if exists(fsys, path.Join(root, d, "cpuacct.usage")) {
			l.CPUAcct = path.Join(root, d)
			break
		}
	}
	for _, d := range []string{"cpuset", "memory", "pids"} {
		if exists(fsys, path.Join(root, d, "cgroup.procs")) {
			l.Procs = append(l.Procs, path.Join(root, d))
		}
	}
	return l
}

// Reader reads load figures from one FS.
type Reader struct {
	fsys   fs.FS
	layout Layout
}

// New returns a Reader of fsys (rooted at "/") with the given layout.
func New(fsys fs.FS, l Layout) *Reader { return &Reader{fsys: fsys, layout: l} }

// Layout returns the reader's layout.
func (r *Reader) Layout() Layout { return r.layout }

// PSI is one line of a pressure file ("some avg10=… avg60=… avg300=…
// total=…"): the share of time (0..1) some task waited for a CPU over the
// last 10, 60 and 300 seconds, and the cumulative stall time.
type PSI struct {
	Avg10, Avg60, Avg300 float64
	Total                time.Duration
}

// CPUSample is a group's cumulative CPU counters at one moment.
type CPUSample struct {
	At    time.Time
	Usage time.Duration // CPU time used
	// Stall is the cumulative PSI "some" stall of the group; valid when
	// HavePressure.
	Stall        time.Duration
	HavePressure bool
	Source       string // SourceV2, SourceCPUAcct or SourceProcs
}

// CPU reads group's counters (group is a path relative to each hierarchy's
// root, e.g. "vcored/node0/toucher"), stamping them with at.
func (r *Reader) CPU(group string, at time.Time) (CPUSample, error) {
	if group == "" || path.IsAbs(group) || !fs.ValidPath(group) {
		return CPUSample{}, fmt.Errorf("%w: bad group path %q", ErrNoGroup, group)
	}
	s := CPUSample{At: at}
	if r.layout.V2 != "" {
		dir := path.Join(r.layout.V2, group)
		if exists(r.fsys, path.Join(dir, "cpu.stat")) {
			usec, err := r.keyed(path.Join(dir, "cpu.stat"), "usage_usec")
			if err != nil {
				return CPUSample{}, err
			}
			s.Usage, s.Source = time.Duration(usec)*time.Microsecond, SourceV2
			if p, err := r.psi(path.Join(dir, "cpu.pressure")); err == nil {
				s.Stall, s.HavePressure = p.Total, true
			} else if !errors.Is(err, ErrNoPressure) {
				return CPUSample{}, err
			}
			return s, nil
		}
	}
	if r.layout.CPUAcct != "" {
		name := path.Join(r.layout.CPUAcct, group, "cpuacct.usage")
		if exists(r.fsys, name) {
			ns, err := r.number(name)
			if err != nil {
				return CPUSample{}, err
			}
			s.Usage, s.Source = time.Duration(ns), SourceCPUAcct
			return s, nil
		}
	}
	for _, h := range r.layout.Procs {
		name := path.Join(h, group, "cgroup.procs")
		if !exists(r.fsys, name) {
			continue
		}
		ticks, err := r.procTicks(name)
		if err != nil {
			return CPUSample{}, err
		}
		s.Usage, s.Source = time.Duration(ticks)*time.Second/userHZ, SourceProcs
		return s, nil
	}
	return CPUSample{}, fmt.Errorf("%w: %q (layout %+v)", ErrNoGroup, group, r.layout)
}

// MachinePressure reads /proc/pressure/cpu.
func (r *Reader) MachinePressure() (PSI, error) { return r.psi("proc/pressure/cpu") }

// NodeMemFree reads node's free memory from
// sys/devices/system/node/nodeN/meminfo.
func (r *Reader) NodeMemFree(node hw.Node) (hw.Bytes, error) {
	sys, err := fs.Sub(r.fsys, "sys")
	if err != nil {
		return 0, fmt.Errorf("loadstat: %w", err)
	}
	_, free, err := topology.NodeMeminfo(sys, node)
	if err != nil {
		return 0, fmt.Errorf("loadstat: node %d free memory: %w", node, err)
	}
	return free, nil
}

// Rates turns two samples of the same group into rates: CPUs busy (CPU
// seconds per second) and the share of time some task stalled (0..1, 0
// without pressure). ok is false when the samples cannot give a rate: not
// in time order, from different sources, or a counter that went down (the
// group was recreated, or a process of a SourceProcs group exited).
func Rates(prev, cur CPUSample) (usage, pressure float64, ok bool) {
	dt := cur.At.Sub(prev.At)
	if dt <= 0 || prev.Source != cur.Source || cur.Usage < prev.Usage {
		return 0, 0, false
	}
	usage = float64(cur.Usage-prev.Usage) / float64(dt)
	if prev.HavePressure && cur.HavePressure {
		if cur.Stall < prev.Stall {
			return 0, 0, false
		}
		pressure = min(1, float64(cur.Stall-prev.Stall)/float64(dt))
	}
	return usage, pressure, true
}

func exists(fsys fs.FS, name string) bool {
	_, err := fs.Stat(fsys, name)
	return err == nil
}

func (r *Reader) read(name string) (string, error) {
	b, err := fs.ReadFile(r.fsys, name)
	if err != nil {
		return "", fmt.Errorf("loadstat: %w", err)
	}
	return string(b), nil
}

func malformed(name, content string, why string) error {
	if len(content) > 80 {
		content = content[:80] + "…"
	}
	return fmt.Errorf("%w: %s: %s (%q)", ErrMalformed, name, why, content)
}

// number reads a file holding one unsigned number.
func (r *Reader) number(name string) (uint64, error) {
	s, err := r.read(name)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, malformed(name, s, "want one number")
	}
	return v, nil
}

// keyed reads the value of key from a "key value" per line file.
func (r *Reader) keyed(name, key string) (uint64, error) {
	s, err := r.read(name)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == key {
			v, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0, malformed(name, line, "want \""+key+" <number>\"")
			}
			return v, nil
		}
	}
	return 0, malformed(name, s, "no "+key+" line")
}

// psi reads the "some" line of a pressure file. A missing file, or one the
// kernel refuses to read (PSI compiled in but disabled: EOPNOTSUPP), is
// ErrNoPressure.
func (r *Reader) psi(name string) (PSI, error) {
	b, err := fs.ReadFile(r.fsys, name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, errors.ErrUnsupported) { // EOPNOTSUPP: psi=0
			return PSI{}, fmt.Errorf("%w: %s: %w", ErrNoPressure, name, err)
		}
		return PSI{}, fmt.Errorf("loadstat: %w", err)
	}
	s := string(b)
	for line := range strings.Lines(s) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "some" {
			continue
		}
		var p PSI
		seen := 0
		for _, kv := range f[1:] {
			k, v, found := strings.Cut(kv, "=")
			if !found {
				return PSI{}, malformed(name, line, "want key=value fields")
			}
			var dst *float64
			switch k {
			case "avg10":
				dst = &p.Avg10
			case "avg60":
				dst = &p.Avg60
			case "avg300":
				dst = &p.Avg300
			case "total":
				us, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return PSI{}, malformed(name, line, "total must be a number of microseconds")
				}
				p.Total = time.Duration(us) * time.Microsecond
				seen++
				continue
			default:
				continue
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f >= 0 && f <= 100) { // NaN too
				return PSI{}, malformed(name, line, k+" must be a percentage")
			}
			*dst = f / 100
			seen++
		}
		if seen != 4 {
			return PSI{}, malformed(name, line, "want avg10, avg60, avg300 and total")
		}
		return p, nil
	}
	return PSI{}, malformed(name, s, "no \"some\" line")
}

// procTicks sums utime+stime (fields 14 and 15 of /proc/PID/stat) of the
// processes listed in a cgroup.procs file. A process that exits between
// the listing and its stat read is skipped.
func (r *Reader) procTicks(procs string) (uint64, error) {
	s, err := r.read(procs)
	if err != nil {
		return 0, err
	}
	var sum uint64
	for line := range strings.Lines(s) {
		pidStr := strings.TrimSpace(line)
		if pidStr == "" {
			continue
		}
		if pid, err := strconv.Atoi(pidStr); err != nil || pid <= 0 {
			return 0, malformed(procs, line, "want one pid a line")
		}
		name := path.Join("proc", pidStr, "stat")
		st, err := r.read(name)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			continue // it exited after the listing
		}
		if err != nil {
			return 0, err
		}
		// The command name (field 2) is in parentheses and may hold
		// spaces; fields are counted after its closing parenthesis.
		i := strings.LastIndexByte(st, ')')
		if i < 0 {
			return 0, malformed(name, st, "no \")\" after the command name")
		}
		f := strings.Fields(st[i+1:])
		// f[0] is field 3 (state); utime and stime are fields 14 and 15.
		if len(f) < 13 {
			return 0, malformed(name, st, "fewer than 15 fields")
		}
		u, err1 := strconv.ParseUint(f[11], 10, 64)
		k, err2 := strconv.ParseUint(f[12], 10, 64)
		if err1 != nil || err2 != nil {
			return 0, malformed(name, st, "utime and stime must be numbers")
		}
		sum += u + k
	}
	return sum, nil
}
