package config

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy"
)

func TestParseCoreDefaults(t *testing.T) {
	c, err := ParseCore("core.toml", []byte("# nothing set\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultCore()
	want.File = "core.toml"
	c.lines, want.lines = nil, nil
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v\nwant %+v", c, want)
	}
	if c.ReservedCPUs.String() != "0" || c.ReservedMemory != 512*hw.MiB || c.Pager != PagerLocal ||
		c.Socket != "/run/vcored/core.sock" || c.CgroupParent != "vcored" || c.OrphanGrace != 30*time.Second {
		t.Errorf("defaults changed: %+v", c)
	}
}

const fullCore = `socket = "/tmp/vc/core.sock"
socket_group = "vcored"
state_dir = "/tmp/vc/state"
cgroup_parent = "test/vcored-1"
reserved_cpus = "0,2"
reserved_memory = "1GiB"
pager = "central"
fault_around = 16
orphan_grace = "1m"
rejoin_grace = "5s"
log_level = "debug"
rebalance = "auto"
rebalance_interval = "30s"
rebalance_threshold = 0.5
rebalance_samples = 5
rebalance_min_interval = "2m"
rebalance_move_timeout = "90s"

[[dataspace]]
name = "dataset"
size = "64MiB"

[[dataspace]]
name = "blob"
size = "8KiB"
source = "/var/lib/vcored/blob.bin"

[[dataspace]]
name = "pat"
size = "4KiB"
content = "pattern"
seed = 7
`

func TestParseCoreFull(t *testing.T) {
	c, err := ParseCore("core.toml", []byte(fullCore))
	if err != nil {
		t.Fatal(err)
	}
	want := &Core{
		File: "core.toml", Socket: "/tmp/vc/core.sock", SocketGroup: "vcored", StateDir: "/tmp/vc/state",
		CgroupParent: "test/vcored-1", ReservedCPUs: hw.MustParse[hw.CPU]("0,2"), ReservedMemory: hw.GiB,
		Pager: PagerCentral, FaultAround: 16, OrphanGrace: time.Minute, RejoinGrace: 5 * time.Second, LogLevel: LogDebug,
		Rebalance: RebalanceAuto, RebalanceInterval: 30 * time.Second, RebalanceMoveTimeout: 90 * time.Second,
		RebalancePolicy: policy.RebalanceConfig{Threshold: 0.5, Samples: 5, MinInterval: 2 * time.Minute, FlapWindow: 20 * time.Minute, MinGain: 0.1},
		Dataspaces: []Dataspace{
			{Name: "dataset", Size: 64 * hw.MiB, Content: ContentZero},
			{Name: "blob", Size: 8 * hw.KiB, Content: ContentFile, Source: "/var/lib/vcored/blob.bin"},
			{Name: "pat", Size: 4 * hw.KiB, Content: ContentPattern, Seed: 7},
		},
	}
	c.lines = nil
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	if ds, ok := c.Dataspace("blob"); !ok || ds.Size != 8*hw.KiB {
		t.Errorf("Dataspace(blob) = %+v, %t", ds, ok)
	}
}

const fullVCore = `node = 1
core_socket = "/tmp/vc/core.sock"
socket = "/tmp/vc/vcore1.sock"
state_dir = "/tmp/vc/vcore1"
cpus = "4-7"
memory = "2GiB"
pager_threads = 2
fault_around = 16
stop_grace = "3s"
log_level = "warn"

[[subsystem]]
name = "toucher"
command = [
  "/usr/local/bin/worker",   # the program
  "--pages", "4096",
]
cpus = 2
memory = "256MiB"
restart = "always"
max_restarts = 0
backoff_initial = "1s"
backoff_max = "1m"
dataspaces = ["dataset"]
env = { GOMAXPROCS = "2" }

[[subsystem.dataspace]]
name = "scratch"
size = "16MiB"
content = "pattern"
seed = 3

[[subsystem]]
name = "idle"
command = ["sleep", "infinity"]
cpus = "6-7"
memory = "64MiB"

[subsystem.env]
A = "b c"
`

func TestParseVCoreFull(t *testing.T) {
	v, err := ParseVCore("node1.toml", []byte(fullVCore))
	if err != nil {
		t.Fatal(err)
	}
	want := &VCore{
		File: "node1.toml", Node: 1, CoreSocket: "/tmp/vc/core.sock", Socket: "/tmp/vc/vcore1.sock", StateDir: "/tmp/vc/vcore1",
		CPUs: hw.MustParse[hw.CPU]("4-7"), Memory: 2 * hw.GiB, PagerThreads: 2, FaultAround: 16, ReplicaBudget: DefaultReplicaBudget, PagerPlacement: PlacementAuto, StopGrace: 3 * time.Second, LogLevel: LogWarn,
		Subsystems: []Subsystem{{
			Name: "toucher", Command: []string{"/usr/local/bin/worker", "--pages", "4096"}, CPUs: CPURequest{Count: 2},
			Memory: 256 * hw.MiB, Restart: RestartAlways, MaxRestarts: 0, BackoffInitial: time.Second, BackoffMax: time.Minute,
			Env: map[string]string{"GOMAXPROCS": "2"}, Dataspaces: []string{"dataset"},
			Local:          []Dataspace{{Name: "scratch", Size: 16 * hw.MiB, Content: ContentPattern, Seed: 3, Prefetch: PrefetchOff}},
			MaxConnections: DefaultMaxConnections, MaxRegions: DefaultMaxRegions, PidsMax: DefaultPidsMax,
		}, {
			Name: "idle", Command: []string{"sleep", "infinity"}, CPUs: CPURequest{List: hw.MustParse[hw.CPU]("6-7")},
			Memory: 64 * hw.MiB, Restart: RestartOnFailure, MaxRestarts: DefaultMaxRestarts,
			BackoffInitial: DefaultBackoffInitial, BackoffMax: DefaultBackoffMax, Env: map[string]string{"A": "b c"},
			MaxConnections: DefaultMaxConnections, MaxRegions: DefaultMaxRegions, PidsMax: DefaultPidsMax,
		}},
	}
	v.lines = nil
	if !reflect.DeepEqual(v, want) {
		t.Errorf("got  %+v\nwant %+v", v, want)
	}
}

func TestParseVCoreDefaults(t *testing.T) {
	v, err := ParseVCore("node3.toml", []byte("node = 3\nmemory = \"1GiB\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if v.Socket != "/run/vcored/vcore3.sock" || v.StateDir != "/var/lib/vcored/vcore3" || v.CoreSocket != DefaultCoreSocket ||
		!v.CPUs.IsEmpty() || v.PagerThreads != 0 || v.FaultAround != 1 || v.StopGrace != 10*time.Second || v.LogLevel != LogInfo {
		t.Errorf("defaults: %+v", v)
	}
}

// problem is one expected *Error: where and what.
type problem struct {
	line  int
	key   string
	class error
	msg   string // a substring of Msg
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name  string
		vcore bool
		data  string
		want  []problem
	}{
		{"unknown key", false, "socket = \"/run/x.sock\"\nsoket = \"/run/y.sock\"\n",
			[]problem{{2, "soket", ErrUnknownKey, "unknown key"}}},
		{"unknown key in a table", false, "[[dataspace]]\nname = \"a\"\nsize = \"4KiB\"\nsorce = \"/x\"\n",
			[]problem{{4, "dataspace[0].sorce", ErrUnknownKey, "unknown key"}}},
		{"unknown table", false, "[extra]\nx = 1\n",
			[]problem{{1, "extra", ErrUnknownKey, "unknown key"}}},
		{"wrong type", false, "fault_around = \"4\"\n",
			[]problem{{1, "fault_around", ErrType, `expected an integer, got string "4"`}}},
		{"cpu list is not a number", false, "reserved_cpus = 0\n",
			[]problem{{1, "reserved_cpus", ErrType, "expected a string, got integer 0"}}},
		{"bad list", false, "\nreserved_cpus = \"3-1\"\n",
			[]problem{{2, "reserved_cpus", ErrValue, `token "3-1"`}}},
		{"bad list token", false, "reserved_cpus = \"1,,2\"\n",
			[]problem{{1, "reserved_cpus", ErrValue, "empty id"}}},
		{"empty reserved list", false, "reserved_cpus = \"\"\n",
			[]problem{{1, "reserved_cpus", ErrValue, "empty CPU list"}}},
		{"bad size", false, "reserved_memory = \"4GB?\"\n",
			[]problem{{1, "reserved_memory", ErrValue, `bad size "4GB?"`}}},
		{"decimal unit refused", false, "reserved_memory = \"4GB\"\n",
			[]problem{{1, "reserved_memory", ErrValue, "unknown unit"}}},
		{"bad duration", false, "orphan_grace = \"30 seconds\"\n",
			[]problem{{1, "orphan_grace", ErrValue, `bad duration "30 seconds"`}}},
		{"negative duration", false, "rejoin_grace = \"-1s\"\n",
			[]problem{{1, "rejoin_grace", ErrValue, "negative"}}},
		{"duration as a number", false, "orphan_grace = 30\n",
			[]problem{{1, "orphan_grace", ErrType, "expected a string"}}},
		{"bad enum", false, "pager = \"global\"\n",
			[]problem{{1, "pager", ErrValue, `"global" is not one of "local", "central"`}}},
		{"out of range", false, "fault_around = 0\n",
			[]problem{{1, "fault_around", ErrValue, "out of range [1, 512]"}}},
		{"relative socket", false, "socket = \"core.sock\"\n",
			[]problem{{1, "socket", ErrValue, "must be absolute"}}},
		{"bad cgroup parent", false, "cgroup_parent = \"../x\"\n",
			[]problem{{1, "cgroup_parent", ErrValue, "not a plain name"}}},
		{"syntax error", false, "socket = \"/x\"\npager = local\n",
			[]problem{{2, "", ErrSyntax, ""}}},
		{"dataspace problems", false, "[[dataspace]]\nname = \"a b\"\nsize = \"6KiB\"\n[[dataspace]]\nsize = \"0\"\ncontent = \"file\"\nseed = 1\n",
			[]problem{
				{2, "dataspace[0].name", ErrValue, `bad name "a b"`},
				{3, "dataspace[0].size", ErrValue, "not a multiple of 4KiB"},
				{4, "dataspace[1].name", ErrMissing, "required"},
				{5, "dataspace[1].size", ErrValue, "at least 4KiB"},
				{6, "dataspace[1].content", ErrMissing, "needs a source"},
				{7, "dataspace[1].seed", ErrConflict, "only used with content = \"pattern\""},
			}},
		{"duplicate dataspace", false, "[[dataspace]]\nname = \"a\"\nsize = \"4KiB\"\n[[dataspace]]\nname = \"a\"\nsize = \"4KiB\"\n",
			[]problem{{5, "dataspace[1].name", ErrConflict, `"a" is already used by dataspace[0]`}}},

		{"vcore: missing keys", true, "cpus = \"1\"\n",
			[]problem{{0, "memory", ErrMissing, "required"}, {0, "node", ErrMissing, "required"}}},
		{"vcore: the issue's example", true, "node = 0\nmemory = \"1GiB\"\n\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\nmemory = \"4GB?\"\n",
			[]problem{{7, "subsystem[0].memory", ErrValue, `bad size "4GB?"`}}},
		{"vcore: unknown key in the second subsystem", true,
			"node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\n  \"x\",\n  \"y = 1\",\n]\nmemory = \"1MiB\"\n[[subsystem]]\nname = \"b\"\ncommand = [\"x\"]\nmemroy = \"1MiB\"\nmemory = \"1MiB\"\n",
			[]problem{{13, "subsystem[1].memroy", ErrUnknownKey, "unknown key"}}},
		{"vcore: subsystem problems", true,
			"node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"a\"\ncommand = []\ncpus = 0\nmemory = \"1MiB\"\nrestart = \"sometimes\"\nbackoff_initial = \"2s\"\nbackoff_max = \"1s\"\nenv = { VCORE_NODE = \"1\", X = 2 }\ndataspaces = [\"d\", \"d\", 3]\n",
			[]problem{
				{5, "subsystem[0].command", ErrValue, "empty command"},
				{6, "subsystem[0].cpus", ErrValue, "at least 1"},
				{8, "subsystem[0].restart", ErrValue, `"sometimes" is not one of "never", "on-failure", "always"`},
				{10, "subsystem[0].backoff_max", ErrConflict, "below backoff_initial"},
				{11, "subsystem[0].env.VCORE_NODE", ErrValue, "set by vcore"},
				{11, "subsystem[0].env.X", ErrType, "expected a string, got integer 2"},
				{12, "subsystem[0].dataspaces[2]", ErrType, "expected a string, got integer 3"},
			}},
		{"vcore: cpus of the wrong type", true, "node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\ncpus = 1.5\nmemory = \"1MiB\"\n",
			[]problem{{6, "subsystem[0].cpus", ErrType, `a CPU count (2) or a CPU list ("1-2"), got float 1.5`}}},
		{"vcore: bad cpu list in a subsystem", true, "node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\ncpus = \"1-a\"\nmemory = \"1MiB\"\n",
			[]problem{{6, "subsystem[0].cpus", ErrValue, `"a" is not a decimal id`}}},
		{"vcore: duplicate names and over quota", true,
			"node = 0\nmemory = \"1MiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\n",
			[]problem{
				{2, "memory", ErrConflict, "adds up to 2MiB, more than the vcore's 1MiB"},
				{8, "subsystem[1].name", ErrConflict, `"a" is already used by subsystem[0]`},
			}},
		{"vcore: local dataspaces over the subsystem's quota", true,
			"node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\ndataspaces = [\"s\"]\n[[subsystem.dataspace]]\nname = \"s\"\nsize = \"2MiB\"\n[subsystem.dataspace.extra]\n",
			[]problem{
				{6, "subsystem[0].memory", ErrConflict, "dataspaces add up to 2MiB, more than its memory 1MiB"},
				{9, "subsystem[0].dataspace[0].name", ErrConflict, "both local and listed"},
				{11, "subsystem[0].dataspace[0].extra", ErrUnknownKey, "unknown key"},
			}},
		{"vcore: dotted key and nested table are unknown", true,
			"node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\nbackoff.initial = \"1s\"\n",
			[]problem{{7, "subsystem[0].backoff", ErrUnknownKey, "unknown key"}}},
		{"vcore: wrong shapes", true, "node = \"0\"\nmemory = \"1GiB\"\nsubsystem = 3\n",
			[]problem{{1, "node", ErrType, "expected an integer"}, {3, "subsystem", ErrType, "an array of tables ([[subsystem]])"}}},
		{"vcore: memory zero and negative node", true, "node = -1\nmemory = \"0\"\n",
			[]problem{{1, "node", ErrValue, "out of range"}, {2, "memory", ErrValue, "must not be zero"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := "core.toml"
			var err error
			if tt.vcore {
				file = "node0.toml"
				var v *VCore
				v, err = ParseVCore(file, []byte(tt.data))
				if v != nil && err != nil {
					t.Errorf("got a config and an error")
				}
			} else {
				var c *Core
				c, err = ParseCore(file, []byte(tt.data))
				if c != nil && err != nil {
					t.Errorf("got a config and an error")
				}
			}
			assertProblems(t, err, file, tt.want)
		})
	}
}

// assertProblems checks that err lists exactly want, in order, each with
// the right line, key, class and a message in the "file:line: key: msg" form.
func assertProblems(t *testing.T, err error, file string, want []problem) {
	t.Helper()
	var es Errors
	if !errors.As(err, &es) {
		t.Fatalf("err = %v (%T), want config.Errors", err, err)
	}
	if len(es) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(es), len(want), err)
	}
	for i, w := range want {
		e := es[i]
		if e.File != file || e.Line != w.line || e.Key != w.key || !errors.Is(e, w.class) || !strings.Contains(e.Msg, w.msg) {
			t.Errorf("problem %d = %q (line %d, key %q, class %v)\nwant line %d, key %q, class %v, message containing %q",
				i, e, e.Line, e.Key, errors.Unwrap(e), w.line, w.key, w.class, w.msg)
		}
		prefix := file
		if w.line > 0 {
			prefix += ":" + strconv.Itoa(w.line)
		}
		if w.key != "" {
			prefix += ": " + w.key
		}
		if !strings.HasPrefix(e.Error(), prefix+": ") {
			t.Errorf("problem %d = %q, want prefix %q", i, e, prefix+": ")
		}
	}
}

func TestErrorsAreInspectable(t *testing.T) {
	_, err := ParseVCore("n.toml", []byte("node = 0\nmemory = \"4GB?\"\nbogus = 1\n"))
	var first *Error
	if !errors.As(err, &first) || first.Line != 2 || first.Key != "memory" {
		t.Fatalf("errors.As *Error: %+v from %v", first, err)
	}
	if !errors.Is(err, hw.ErrBadSize) || !errors.Is(err, ErrValue) || !errors.Is(err, ErrUnknownKey) {
		t.Errorf("errors.Is does not see every class and cause: %v", err)
	}
	if errors.Is(err, ErrSyntax) {
		t.Errorf("errors.Is(ErrSyntax) on a well-formed file")
	}
	want := "n.toml:2: memory: bad size \"4GB?\": unknown unit (use B, KiB, MiB, GiB or TiB)\nn.toml:3: bogus: unknown key"
	if err.Error() != want {
		t.Errorf("Error() =\n%s\nwant\n%s", err, want)
	}
	es, ok := AsErrors(err)
	if !ok || len(es) != 2 {
		t.Errorf("AsErrors = %v, %t", es, ok)
	}
	if _, ok := AsErrors(errors.New("other")); ok {
		t.Errorf("AsErrors accepted a foreign error")
	}
}

func TestSyntaxErrorLine(t *testing.T) {
	_, err := ParseCore("c.toml", []byte("socket = \"/x\"\n\n[[dataspace]\nname = 1\n"))
	var e *Error
	if !errors.As(err, &e) || e.Line != 3 || !errors.Is(err, ErrSyntax) || !strings.HasPrefix(e.Error(), "c.toml:3: ") {
		t.Fatalf("err = %v (line %d)", err, e.Line)
	}
}

func TestDetectKind(t *testing.T) {
	tests := []struct {
		data string
		want Kind
	}{
		{"", KindCore},
		{fullCore, KindCore},
		{fullVCore, KindVCore},
		{"memory = \"1GiB\"\n", KindVCore},
		{"[[subsystem]]\nname = \"a\"\n", KindVCore},
		{"not toml = = =", KindCore},
	}
	for _, tt := range tests {
		if got := DetectKind([]byte(tt.data)); got != tt.want {
			t.Errorf("DetectKind(%.30q) = %v, want %v", tt.data, got, tt.want)
		}
	}
}
