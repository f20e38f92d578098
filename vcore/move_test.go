package vcore

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
)

// TestMovesFromClaim: the claim's moved_out hides a subsystem of the file
// (not started, listed as moved away) and subForMove refuses it; the
// status of a moved-in subsystem names its home.
func TestMovesFromClaim(t *testing.T) {
	v := externalVCore(t, t.TempDir(), "0-3,8-11")
	v.grant.MovedOut = []string{"db"}
	v.initMoves(context.Background())
	if !v.movedAway("db") || v.movedAway("other") {
		t.Fatal("movedAway")
	}
	list := v.Subsystems()
	if len(list) != 1 || list[0].State != "moved" || list[0].MovedTo == nil || *list[0].MovedTo != -1 {
		t.Fatalf("status of a moved-away subsystem: %+v", list)
	}
	if _, _, err := v.subForMove("db"); !errors.Is(err, errNotFound) {
		t.Errorf("subForMove of a moved-away subsystem: %v", err)
	}
	if len(v.runningSubs()) != 0 {
		t.Errorf("runningSubs includes a moved-away subsystem")
	}
	// A subsystem run here for node 1.
	in := &subsystem{cfg: config.Subsystem{Name: "web"}, cgroup: "vcored/node0/web", cpus: hw.MustParse[hw.CPU]("1")}
	in.quota = v.subs[0].quota
	v.mv.in["web"] = &movedIn{sub: in, from: 1, mode: api.MoveLive}
	if v.subByName("web") != in || v.movedInOf("/vcored/node0/web") != in || v.movedInOf("/vcored/node0/db") != nil {
		t.Error("lookup of a moved-in subsystem")
	}
	list = v.Subsystems()
	if len(list) != 2 || list[1].Name != "web" || list[1].MovedFrom == nil || *list[1].MovedFrom != 1 || list[1].MoveMode != api.MoveLive {
		t.Fatalf("status with a moved-in subsystem: %+v", list)
	}
}

// TestMoveInRefused: a move-in whose configuration does not match its
// name, with a bad mode, without a command, of a name the vcore runs
// itself, or of a persistent dataspace without an image, is refused and
// leaves nothing.
func TestMoveInRefused(t *testing.T) {
	v := externalVCore(t, t.TempDir(), "0-3,8-11")
	v.initMoves(context.Background())
	spec := func(s config.Subsystem) json.RawMessage {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ok := config.Subsystem{Name: "web", Command: []string{"sleep", "1"}}
	persistent := ok
	persistent.Local = []config.Dataspace{{Name: "m", Size: 4096, Content: config.ContentZero, Persistent: true}}
	for _, req := range []api.MoveInRequest{
		{Name: "web", Mode: api.MoveRestart, Spec: spec(config.Subsystem{Name: "other", Command: []string{"x"}})},
		{Name: "web", Mode: "teleport", Spec: spec(ok)},
		{Name: "web", Mode: api.MoveRestart, Spec: spec(config.Subsystem{Name: "web"})},
		{Name: "db", Mode: api.MoveRestart, Spec: spec(config.Subsystem{Name: "db", Command: []string{"x"}})},
		{Name: "web", Mode: api.MoveRestart, Spec: spec(persistent)},
		{Name: "web", Mode: api.MoveRestart, Spec: spec(persistent), Images: map[string]string{"m": "relative/dir"}},
		{Name: "web", Mode: api.MoveRestart, Spec: json.RawMessage(`[1]`)},
	} {
		_, err := v.moveIn(context.Background(), req)
		if !errors.Is(err, errBadRequest) && !errors.Is(err, errConflict) {
			t.Errorf("moveIn %s %s %s: err = %v, want a refusal", req.Name, req.Mode, req.Spec, err)
		}
	}
	if len(v.mv.in) != 0 {
		t.Errorf("refused move-ins left %v", v.mv.in)
	}
}

// TestMoveSpecRoundTrip: a subsystem's configuration survives the JSON a
// move carries it in (core's ledger, ClaimOK.moved_in).
func TestMoveSpecRoundTrip(t *testing.T) {
	s := config.Subsystem{Name: "p", Command: []string{"/bin/x", "-a"}, CPUs: config.CPURequest{Count: 2}, Memory: 160 * hw.MiB,
		Restart: "on-failure", MaxRestarts: 3, Env: map[string]string{"A": "b"}, Dataspaces: []string{"shared"}, Movable: true,
		Local: []config.Dataspace{{Name: "mem", Size: 8 * hw.MiB, Content: config.ContentPattern, Seed: 7, Persistent: true}}}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back config.Subsystem
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(back)
	if string(b) != string(b2) {
		t.Fatalf("round trip:\n%s\n%s", b, b2)
	}
}

func TestNumaPagesSelf(t *testing.T) {
	got := numaPages(os.Getpid())
	var sum uint64
	for _, k := range got {
		sum += k
	}
	if sum == 0 {
		t.Fatalf("numa_maps of this process counts no page: %v", got)
	}
}
