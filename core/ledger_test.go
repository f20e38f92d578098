package core

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/policy"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestLedgerLifecycle(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	path := filepath.Join(t.TempDir(), "ledger.json")
	l, _, err := OpenLedger(path, clk.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := Claim{Node: 0, CPUs: hw.MustParse[hw.CPU]("1-3"), Memory: hw.GiB, Holder: "/run/a.sock", Pid: 10, Socket: "/run/a.sock"}
	if _, re, err := l.Grant(a); err != nil || re {
		t.Fatalf("Grant a: reclaimed=%v err=%v", re, err)
	}
	// An overlapping claim by someone else is refused, naming the holder.
	b := Claim{Node: 0, CPUs: hw.MustParse[hw.CPU]("3-4"), Holder: "/run/b.sock", Pid: 11}
	_, _, err = l.Grant(b)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "/run/a.sock") || !strings.Contains(err.Error(), "pid 10") {
		t.Fatalf("overlap: err = %v", err)
	}
	// A disjoint claim on the same node is fine.
	b.CPUs = hw.MustParse[hw.CPU]("4-5")
	if _, _, err := l.Grant(b); err != nil {
		t.Fatal(err)
	}
	// The same holder claiming again while live is refused.
	if _, _, err := l.Grant(a); !errors.Is(err, ErrConflict) {
		t.Fatalf("double live claim: %v", err)
	}
	// Orphan, then the grace clock runs; a re-claim before expiry revives it.
	if _, ok, err := l.Orphan(a.Holder); !ok || err != nil {
		t.Fatal("Orphan failed")
	}
	clk.t = clk.t.Add(5 * time.Second)
	if exp := l.Expired(10 * time.Second); len(exp) != 0 {
		t.Fatalf("expired too early: %v", exp)
	}
	a.Pid = 20
	le, re, err := l.Grant(a)
	if err != nil || !re || le.HolderPid != 20 || le.State != StateLive {
		t.Fatalf("re-claim: %+v reclaimed=%v err=%v", le, re, err)
	}
	// A re-claim with other CPUs is refused.
	l.Orphan(a.Holder)
	bad := a
	bad.CPUs = hw.MustParse[hw.CPU]("1")
	if _, _, err := l.Grant(bad); !errors.Is(err, ErrConflict) {
		t.Fatalf("re-claim with other cpus: %v", err)
	}
	clk.t = clk.t.Add(11 * time.Second)
	if exp := l.Expired(10 * time.Second); len(exp) != 1 || exp[0].Holder != a.Holder {
		t.Fatalf("Expired = %+v", exp)
	}

	// A restarted core sees both leases, unconfirmed.
	l2, _, err := OpenLedger(path, clk.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := l2.Leases()
	if len(got) != 2 || got[0].State != StateUnconfirmed || got[1].State != StateUnconfirmed {
		t.Fatalf("reloaded = %+v", got)
	}
	if !got[0].CPUs.Equal(hw.MustParse[hw.CPU]("1-3")) || got[0].Memory != hw.GiB {
		t.Fatalf("reloaded lease lost data: %+v", got[0])
	}
	if _, err := l2.Release(b.Holder); err != nil {
		t.Fatal(err)
	}
	if _, err := l2.Release(b.Holder); err == nil {
		t.Fatal("double release succeeded")
	}
	l3, _, _ := OpenLedger(path, clk.now, nil)
	if n := len(l3.Leases()); n != 1 {
		t.Fatalf("release not persisted: %d leases", n)
	}
}

// ledgerPlan is a two-node plan: node 0 cpus 1-3, node 1 cpus 4-7.
var ledgerPlan = policy.Plan{Partitions: []policy.Partition{
	{Node: 0, CPUs: hw.MustParse[hw.CPU]("1-3"), Memory: 4 * hw.GiB},
	{Node: 1, CPUs: hw.MustParse[hw.CPU]("4-7"), Memory: 4 * hw.GiB},
}}

