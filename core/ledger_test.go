package core

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestLedgerLifecycle(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	path := filepath.Join(t.TempDir(), "ledger.json")
	l, err := OpenLedger(path, clk.now)
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
	if _, ok := l.Orphan(a.Holder); !ok {
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
	l2, err := OpenLedger(path, clk.now)
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
	l3, _ := OpenLedger(path, clk.now)
	if n := len(l3.Leases()); n != 1 {
		t.Fatalf("release not persisted: %d leases", n)
	}
}
