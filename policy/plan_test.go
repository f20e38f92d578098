package policy

import (
	"errors"
	"testing"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy/policytest"
	"github.com/vcored/vcored/topology"
)

func cpus(s string) hw.CPUSet { return hw.MustParse[hw.CPU](s) }

func TestMakePlan(t *testing.T) {
	type part struct {
		node   hw.Node
		cpus   string
		memory hw.Bytes
	}
	restricted := policytest.TwoSocketSMT2()
	restricted.AllowedCPUs = cpus("0-7")
	oneNodeAllowed := policytest.TwoSocketSMT2()
	oneNodeAllowed.AllowedNodes = hw.NewSet[hw.Node](1)
	tests := []struct {
		name     string
		m        *topology.Machine
		reserved string
		mem      hw.Bytes
		want     []part
	}{
		{"dev machine", policytest.SingleNode2CPU(), "0", 512 * hw.MiB, []part{{0, "1", 6*hw.GiB - 512*hw.MiB}}},
		{"two sockets", policytest.TwoSocketSMT2(), "0", 512 * hw.MiB, []part{
			{0, "1-3,8-11", 16*hw.GiB - 512*hw.MiB}, {1, "4-7,12-15", 16*hw.GiB - 512*hw.MiB}}},
		{"reserve an SMT pair", policytest.TwoSocketSMT2(), "0,8", 0, []part{{0, "1-3,9-11", 16 * hw.GiB}, {1, "4-7,12-15", 16 * hw.GiB}}},
		{"reserve more memory than a node has", policytest.SingleNode2CPU(), "0", 7 * hw.GiB, []part{{0, "1", 0}}},
		{"allowed CPUs restrict", restricted, "0", 0, []part{{0, "1-3", 16 * hw.GiB}, {1, "4-7", 16 * hw.GiB}}},
		{"allowed nodes restrict", oneNodeAllowed, "0", 0, []part{{1, "4-7,12-15", 16 * hw.GiB}}},
		{"cpu-less node is memory only", policytest.WithCPULessNode(policytest.SingleNode2CPU(), 32*hw.GiB), "0", hw.GiB, []part{
			{0, "1", 5 * hw.GiB}, {1, "", 31 * hw.GiB}}},
		{"all of node 0 reserved", policytest.TwoSocketSMT2(), "0-3,8-11", 0, []part{{0, "", 16 * hw.GiB}, {1, "4-7,12-15", 16 * hw.GiB}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := MakePlan(tt.m, cpus(tt.reserved), tt.mem)
			if err != nil {
				t.Fatal(err)
			}
			if len(plan.Partitions) != len(tt.want) {
				t.Fatalf("got %d partitions %+v, want %d", len(plan.Partitions), plan.Partitions, len(tt.want))
			}
			for i, w := range tt.want {
				got := plan.Partitions[i]
				if got.Node != w.node || got.CPUs.String() != w.cpus || got.Memory != w.memory {
					t.Errorf("partition %d = node %d cpus %q memory %s, want node %d cpus %q memory %s",
						i, got.Node, got.CPUs, got.Memory, w.node, w.cpus, w.memory)
				}
				if got.MemoryOnly() != (w.cpus == "") {
					t.Errorf("partition %d MemoryOnly = %t", i, got.MemoryOnly())
				}
				if p, ok := plan.Partition(w.node); !ok || !p.CPUs.Equal(got.CPUs) {
					t.Errorf("Plan.Partition(%d) = %+v, %t", w.node, p, ok)
				}
			}
			again, _ := MakePlan(tt.m, cpus(tt.reserved), tt.mem)
			if !again.CPUs().Equal(plan.CPUs()) {
				t.Errorf("not deterministic: %s then %s", plan.CPUs(), again.CPUs())
			}
		})
	}
}

func TestMakePlanErrors(t *testing.T) {
	offline := policytest.TwoSocketSMT2()
	offline.CPUs[5].Online = false
	tests := []struct {
		name     string
		m        *topology.Machine
		reserved string
		want     error
	}{
		{"reserved CPU does not exist", policytest.SingleNode2CPU(), "0,7", ErrUnknownCPU},
		{"reserved CPU offline", offline, "5", ErrUnknownCPU},
		{"nothing left", policytest.SingleNode2CPU(), "0-1", ErrNothingToPartition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := MakePlan(tt.m, cpus(tt.reserved), 0)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}
