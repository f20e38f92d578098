package policy

import (
	"errors"
	"testing"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy/policytest"
)

func TestAssignSubsystems(t *testing.T) {
	two := policytest.TwoSocketSMT2()
	part := cpus("1-3,8-11")
	tests := []struct {
		name string
		reqs []Request
		want []string
	}{
		{"nothing", nil, []string{}},
		{"whole partition", []Request{{}}, []string{"1-3,8-11"}},
		{"lists as given, counts from what is left",
			[]Request{{List: cpus("2-3")}, {Count: 2}, {}, {Count: 2}},
			[]string{"2-3", "1,9", "1-3,8-11", "10-11"}},
		{"counts spread while room is left",
			[]Request{{Count: 1}, {Count: 1}, {Count: 1}},
			[]string{"8", "1", "9"}},
		{"over-commit shares CPUs",
			[]Request{{Count: 4}, {Count: 4}},
			[]string{"2-3,10-11", "2-3,10-11"}},
		{"list order does not matter for counts",
			[]Request{{Count: 2}, {List: cpus("1,9")}},
			[]string{"2,10", "1,9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AssignSubsystems(two, part, tt.reqs)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d sets, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if got[i].String() != tt.want[i] {
					t.Errorf("request %d (%+v) = %q, want %q", i, tt.reqs[i], got[i], tt.want[i])
				}
			}
			again, _ := AssignSubsystems(two, part, tt.reqs)
			for i := range again {
				if !again[i].Equal(got[i]) {
					t.Errorf("request %d: %q then %q", i, got[i], again[i])
				}
			}
		})
	}
}

func TestAssignSubsystemsSingleCPU(t *testing.T) {
	got, err := AssignSubsystems(policytest.SingleNode2CPU(), cpus("1"), []Request{{Count: 1}, {Count: 1}, {List: cpus("1")}})
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range got {
		if s.String() != "1" {
			t.Errorf("request %d = %q, want \"1\"", i, s)
		}
	}
}

func TestAssignSubsystemsErrors(t *testing.T) {
	_, err := AssignSubsystems(policytest.TwoSocketSMT2(), cpus("1-3"), []Request{
		{List: cpus("3-4")},
		{Count: 4},
		{Count: 1, List: cpus("1")},
		{Count: 1},
	})
	for _, want := range []error{ErrOutsidePartition, ErrNotEnoughCPUs, ErrBadRequest} {
		if !errors.Is(err, want) {
			t.Errorf("err = %v; does not report %v", err, want)
		}
	}
	if _, err := AssignSubsystems(policytest.TwoSocketSMT2(), hw.CPUSet{}, []Request{{}}); !errors.Is(err, ErrNotEnoughCPUs) {
		t.Errorf("empty partition: err = %v", err)
	}
}
