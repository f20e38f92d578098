package core

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
)

func testMove(name string) MoveRecord {
	return MoveRecord{Subsystem: name, HomeNode: 0, HomeHolder: "/run/vcored/vcore0.sock", Node: 1, Holder: "/run/vcored/vcore1.sock",
		Cgroup: "vcored/node1/" + name, Mode: api.MoveRestart, Spec: json.RawMessage(`{"Name":"` + name + `","Command":["/bin/true"]}`),
		Images: map[string]string{"mem": "/var/lib/vcored/node0/images/" + name + "/mem"}, At: time.Unix(2000, 0).UTC()}
}

// TestLedgerMovesRoundTrip: a recorded move is in the file a restarted
// core reads (validated against the plan), is told to both vcores when they
// claim (moved out to its home, moved in to its destination), and is gone
// after ForgetMove.
func TestLedgerMovesRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	l, _, err := OpenLedger(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := testMove("toucher")
	if err := l.RecordMove(m); err != nil {
		t.Fatal(err)
	}
	l2, dropped, err := OpenLedger(path, nil, &LedgerLimits{Plan: ledgerPlan, CgroupParent: "vcored"})
	if err != nil || len(dropped) != 0 {
		t.Fatalf("reopen: dropped %v err %v", dropped, err)
	}
	got := l2.Moves()
	if len(got) == 1 {
		got[0].Spec = compact(t, got[0].Spec)
	}
	if len(got) != 1 || !reflect.DeepEqual(got[0], m) {
		t.Fatalf("reloaded moves %+v, want %+v", got, m)
	}
	out, in := l2.movesFor(m.HomeHolder)
	if len(out) != 1 || out[0] != "toucher" || len(in) != 0 {
		t.Errorf("home vcore told out=%v in=%v", out, in)
	}
	out, in = l2.movesFor(m.Holder)
	if len(out) != 0 || len(in) != 1 || in[0].Name != "toucher" || in[0].FromNode != 0 || string(compact(t, in[0].Spec)) != string(m.Spec) ||
		in[0].Images["mem"] != m.Images["mem"] {
		t.Errorf("destination vcore told out=%v in=%+v", out, in)
	}
	// Moving it again replaces the record (one per subsystem).
	m2 := m
	m2.Mode = api.MoveLive
	if err := l2.RecordMove(m2); err != nil {
		t.Fatal(err)
	}
	if got := l2.Moves(); len(got) != 1 || got[0].Mode != api.MoveLive {
		t.Fatalf("after a second move: %+v", got)
	}
	if err := l2.ForgetMove(m.HomeHolder, m.Subsystem); err != nil {
		t.Fatal(err)
	}
	l3, _, err := OpenLedger(path, nil, nil)
	if err != nil || len(l3.Moves()) != 0 {
		t.Fatalf("after ForgetMove: %+v %v", l3.Moves(), err)
	}
}

// TestLedgerMovesValidated: a bad record is refused by RecordMove (nothing
// changes) and dropped from a file on load, with a reason.
func TestLedgerMovesValidated(t *testing.T) {
	bad := map[string]func(*MoveRecord){
		"subsystem name":         func(m *MoveRecord) { m.Subsystem = "../x" },
		"is its home":            func(m *MoveRecord) { m.Node = m.HomeNode },
		"mode":                   func(m *MoveRecord) { m.Mode = "teleport" },
		"no configuration":       func(m *MoveRecord) { m.Spec = nil },
		"not a clean absolute":   func(m *MoveRecord) { m.Images["mem"] = "images/x" },
		"no home or destination": func(m *MoveRecord) { m.Holder = "" },
		"not in the partition":   func(m *MoveRecord) { m.Node = 7 },
		"not below":              func(m *MoveRecord) { m.Cgroup = "system.slice/toucher" },
		"not named after":        func(m *MoveRecord) { m.Cgroup = "vcored/node1/other" },
	}
	dir := t.TempDir()
	var recs []*MoveRecord
	i := 0
	for want, mutate := range bad {
		m := testMove("s" + string(rune('a'+i)))
		i++
		m.Images = map[string]string{"mem": "/img/" + m.Subsystem}
		mutate(&m)
		recs = append(recs, &m)
		// RecordMove checks what it can without the plan.
		l, _, err := OpenLedger(filepath.Join(dir, want+".json"), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = l.RecordMove(m)
		planOnly := want == "not in the partition" || want == "not below" || want == "not named after"
		if !planOnly && (!errors.Is(err, ErrMoveInvalid) || !strings.Contains(err.Error(), want)) {
			t.Errorf("RecordMove with %s: err = %v", want, err)
		}
		if !planOnly && len(l.Moves()) != 0 {
			t.Errorf("RecordMove with %s changed the ledger: %+v", want, l.Moves())
		}
	}
	good := testMove("good")
	recs = append(recs, &good, nil)
	dup := testMove("good")
	recs = append(recs, &dup)
	path := filepath.Join(dir, "ledger.json")
	b, err := json.Marshal(ledgerFile{Version: 1, Moves: recs})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	l, dropped, err := OpenLedger(path, nil, &LedgerLimits{Plan: ledgerPlan, CgroupParent: "vcored"})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Moves(); len(got) != 1 || got[0].Subsystem != "good" {
		t.Fatalf("kept %+v, want only good", got)
	}
	for want := range bad {
		found := false
		for _, d := range dropped {
			found = found || strings.Contains(d.Error(), want)
		}
		if !found {
			t.Errorf("no dropped move says %q: %v", want, dropped)
		}
	}
	if len(dropped) != len(bad)+2 { // + null + the duplicate
		t.Errorf("dropped %d, want %d: %v", len(dropped), len(bad)+2, dropped)
	}
}

// TestLedgerMoveWriteFailure: a move whose ledger write fails is not
// recorded in memory either (ErrLedgerWrite), and a failed ForgetMove
// keeps the record.
func TestLedgerMoveWriteFailure(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	l, _, err := OpenLedger(filepath.Join(dir, "ledger.json"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := testMove("a")
	if err := l.RecordMove(a); err != nil {
		t.Fatal(err)
	}
	fix := breakDir(t, dir)
	b := testMove("b")
	if err := l.RecordMove(b); !errors.Is(err, ErrLedgerWrite) {
		t.Fatalf("RecordMove on a broken directory: %v", err)
	}
	if err := l.ForgetMove(a.HomeHolder, a.Subsystem); !errors.Is(err, ErrLedgerWrite) {
		t.Fatalf("ForgetMove on a broken directory: %v", err)
	}
	if got := l.Moves(); len(got) != 1 || got[0].Subsystem != "a" {
		t.Fatalf("after failed writes: %+v, want only a", got)
	}
	fix()
	if ok, err := l.Retry(); !ok || err != nil {
		t.Fatalf("Retry: %v %v", ok, err)
	}
	l2, _, err := OpenLedger(filepath.Join(dir, "ledger.json"), nil, nil)
	if err != nil || len(l2.Moves()) != 1 {
		t.Fatalf("reloaded %+v %v", l2.Moves(), err)
	}
}

func TestSubsystemName(t *testing.T) {
	for s, want := range map[string]bool{"toucher": true, "a.b-c_d": true, "": false, "..": false, "a/b": false, "-x": false,
		strings.Repeat("x", 64): false, "x y": false} {
		if got := subsystemName(s); got != want {
			t.Errorf("subsystemName(%q) = %v, want %v", s, got, want)
		}
	}
}

func compact(t *testing.T, b json.RawMessage) json.RawMessage {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
