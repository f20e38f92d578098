package bench

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// machine builds a literal topology: nodes given as CPU lists, all allowed.
func machine(nodeCPUs ...string) *topology.Machine {
	m := &topology.Machine{}
	var all []hw.CPU
	var nodes []hw.Node
	for i, l := range nodeCPUs {
		cpus := hw.MustParse[hw.CPU](l)
		m.Nodes = append(m.Nodes, topology.Node{ID: hw.Node(i), CPUs: cpus, CPULess: cpus.IsEmpty()})
		for _, c := range cpus.Slice() {
			m.CPUs = append(m.CPUs, topology.CPU{ID: c, Online: true, Node: hw.Node(i)})
			all = append(all, c)
		}
		nodes = append(nodes, hw.Node(i))
	}
	m.AllowedCPUs = hw.NewSet(all...)
	m.AllowedNodes = hw.NewSet(nodes...)
	return m
}

func TestPlanLayout(t *testing.T) {
	for _, tc := range []struct {
		name    string
		m       *topology.Machine
		coreCPU hw.CPU
		parts   []string // "node:cpus"
		err     error
	}{
		{"dev machine: 2 CPUs one node", machine("0-1"), 0, []string{"0:1"}, nil},
		{"two nodes", machine("0-3", "4-7"), 0, []string{"0:1-3", "1:4-7"}, nil},
		{"cpu-less node skipped", machine("0-1", "", "2-3"), 0, []string{"0:1", "2:2-3"}, nil},
		{"one CPU", machine("0"), 0, nil, ErrMachine},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := PlanLayout(tc.m)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range l.Partitions {
				got = append(got, fmt.Sprintf("%d:%s", p.Node, p.CPUs))
			}
			if l.CoreCPU != tc.coreCPU || !slices.Equal(got, tc.parts) {
				t.Errorf("layout core %d parts %v, want core %d parts %v", l.CoreCPU, got, tc.coreCPU, tc.parts)
			}
		})
	}
}

func TestPlanLayoutRespectsAllowed(t *testing.T) {
	m := machine("0-3", "4-7")
	m.AllowedCPUs = hw.MustParse[hw.CPU]("2-5")
	l, err := PlanLayout(m)
	if err != nil {
		t.Fatal(err)
	}
	if l.CoreCPU != 2 || len(l.Partitions) != 2 || l.Partitions[0].CPUs.String() != "3" || l.Partitions[1].CPUs.String() != "4-5" {
		t.Errorf("layout %+v", l)
	}
}

func TestGeneratedConfigsParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    *topology.Machine
	}{{"one node", machine("0-1")}, {"two nodes", machine("0-3", "4-7")}} {
		for _, pager := range []config.PagerMode{config.PagerLocal, config.PagerCentral} {
			t.Run(tc.name+"/"+string(pager), func(t *testing.T) {
				l, err := PlanLayout(tc.m)
				if err != nil {
					t.Fatal(err)
				}
				r := &DaemonRun{
					Dir: "/tmp/vcored-bench-1234", Exe: "/usr/local/bin/vcored \"quoted\"", CgroupParent: "vcored-bench-1234",
					Pager: pager, FaultAround: 16, Layout: l, Workers: 3, Pages: 4096, Pattern: PatternStride, Stride: 8, Seed: 42,
					Shared: pager == config.PagerLocal,
				}
				if err := r.Validate(); err != nil {
					t.Fatalf("%v\ncore.toml:\n%s\nvcore:\n%s", err, r.CoreTOML(), r.VCoreTOML(0))
				}
				core, _ := config.ParseCore("core.toml", []byte(r.CoreTOML()))
				if core.Pager != pager || core.FaultAround != 16 || core.Socket != r.CoreSocket() ||
					core.ReservedCPUs.String() != "0" || core.CgroupParent != "vcored-bench-1234" {
					t.Errorf("core config %+v", core)
				}
				if _, ok := core.Dataspace(SharedDataspace); ok != r.Shared {
					t.Errorf("shared dataspace declared = %v, want %v", ok, r.Shared)
				}
				for i, p := range l.Partitions {
					v, err := config.ParseVCore("n.toml", []byte(r.VCoreTOML(i)))
					if err != nil {
						t.Fatal(err)
					}
					if v.Node != p.Node || v.CoreSocket != r.CoreSocket() || v.Socket != r.VCoreSocket(i) || v.FaultAround != 16 {
						t.Errorf("vcore %d config %+v", i, v)
					}
					if len(v.Subsystems) != 3 {
						t.Fatalf("%d subsystems, want 3", len(v.Subsystems))
					}
					for w, s := range v.Subsystems {
						if s.Restart != config.RestartNever || !slices.Equal(s.Command, r.WorkerCommand(i, w)) {
							t.Errorf("subsystem %d: restart %q command %q", w, s.Restart, s.Command)
						}
						if len(s.Local) != 1 || s.Local[0].Name != LocalDataspace || s.Local[0].Seed != 42 ||
							uint64(s.Local[0].Size) != uint64(4096*os.Getpagesize()) {
							t.Errorf("subsystem %d local dataspaces %+v", w, s.Local)
						}
						if !p.CPUs.Contains(r.WorkerCPU(i, w)) {
							t.Errorf("worker %d pinned to CPU %d outside its partition %s", w, r.WorkerCPU(i, w), p.CPUs)
						}
						cmd := strings.Join(s.Command, " ")
						if !strings.Contains(cmd, "--verify pattern:42") || !strings.Contains(cmd, "--pattern stride --stride 8") {
							t.Errorf("worker command %q", cmd)
						}
					}
				}
			})
		}
	}
}

func TestTomlString(t *testing.T) {
	for in, want := range map[string]string{
		`plain`:     `"plain"`,
		`a"b\c`:     `"a\"b\\c"`,
		"tab\there": `"tab\u0009here"`,
	} {
		if got := tomlString(in); got != want {
			t.Errorf("tomlString(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestGeneratedZeroContent(t *testing.T) {
	l, err := PlanLayout(machine("0-1"))
	if err != nil {
		t.Fatal(err)
	}
	r := &DaemonRun{Dir: "/tmp/b", Exe: "/bin/vcored", CgroupParent: "vcored-bench-1/r3", Pager: config.PagerLocal,
		FaultAround: 16, Layout: l, Workers: 1, Pages: 64, Pattern: PatternSeq, Seed: 9, Zero: true}
	v, err := config.ParseVCore("n.toml", []byte(r.VCoreTOML(0)))
	if err != nil {
		t.Fatal(err)
	}
	s := v.Subsystems[0]
	if s.Local[0].Content != config.ContentZero || !slices.Contains(s.Command, "zero:0") {
		t.Errorf("zero run: content %q, command %q", s.Local[0].Content, s.Command)
	}
	if err := r.Validate(); err != nil {
		t.Error(err)
	}
}
