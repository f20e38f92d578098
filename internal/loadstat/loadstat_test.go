package loadstat

import (
	"errors"
	"reflect"
	"testing"
	"testing/fstest"
	"time"

	"github.com/vcored/vcored/internal/hw"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func file(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }

const psiFile = "some avg10=12.50 avg60=5.00 avg300=1.00 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"

// hybridTree is this dev machine's shape: v1 controllers, an empty v2
// mount at unified, cpuacct on its own.
func hybridTree() fstest.MapFS {
	return fstest.MapFS{
		"sys/fs/cgroup/unified/cgroup.controllers":         file(""),
		"sys/fs/cgroup/unified/inv2/cpu.stat":              file("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"),
		"sys/fs/cgroup/unified/inv2/cpu.pressure":          file(psiFile),
		"sys/fs/cgroup/cpuacct/cpuacct.usage":              file("99\n"),
		"sys/fs/cgroup/cpuacct/acct/cpuacct.usage":         file("2000000000\n"),
		"sys/fs/cgroup/cpuset/cgroup.procs":                file("1\n"),
		"sys/fs/cgroup/cpuset/vcored/node0/w/cgroup.procs": file("10\n11\n12\n"),
		"sys/fs/cgroup/memory/cgroup.procs":                file("1\n"),
		// utime 150 + stime 50 ticks; the name has spaces and parentheses.
		"proc/10/stat":      file("10 (my (odd) name) S 1 10 10 0 -1 4194560 100 0 0 0 150 50 7 7 20 0 1 0 100 1000 10 18446744073709551615\n"),
		"proc/11/stat":      file("11 (b) R 1 11 11 0 -1 0 0 0 0 0 100 0 0 0 20 0 1 0 100 1000 10 0\n"),
		"proc/pressure/cpu": file(psiFile),
		// 12 exited: no stat.
		"sys/devices/system/node/node0/meminfo": file("Node 0 MemTotal:        8087328 kB\nNode 0 MemFree:         3661808 kB\nNode 0 MemUsed:         4425520 kB\n"),
	}
}

func TestProbeLayout(t *testing.T) {
	got := ProbeLayout(hybridTree())
	want := Layout{V2: "sys/fs/cgroup/unified", CPUAcct: "sys/fs/cgroup/cpuacct", Procs: []string{"sys/fs/cgroup/cpuset", "sys/fs/cgroup/memory"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("hybrid: %+v, want %+v", got, want)
	}
	unified := fstest.MapFS{"sys/fs/cgroup/cgroup.controllers": file("cpuset cpu memory pids\n")}
	if got := ProbeLayout(unified); !reflect.DeepEqual(got, Layout{V2: "sys/fs/cgroup"}) {
		t.Errorf("unified: %+v", got)
	}
	joined := fstest.MapFS{"sys/fs/cgroup/cpu,cpuacct/cpuacct.usage": file("1\n")}
	if got := ProbeLayout(joined); got.CPUAcct != "sys/fs/cgroup/cpu,cpuacct" || got.V2 != "" {
		t.Errorf("cpu,cpuacct: %+v", got)
	}
}

func TestCPU(t *testing.T) {
	tree := hybridTree()
	r := New(tree, ProbeLayout(tree))
	tests := []struct {
		group string
		want  CPUSample
	}{
		{"inv2", CPUSample{At: t0, Usage: 1500 * time.Millisecond, Stall: 2500 * time.Millisecond, HavePressure: true, Source: SourceV2}},
		{"acct", CPUSample{At: t0, Usage: 2 * time.Second, Source: SourceCPUAcct}},
		{"vcored/node0/w", CPUSample{At: t0, Usage: 3 * time.Second, Source: SourceProcs}}, // (150+50+100) ticks
	}
	for _, tt := range tests {
		got, err := r.CPU(tt.group, t0)
		if err != nil {
			t.Fatalf("%s: %v", tt.group, err)
		}
		if got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.group, got, tt.want)
		}
	}
	// A v2 group without cpu.pressure (PSI off) still gives usage.
	delete(tree, "sys/fs/cgroup/unified/inv2/cpu.pressure")
	if got, err := r.CPU("inv2", t0); err != nil || got.HavePressure || got.Usage != 1500*time.Millisecond {
		t.Errorf("v2 without pressure: %+v, %v", got, err)
	}
	for _, g := range []string{"nope", "", "/abs", "../up"} {
		if _, err := r.CPU(g, t0); !errors.Is(err, ErrNoGroup) {
			t.Errorf("group %q: %v, want ErrNoGroup", g, err)
		}
	}
}