func writeLedger(t *testing.T, path, leases string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(`{"version": 1, "leases": [`+leases+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestLedgerValidatedOnLoad: leases naming a node or CPUs outside the plan,
// a cgroup outside cgroup_parent, or overlapping an earlier lease are
// dropped with a reason; the good one is kept; the file is rewritten and the
// original kept aside.
func TestLedgerValidatedOnLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	writeLedger(t, path, `
{"node": 0, "cpus": "1-2", "holder": "/run/good.sock", "cgroup": "vcored/node0-cpu1", "state": "live"},
{"node": 7, "cpus": "1", "holder": "/run/node7.sock", "cgroup": "vcored/node7"},
{"node": 1, "cpus": "99", "holder": "/run/cpu99.sock", "cgroup": "vcored/node1"},
{"node": 1, "cpus": "4", "holder": "/run/escape.sock", "cgroup": "system.slice/sshd.service"},
{"node": 1, "cpus": "5", "holder": "/run/dotdot.sock", "cgroup": "vcored/../system.slice"},
{"node": 1, "cpus": "6", "holder": "/run/parent.sock", "cgroup": "vcored"},
{"node": 0, "cpus": "2-3", "holder": "/run/overlap.sock", "cgroup": "vcored/node0-cpu2"},
{"node": 1, "cpus": "", "holder": "/run/nocpus.sock", "cgroup": "vcored/node1"},
{"node": 1, "cpus": "7", "holder": "", "cgroup": "vcored/node1"},
null`)
	l, dropped, err := OpenLedger(path, nil, &LedgerLimits{Plan: ledgerPlan, CgroupParent: "vcored"})
	if err != nil {
		t.Fatal(err)
	}
	got := l.Leases()
	if len(got) != 1 || got[0].Holder != "/run/good.sock" || got[0].State != StateUnconfirmed {
		t.Fatalf("kept %+v, want only /run/good.sock, unconfirmed", got)
	}
	for _, want := range []string{"node 7 is not in the partition plan", "cpus 99 are not all in node 1", "not below \"vcored\"",
		"not a clean path", "\"vcored\" is not below", "overlaps the lease of /run/good.sock", "no cpus on node 1", "no holder", "null"} {
		found := false
		for _, d := range dropped {
			found = found || strings.Contains(d.Error(), want)
		}
		if !found {
			t.Errorf("no dropped entry says %q: %v", want, dropped)
		}
	}
	if len(dropped) != 9 {
		t.Errorf("dropped %d entries, want 9: %v", len(dropped), dropped)
	}
	// Rewritten without them; the original is kept for the operator.
	l2, dropped2, err := OpenLedger(path, nil, &LedgerLimits{Plan: ledgerPlan, CgroupParent: "vcored"})
	if err != nil || len(dropped2) != 0 || len(l2.Leases()) != 1 {
		t.Fatalf("reloaded: %+v dropped %v err %v", l2.Leases(), dropped2, err)
	}
	if b, err := os.ReadFile(path + ".rejected"); err != nil || !strings.Contains(string(b), "sshd.service") {
		t.Errorf("original not kept aside: %v %s", err, b)
	}
}

// TestLedgerCorruptRefused: a truncated ledger is a clear error naming the
// file, not an empty ledger.
func TestLedgerCorruptRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.json")
	for _, body := range []string{`{"version": 1, "leases": [{"node": 0, "cp`, ``, `{"leases": 5}`} {
		os.WriteFile(path, []byte(body), 0o600)
		_, _, err := OpenLedger(path, nil, &LedgerLimits{Plan: ledgerPlan, CgroupParent: "vcored"})
		if !errors.Is(err, ErrLedgerCorrupt) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "move the file aside") {
			t.Errorf("%q: err = %v, want ErrLedgerCorrupt naming %s", body, err, path)
		}
	}
}

