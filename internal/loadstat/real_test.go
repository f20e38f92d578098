package loadstat

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestRealBurn puts a CPU-burning child into a test cgroup of every
// hierarchy this host has for it (v1 cpuacct, the v2 mount, and a v1
// hierarchy's cgroup.procs read through /proc as the fallback) and checks that each
// source sees its usage rise by a quarter of a CPU second, and that the v2
// group's pressure is readable. The groups are removed afterwards.
func TestRealBurn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	host := os.DirFS("/")
	layout := ProbeLayout(host)
	name := fmt.Sprintf("vcored-loadstat-test-%d", os.Getpid())

	burn := exec.Command("/bin/sh", "-c", "while :; do :; done")
	if err := burn.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = burn.Process.Kill()
		_ = burn.Wait()
	}()
	pid := strconv.Itoa(burn.Process.Pid)

	type src struct {
		layout Layout
		source string
	}
	var srcs []src
	join := func(hier string) bool {
		dir := filepath.Join("/", hier, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Logf("%s: %v", hier, err)
			return false
		}
		t.Cleanup(func() { removeGroup(t, dir) })
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pid), 0); err != nil {
			t.Fatalf("join %s: %v", dir, err)
		}
		return true
	}
	if layout.CPUAcct != "" && join(layout.CPUAcct) {
		srcs = append(srcs, src{Layout{CPUAcct: layout.CPUAcct}, SourceCPUAcct})
	}
	if layout.V2 != "" && join(layout.V2) {
		srcs = append(srcs, src{Layout{V2: layout.V2}, SourceV2})
	}
	// A v1 cpuset group takes no task before its cpus and mems are set:
	// use the next hierarchy.
	for _, h := range layout.Procs {
		if filepath.Base(h) != "cpuset" {
			if join(h) {
				srcs = append(srcs, src{Layout{Procs: []string{h}}, SourceProcs})
			}
			break
		}
	}
	if len(srcs) == 0 {
		t.Skipf("no cgroup hierarchy to test in (layout %+v)", layout)
	}

	first := make([]CPUSample, len(srcs))
	for i, s := range srcs {
		smp, err := New(host, s.layout).CPU(name, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if smp.Source != s.source {
			t.Fatalf("source %s, want %s", smp.Source, s.source)
		}
		first[i] = smp
	}
	// A generous deadline: the CPUs here are shared by many jobs.
	deadline := time.Now().Add(60 * time.Second)
	for i, s := range srcs {
		r := New(host, s.layout)
		for {
			cur, err := r.CPU(name, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if cur.Usage-first[i].Usage >= 250*time.Millisecond {
				u, p, ok := Rates(first[i], cur)
				t.Logf("%s: %s used in %s (%.2f CPUs, pressure %.2f, ok %t)", s.source, cur.Usage-first[i].Usage,
					cur.At.Sub(first[i].At).Round(time.Millisecond), u, p, ok)
				if !ok || u <= 0 {
					t.Errorf("%s: Rates(%+v, %+v) = %v, %v, %t", s.source, first[i], cur, u, p, ok)
				}
				if s.source == SourceV2 && !cur.HavePressure {
					t.Errorf("v2 group without cpu.pressure on a kernel with %s", func() string {
						_, err := New(host, layout).MachinePressure()
						return fmt.Sprint("machine PSI error ", err)
					}())
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: usage rose only %s in 60 s", s.source, cur.Usage-first[i].Usage)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if _, err := New(host, layout).MachinePressure(); err != nil && !errors.Is(err, ErrNoPressure) {
		t.Errorf("MachinePressure: %v", err)
	}
}

// removeGroup removes a cgroup directory once the killed child has left it.
func removeGroup(t *testing.T, dir string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("cgroup %s left behind: %v", dir, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