func TestMalformed(t *testing.T) {
	tests := []struct {
		name, file, content, group string
	}{
		{"cpu.stat without usage", "sys/fs/cgroup/unified/inv2/cpu.stat", "user_usec 1\n", "inv2"},
		{"cpu.stat usage not a number", "sys/fs/cgroup/unified/inv2/cpu.stat", "usage_usec x\n", "inv2"},
		{"pressure without some", "sys/fs/cgroup/unified/inv2/cpu.pressure", "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", "inv2"},
		{"pressure short", "sys/fs/cgroup/unified/inv2/cpu.pressure", "some avg10=0.00 total=0\n", "inv2"},
		{"pressure NaN", "sys/fs/cgroup/unified/inv2/cpu.pressure", "some avg10=NaN avg60=0.00 avg300=0.00 total=0\n", "inv2"},
		{"pressure bad percent", "sys/fs/cgroup/unified/inv2/cpu.pressure", "some avg10=101.00 avg60=0.00 avg300=0.00 total=0\n", "inv2"},
		{"cpuacct.usage not a number", "sys/fs/cgroup/cpuacct/acct/cpuacct.usage", "-1\n", "acct"},
		{"cgroup.procs not pids", "sys/fs/cgroup/cpuset/vcored/node0/w/cgroup.procs", "ten\n", "vcored/node0/w"},
		{"stat without parenthesis", "proc/10/stat", "10 x S 1\n", "vcored/node0/w"},
		{"stat too short", "proc/10/stat", "10 (x) S 1 2 3\n", "vcored/node0/w"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tree := hybridTree()
			tree[tt.file] = file(tt.content)
			_, err := New(tree, ProbeLayout(tree)).CPU(tt.group, t0)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%v, want ErrMalformed", err)
			}
		})
	}
}

func TestMachinePressureAndMemFree(t *testing.T) {
	tree := hybridTree()
	r := New(tree, ProbeLayout(tree))
	p, err := r.MachinePressure()
	if err != nil || p != (PSI{Avg10: 0.125, Avg60: 0.05, Avg300: 0.01, Total: 2500 * time.Millisecond}) {
		t.Errorf("MachinePressure = %+v, %v", p, err)
	}
	free, err := r.NodeMemFree(0)
	if err != nil || free != 3661808*hw.KiB {
		t.Errorf("NodeMemFree(0) = %s, %v", free, err)
	}
	if _, err := r.NodeMemFree(1); err == nil {
		t.Error("NodeMemFree of a missing node succeeded")
	}
	delete(tree, "proc/pressure/cpu")
	if _, err := r.MachinePressure(); !errors.Is(err, ErrNoPressure) {
		t.Errorf("no /proc/pressure/cpu: %v, want ErrNoPressure", err)
	}
}

func TestRates(t *testing.T) {
	a := CPUSample{At: t0, Usage: time.Second, Stall: time.Second, HavePressure: true, Source: SourceV2}
	b := CPUSample{At: t0.Add(2 * time.Second), Usage: 4 * time.Second, Stall: 1500 * time.Millisecond, HavePressure: true, Source: SourceV2}
	if u, p, ok := Rates(a, b); !ok || u != 1.5 || p != 0.25 {
		t.Errorf("Rates = %v, %v, %t; want 1.5, 0.25, true", u, p, ok)
	}
	noPSI := b
	noPSI.HavePressure = false
	if u, p, ok := Rates(a, noPSI); !ok || u != 1.5 || p != 0 {
		t.Errorf("without pressure: %v, %v, %t", u, p, ok)
	}
	for name, c := range map[string]CPUSample{
		"same time":     {At: t0, Usage: 2 * time.Second, Source: SourceV2},
		"counter reset": {At: t0.Add(time.Second), Usage: 0, Source: SourceV2},
		"other source":  {At: t0.Add(time.Second), Usage: 2 * time.Second, Source: SourceCPUAcct},
		"stall reset":   {At: t0.Add(time.Second), Usage: 2 * time.Second, HavePressure: true, Source: SourceV2},
	} {
		if _, _, ok := Rates(a, c); ok {
			t.Errorf("%s: rate given", name)
		}
	}
}
