package config

import (
	"testing"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy/policytest"
	"github.com/vcored/vcored/topology"
)

func mustCore(t *testing.T, data string) *Core {
	t.Helper()
	c, err := ParseCore("core.toml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustVCore(t *testing.T, data string) *VCore {
	t.Helper()
	v, err := ParseVCore("node0.toml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestCoreValidate(t *testing.T) {
	offline := policytest.TwoSocketSMT2()
	offline.CPUs[3].Online = false
	restricted := policytest.TwoSocketSMT2()
	restricted.AllowedCPUs = hw.MustParse[hw.CPU]("1-15")
	tests := []struct {
		name string
		m    *topology.Machine
		data string
		want []problem
	}{
		{"defaults on the dev machine", policytest.SingleNode2CPU(), "", nil},
		{"two sockets", policytest.TwoSocketSMT2(), "reserved_cpus = \"0,8\"\n", nil},
		{"unknown CPU", policytest.SingleNode2CPU(), "pager = \"central\"\nreserved_cpus = \"0,4\"\n",
			[]problem{{2, "reserved_cpus", ErrConflict, "CPU 4 is not an online CPU of this machine (online: 0-1)"}}},
		{"offline CPU", offline, "reserved_cpus = \"3\"\n",
			[]problem{{1, "reserved_cpus", ErrConflict, "CPU 3 is not an online CPU"}}},
		{"not allowed", restricted, "reserved_cpus = \"0\"\n",
			[]problem{{1, "reserved_cpus", ErrConflict, "outside the CPUs this process may use (1-15)"}}},
		{"nothing left", policytest.SingleNode2CPU(), "reserved_cpus = \"0-1\"\n",
			[]problem{{1, "reserved_cpus", ErrConflict, "leave none of the usable CPUs 0-1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := mustCore(t, tt.data).Validate(tt.m)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			assertProblems(t, err, "core.toml", tt.want)
		})
	}
}

const twoSocketCore = `reserved_cpus = "0"
reserved_memory = "1GiB"
[[dataspace]]
name = "dataset"
size = "64MiB"
`

func TestVCoreValidate(t *testing.T) {
	cpuless := policytest.WithCPULessNode(policytest.TwoSocketSMT2(), 64*hw.GiB)
	notAllowed := policytest.TwoSocketSMT2()
	notAllowed.AllowedNodes = hw.NewSet[hw.Node](0)
	restricted := policytest.TwoSocketSMT2()
	restricted.AllowedCPUs = hw.MustParse[hw.CPU]("0-8")
	sub := func(name, cpus string) string {
		return "[[subsystem]]\nname = \"" + name + "\"\ncommand = [\"sleep\", \"infinity\"]\n" + cpus + "\nmemory = \"256MiB\"\n"
	}
	tests := []struct {
		name     string
		m        *topology.Machine
		withCore bool
		data     string
		want     []problem
	}{
		{"dev machine defaults", policytest.SingleNode2CPU(), false, "node = 0\ncpus = \"1\"\nmemory = \"1GiB\"\n" + sub("a", "cpus = 1"), nil},
		{"two sockets node 1 whole partition", policytest.TwoSocketSMT2(), true,
			"node = 1\nmemory = \"15GiB\"\n" + sub("a", "cpus = 8") + sub("b", "cpus = \"4-5\"") + sub("c", "") + "dataspaces = [\"dataset\"]\n", nil},
		{"node missing", policytest.TwoSocketSMT2(), true, "node = 2\nmemory = \"1GiB\"\n",
			[]problem{{1, "node", ErrConflict, "node 2 does not exist (online nodes: 0-1)"}}},
		{"cpu-less node", cpuless, true, "node = 2\nmemory = \"1GiB\"\n",
			[]problem{{1, "node", ErrConflict, "node 2 has no CPUs"}}},
		{"node not allowed", notAllowed, true, "node = 1\nmemory = \"1GiB\"\n",
			[]problem{{1, "node", ErrConflict, "outside the nodes this process may use (0)"}}},
		{"everything wrong at once", restricted, true,
			"node = 0\ncore_socket = \"/run/other.sock\"\nsocket = \"/run/vcored/core.sock\"\ncpus = \"0-1,4,9\"\nmemory = \"1GiB\"\n",
			[]problem{
				{2, "core_socket", ErrConflict, `"/run/other.sock" is not the socket of core (core.toml has socket = "/run/vcored/core.sock")`},
				{3, "socket", ErrConflict, "core's own socket"},
				{4, "cpus", ErrConflict, "CPU 0 is reserved by core (reserved_cpus = \"0\" in core.toml)"},
				{4, "cpus", ErrConflict, "CPU 4 is not an online CPU of node 0 (its CPUs: 0-3,8-11)"},
				{4, "cpus", ErrConflict, "CPU 9 is outside the CPUs this process may use (0-8)"},
			}},
		{"memory and subsystem CPUs", policytest.TwoSocketSMT2(), true,
			"node = 0\ncpus = \"1-2\"\nmemory = \"16GiB\"\n" + sub("a", "cpus = 3") + sub("b", "cpus = \"2-3\"") + "dataspaces = [\"dataset\", \"other\"]\n",
			[]problem{
				{3, "memory", ErrConflict, "16GiB is more than node 0 offers: 15GiB (MemTotal 16GiB minus reserved_memory 1GiB)"},
				{7, "subsystem[0].cpus", ErrConflict, `3 CPUs wanted, the partition "1-2" has 2`},
				{12, "subsystem[1].cpus", ErrConflict, `CPUs 3 are not in the partition "1-2"`},
				{14, "subsystem[1].dataspaces[1]", ErrConflict, `dataspace "other" is not declared in core.toml`},
			}},
		{"without core nothing is assumed reserved", policytest.SingleNode2CPU(), false, "node = 0\ncpus = \"0-1\"\nmemory = \"6GiB\"\n" + sub("a", "cpus = 2"), nil},
		{"without core the whole node is the limit", policytest.SingleNode2CPU(), false, "node = 0\ncpus = \"0-2\"\nmemory = \"7GiB\"\n",
			[]problem{
				{2, "cpus", ErrConflict, `CPU 2 is not an online CPU of node 0 (its CPUs: 0-1)`},
				{3, "memory", ErrConflict, "7GiB is more than node 0 offers: 6GiB (MemTotal 6GiB minus reserved_memory 0B)"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var core *Core
			if tt.withCore {
				core = mustCore(t, twoSocketCore)
			}
			err := mustVCore(t, tt.data).Validate(tt.m, core)
			if tt.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			assertProblems(t, err, "node0.toml", tt.want)
		})
	}
}

func TestVCoreValidateNoCPUsLeft(t *testing.T) {
	core := mustCore(t, "reserved_cpus = \"0-3,8-11\"\n")
	v := mustVCore(t, "node = 0\nmemory = \"1GiB\"\n")
	assertProblems(t, v.Validate(policytest.TwoSocketSMT2(), core), "node0.toml", []problem{
		{1, "node", ErrConflict, `node 0 has no CPUs left after core's reserved_cpus "0-3,8-11" (core.toml)`},
	})
}

func TestValidateVCores(t *testing.T) {
	m := policytest.TwoSocketSMT2()
	core := mustCore(t, twoSocketCore)
	parse := func(name, data string) *VCore {
		v, err := ParseVCore(name, []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	good := []*VCore{
		parse("a.toml", "node = 0\ncpus = \"1-3\"\nmemory = \"7GiB\"\nsocket = \"/run/a.sock\"\nstate_dir = \"/var/a\"\n"),
		parse("b.toml", "node = 0\ncpus = \"8-11\"\nmemory = \"8GiB\"\nsocket = \"/run/b.sock\"\nstate_dir = \"/var/b\"\n"),
		parse("c.toml", "node = 1\nmemory = \"15GiB\"\n"),
	}
	if err := ValidateVCores(m, core, good); err != nil {
		t.Fatal(err)
	}
	bad := []*VCore{
		parse("a.toml", "node = 0\ncpus = \"1-3\"\nmemory = \"8GiB\"\n"),
		parse("b.toml", "node = 0\nmemory = \"8GiB\"\n"),
	}
	assertProblems(t, ValidateVCores(m, core, bad), "b.toml", []problem{
		{0, "cpus", ErrConflict, "CPUs 1-3 of node 0 are also leased by a.toml"},
		{0, "socket", ErrConflict, `"/run/vcored/vcore0.sock" is also the socket of a.toml`},
		{0, "state_dir", ErrConflict, `"/var/lib/vcored/vcore0" is also the state_dir of a.toml`},
		{2, "memory", ErrConflict, "the vcores of node 0 lease 16GiB together, more than the node offers (15GiB)"},
	})
}
