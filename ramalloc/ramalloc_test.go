package ramalloc

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

func TestQuota(t *testing.T) {
	q := NewQuota("db", 10)
	if err := q.Reserve(6); err != nil {
		t.Fatal(err)
	}
	err := q.Reserve(5)
	var qe *QuotaError
	if !errors.Is(err, ErrQuota) || !errors.As(err, &qe) {
		t.Fatalf("over quota: %v", err)
	}
	if qe.Subsystem != "db" || qe.Requested != 5 || qe.Used != 6 || qe.Limit != 10 || !strings.Contains(err.Error(), `"db"`) {
		t.Errorf("error %+v: %v", qe, err)
	}
	if q.Used() != 6 {
		t.Errorf("a refused reservation changed Used to %d", q.Used())
	}
	q.Release(6)
	if q.Used() != 0 || q.Limit() != 10 || q.Reserve(10) != nil {
		t.Error("release did not give the quota back")
	}
	if err := q.Reserve(-1); err == nil || errors.Is(err, ErrQuota) {
		t.Errorf("negative reservation: %v", err)
	}
}

func TestLedger(t *testing.T) {
	var l Ledger
	a, _ := l.Add("b", 100)
	l.Add("a", 50)
	if _, err := l.Add("a", 1); err == nil {
		t.Error("second quota for a subsystem accepted")
	}
	a.Reserve(30)
	got := l.Usage()
	if len(got) != 2 || got[0] != (Usage{"a", 0, 50}) || got[1] != (Usage{"b", 30, 100}) {
		t.Errorf("Usage = %+v", got)
	}
	if l.Quota("b") != a || l.Quota("zz") != nil {
		t.Error("Quota lookup")
	}
	l.Remove("b")
	if len(l.Usage()) != 1 {
		t.Error("Remove")
	}
}

func TestAllocOnNode0(t *testing.T) {
	ps := linux.PageSize()
	q := NewQuota("worker", int64(64*ps))
	r, err := Alloc(0, 16*ps-100, Options{Quota: q})
	if err != nil {
		t.Fatal(err)
	}
	b := r.Bytes()
	if len(b) != 16*ps || q.Used() != int64(16*ps) || r.Node() != 0 {
		t.Fatalf("%d bytes, %d used", len(b), q.Used())
	}
	perNode, absent, err := PlacementOf(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(perNode) != 0 || absent != 16 {
		t.Errorf("before touching: %v on nodes, %d absent; want 16 absent", perNode, absent)
	}
	for i := 0; i < len(b); i += ps {
		b[i] = 1
	}
	perNode, absent, err = PlacementOf(b)
	if err != nil {
		t.Fatal(err)
	}
	if perNode[0] != 16 || absent != 0 || len(perNode) != 1 {
		t.Errorf("after touching: %v, %d absent; want 16 on node 0", perNode, absent)
	}
	mode, nodes, err := linux.GetMempolicy(uintptr(unsafeAddr(b)), linux.MPOL_F_ADDR)
	if err != nil || mode != linux.MPOL_BIND || !nodes.Equal(hw.NewSet[hw.Node](0)) {
		t.Errorf("policy mode %d nodes %s (%v), want MPOL_BIND on 0", mode, nodes, err)
	}
	// Over quota: fails, changes nothing.
	if _, err := Alloc(0, 64*ps, Options{Quota: q}); !errors.Is(err, ErrQuota) {
		t.Errorf("allocation over quota: %v", err)
	}
	if q.Used() != int64(16*ps) {
		t.Errorf("failed allocation left %d used", q.Used())
	}
	if err := r.Free(); err != nil {
		t.Fatal(err)
	}
	if q.Used() != 0 || r.Bytes() != nil {
		t.Errorf("after Free: %d used", q.Used())
	}
	if err := r.Free(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Free: %v", err)
	}
}

func TestAllocAbsentNodeChangesNothing(t *testing.T) {
	if _, err := os.Stat("/sys/devices/system/node/node63"); err == nil {
		t.Skip("this machine has a node 63")
	}
	q := NewQuota("worker", 1<<30)
	_, err := Alloc(63, 1<<20, Options{Quota: q})
	if !errors.Is(err, linux.EINVAL) {
		t.Errorf("alloc on absent node 63: %v, want EINVAL", err)
	}
	if q.Used() != 0 {
		t.Errorf("failed allocation left %d used", q.Used())
	}
}

func TestAllocHugePages(t *testing.T) {
	r, err := Alloc(0, 4<<20, Options{HugePages: true})
	if errors.Is(err, linux.EINVAL) {
		t.Skipf("no transparent huge pages here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer r.Free()
	b := r.Bytes()
	b[0], b[len(b)-1] = 1, 1
	perNode, _, err := PlacementOf(b)
	if err != nil || perNode[0] == 0 {
		t.Errorf("placement %v, %v", perNode, err)
	}
}

func TestBindForeignMapping(t *testing.T) {
	ps := linux.PageSize()
	b, err := linux.Mmap(4*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer linux.Munmap(b)
	if err := Bind(b, 0); err != nil {
		t.Fatal(err)
	}
	b[0] = 1
	perNode, absent, err := PlacementOf(b)
	if err != nil || perNode[0] != 1 || absent != 3 {
		t.Errorf("placement %v, %d absent, %v; want 1 page on node 0, 3 absent", perNode, absent, err)
	}
}
