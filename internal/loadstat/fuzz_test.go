package loadstat

import (
	"testing"
	"testing/fstest"
	"time"
)

// FuzzFiles: whatever cpu.stat, cpu.pressure, cgroup.procs and stat hold,
// CPU returns a sample or an error (never panics), and a pressure it
// accepts lies in [0, 1].
func FuzzFiles(f *testing.F) {
	f.Add("usage_usec 5\n", psiFile, "10\n", "10 (x) S 1 1 1 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 1 1 1 0\n")
	f.Add("", "some avg10=1 avg60=2 avg300=3 total=4", "", "")
	f.Add("usage_usec -1", "some", "x", "(")
	f.Fuzz(func(t *testing.T, stat, pressure, procs, pidStat string) {
		tree := fstest.MapFS{
			"sys/fs/cgroup/cgroup.controllers":    file(""),
			"sys/fs/cgroup/g/cpu.stat":            file(stat),
			"sys/fs/cgroup/g/cpu.pressure":        file(pressure),
			"proc/pressure/cpu":                   file(pressure),
			"sys/fs/cgroup/cpuset/h/cgroup.procs": file(procs),
			"proc/10/stat":                        file(pidStat),
		}
		r := New(tree, Layout{V2: "sys/fs/cgroup", Procs: []string{"sys/fs/cgroup/cpuset"}})
		_, _ = r.CPU("g", time.Time{})
		_, _ = r.CPU("h", time.Time{})
		if p, err := r.MachinePressure(); err == nil {
			for _, v := range []float64{p.Avg10, p.Avg60, p.Avg300} {
				if !(v >= 0 && v <= 1) {
					t.Fatalf("pressure %v outside [0, 1] from %q", v, pressure)
				}
			}
		}
	})
}
