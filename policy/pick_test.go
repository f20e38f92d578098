package policy

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy/policytest"
	"github.com/vcored/vcored/topology"
)

func TestPickCPUs(t *testing.T) {
	two, epyc := policytest.TwoSocketSMT2(), policytest.EPYC8Node()
	node0Part := "1-3,8-11" // node 0 of twoSocketSMT2 minus reserved CPU 0
	tests := []struct {
		name   string
		m      *topology.Machine
		within string
		n      int
		want   string
	}{
		{"dev machine", policytest.SingleNode2CPU(), "1", 1, "1"},
		{"one CPU from a broken core keeps the whole core 1/9", two, node0Part, 1, "8"},
		{"two CPUs: a whole SMT pair", two, node0Part, 2, "1,9"},
		{"three CPUs: one LLC group", two, node0Part, 3, "1,8-9"},
		{"four CPUs: the whole free LLC group", two, node0Part, 4, "2-3,10-11"},
		{"five CPUs: a whole group plus the rest in one group", two, node0Part, 5, "2-3,8,10-11"},
		{"all of the partition", two, node0Part, 7, node0Part},
		{"pair on a full machine", two, "0-15", 2, "0,8"},
		{"eight on a full machine fill one socket", two, "0-15", 8, "0-3,8-11"},
		{"twelve on a full machine", two, "0-15", 12, "0-5,8-13"},
		{"a whole CCX of an EPYC node", epyc, "12-15,44-47", 4, "12-13,44-45"},
		{"three on an EPYC node stay in one CCX", epyc, "12-15,44-47", 3, "12-13,44"},
		{"one on an EPYC node", epyc, "12-15,44-47", 1, "12"},
		{"two nodes' worth on EPYC", epyc, "0-63", 16, "0-7,32-39"},
		{"no SMT: lowest first", policytest.SingleNode2CPU(), "0-1", 1, "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PickCPUs(tt.m, cpus(tt.within), tt.n)
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tt.want {
				t.Errorf("PickCPUs(%q, %d) = %q, want %q", tt.within, tt.n, got, tt.want)
			}
		})
	}
}

func TestPickCPUsErrors(t *testing.T) {
	offline := policytest.TwoSocketSMT2()
	offline.CPUs[3].Online = false
	tests := []struct {
		name   string
		m      *topology.Machine
		within string
		n      int
		want   error
	}{
		{"zero", policytest.TwoSocketSMT2(), "0-3", 0, ErrBadRequest},
		{"negative", policytest.TwoSocketSMT2(), "0-3", -1, ErrBadRequest},
		{"too many", policytest.TwoSocketSMT2(), "0-3", 5, ErrNotEnoughCPUs},
		{"empty within", policytest.TwoSocketSMT2(), "", 1, ErrNotEnoughCPUs},
		{"offline CPU", offline, "0-3", 1, ErrUnknownCPU},
		{"unknown CPU", policytest.TwoSocketSMT2(), "0-16", 1, ErrUnknownCPU},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := PickCPUs(tt.m, cpus(tt.within), tt.n)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestPickCPUsProperties checks, for random subsets of the EPYC shape, that
// the answer has n CPUs of within, touches the fewest LLC groups possible,
// and is the same when asked again.
func TestPickCPUsProperties(t *testing.T) {
	m := policytest.EPYC8Node()
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 300; iter++ {
		var ids []hw.CPU
		for id := range hw.CPU(64) {
			if rng.IntN(3) > 0 {
				ids = append(ids, id)
			}
		}
		within := hw.NewSet(ids...)
		if within.IsEmpty() {
			continue
		}
		n := 1 + rng.IntN(within.Len())
		got, err := PickCPUs(m, within, n)
		if err != nil {
			t.Fatalf("PickCPUs(%q, %d): %v", within, n, err)
		}
		if got.Len() != n || !got.IsSubsetOf(within) {
			t.Fatalf("PickCPUs(%q, %d) = %q: wrong size or outside", within, n, got)
		}
		if again, _ := PickCPUs(m, within, n); !again.Equal(got) {
			t.Fatalf("PickCPUs(%q, %d) gave %q then %q", within, n, got, again)
		}
		if touched, least := groupsTouched(m, got), fewestGroups(m, within, n); touched != least {
			t.Fatalf("PickCPUs(%q, %d) = %q touches %d LLC groups, %d suffice", within, n, got, touched, least)
		}
	}
}

func groupsTouched(m *topology.Machine, set hw.CPUSet) int {
	n := 0
	for _, g := range m.LLCGroups {
		if !g.Intersect(set).IsEmpty() {
			n++
		}
	}
	return n
}

// fewestGroups: take the fullest groups first.
func fewestGroups(m *topology.Machine, within hw.CPUSet, n int) int {
	var sizes []int
	for _, g := range m.LLCGroups {
		sizes = append(sizes, g.Intersect(within).Len())
	}
	slices.Sort(sizes)
	slices.Reverse(sizes)
	for i, s := range sizes {
		n -= s
		if n <= 0 {
			return i + 1
		}
	}
	return len(sizes)
}