func TestCgroupUnder(t *testing.T) {
	for _, tc := range []struct {
		parent, path string
		ok           bool
	}{
		{"vcored", "vcored/node0", true},
		{"vcored", "vcored/node0/sub", true},
		{"a/b", "a/b/node1-cpu3", true},
		{"vcored", "vcored", false},
		{"vcored", "vcored/", false},
		{"vcored", "vcored2/node0", false},
		{"vcored", "vcored/../x", false},
		{"vcored", "/vcored/node0", false},
		{"vcored", "", false},
		{"", "node0", false},
		{"vcored", "system.slice", false},
		{"vcored", "vcored//node0", false},
	} {
		err := CgroupUnder(tc.parent, tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("CgroupUnder(%q, %q) = %v, want ok=%v", tc.parent, tc.path, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrOutsideParent) {
			t.Errorf("CgroupUnder(%q, %q) = %v, not ErrOutsideParent", tc.parent, tc.path, err)
		}
	}
}

// breakDir makes writes under dir fail (the directory is replaced by a
// file: ENOTDIR) until the returned func restores it.
func breakDir(t *testing.T, dir string) (fix func()) {
	t.Helper()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {
		os.Remove(dir)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLedgerWriteFailureLeavesMemory: a Grant, re-claim, Orphan or Release
// whose write fails changes nothing in memory and reports ErrLedgerWrite;
// orphan and release are pending and written by Retry once the directory
// works; meanwhile the ledger is degraded.
func TestLedgerWriteFailureLeavesMemory(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "ledger.json")
	l, _, err := OpenLedger(path, clk.now, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := Claim{Node: 0, CPUs: hw.MustParse[hw.CPU]("1-2"), Holder: "/run/a.sock", Pid: 10, Cgroup: "vcored/node0-cpu1"}
	b := Claim{Node: 0, CPUs: hw.MustParse[hw.CPU]("3"), Holder: "/run/b.sock", Pid: 11, Cgroup: "vcored/node0-cpu3"}
	if _, _, err := l.Grant(a); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Grant(b); err != nil {
		t.Fatal(err)
	}
	if _, bad := l.Degraded(); bad {
		t.Fatal("degraded before any failure")
	}
	fix := breakDir(t, dir)
	before := l.Leases()

	// A new grant fails and leaves nothing.
	c := Claim{Node: 1, CPUs: hw.MustParse[hw.CPU]("4"), Holder: "/run/c.sock", Pid: 12, Cgroup: "vcored/node1"}
	if _, _, err := l.Grant(c); !errors.Is(err, ErrLedgerWrite) {
		t.Fatalf("Grant with a broken state dir: %v", err)
	}
	// Orphan: the lease stays live in memory, the orphaning is pending.
	clk.t = clk.t.Add(time.Second)
	orphanedAt := clk.t
	if le, ok, err := l.Orphan(a.Holder); !ok || !errors.Is(err, ErrLedgerWrite) || le.State != StateLive {
		t.Fatalf("Orphan: %+v ok=%v err=%v", le, ok, err)
	}
	// Release: stays in memory, pending.
	if _, err := l.Release(b.Holder); !errors.Is(err, ErrLedgerWrite) {
		t.Fatalf("Release: %v", err)
	}
	after := l.Leases()
	if len(after) != len(before) {
		t.Fatalf("leases changed in memory: %+v, was %+v", after, before)
	}
	for i := range after {
		p := after[i].Pending
		after[i].Pending = ""
		if !reflect.DeepEqual(after[i], before[i]) {
			t.Errorf("lease changed in memory: %+v, was %+v", after[i], before[i])
		}
		if want := map[string]string{a.Holder: PendingOrphan, b.Holder: PendingRelease}[after[i].Holder]; p != want {
			t.Errorf("%s pending %q, want %q", after[i].Holder, p, want)
		}
	}
	d, bad := l.Degraded()
	if !bad || !strings.Contains(d.Reason, "not a directory") || !d.Since.Equal(time.Unix(1000, 0)) ||
		!reflect.DeepEqual(d.Pending, []string{"orphan /run/a.sock", "release /run/b.sock"}) {
		t.Fatalf("Degraded = %+v, %v", d, bad)
	}
	// A re-claim while the orphaning is pending counts the lease orphaned,
	// but cannot be written either: refused, nothing changed.
	a.Pid = 20
	if _, _, err := l.Grant(a); !errors.Is(err, ErrLedgerWrite) {
		t.Fatalf("re-claim with a broken state dir: %v", err)
	}
	if got := l.Leases()[0]; got.HolderPid != 10 || got.State != StateLive || got.Pending != PendingOrphan {
		t.Fatalf("failed re-claim changed the lease: %+v", got)
	}
	if ok, err := l.Retry(); ok || !errors.Is(err, ErrLedgerWrite) {
		t.Fatalf("Retry while broken: %v %v", ok, err)
	}

	// The directory works again: Retry writes the pending changes.
	fix()
	clk.t = clk.t.Add(time.Second)
	if ok, err := l.Retry(); !ok || err != nil {
		t.Fatalf("Retry: %v %v", ok, err)
	}
	if _, bad := l.Degraded(); bad {
		t.Error("still degraded after a successful write")
	}
	got := l.Leases()
	if len(got) != 1 || got[0].Holder != a.Holder || got[0].State != StateOrphaned || !got[0].OrphanedAt.Equal(orphanedAt) || got[0].Pending != "" {
		t.Fatalf("after Retry: %+v (orphaned at %v wanted)", got, orphanedAt)
	}
	l2, _, _ := OpenLedger(path, clk.now, nil)
	if got := l2.Leases(); len(got) != 1 || got[0].Holder != a.Holder {
		t.Fatalf("file after Retry: %+v", got)
	}
	// And the re-claim works now.
	if le, re, err := l.Grant(a); err != nil || !re || le.State != StateLive || le.HolderPid != 20 {
		t.Fatalf("re-claim after recovery: %+v %v %v", le, re, err)
	}
}

// TestLedgerReclaimWithPendingOrphan: when the state dir works again, a
// re-claim by the holder whose orphaning is pending succeeds at once (the
// pending change and the re-claim are written together).
func TestLedgerReclaimWithPendingOrphan(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	l, _, _ := OpenLedger(filepath.Join(dir, "ledger.json"), nil, nil)
	a := Claim{Node: 0, CPUs: hw.MustParse[hw.CPU]("1-2"), Holder: "/run/a.sock", Pid: 10, Cgroup: "vcored/node0"}
	if _, _, err := l.Grant(a); err != nil {
		t.Fatal(err)
	}
	fix := breakDir(t, dir)
	if _, _, err := l.Orphan(a.Holder); err == nil {
		t.Fatal("Orphan wrote into a broken dir")
	}
	// Without the pending orphan this would be refused as a double live claim.
	if _, _, err := l.Grant(a); !errors.Is(err, ErrLedgerWrite) {
		t.Fatalf("re-claim while broken: %v", err)
	}
	fix()
	if le, re, err := l.Grant(a); err != nil || !re || le.State != StateLive {
		t.Fatalf("re-claim: %+v %v %v", le, re, err)
	}
	if _, bad := l.Degraded(); bad {
		t.Error("degraded after a successful write")
	}
}
