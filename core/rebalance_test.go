package core

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/loadstat"
	"github.com/vcored/vcored/internal/metrics"
	"github.com/vcored/vcored/policy"
	"github.com/vcored/vcored/policy/policytest"
)

// fakeLoad is a loadReader whose groups burn CPU at set rates on a fake
// clock: advance adds rate × step to every group's counter.
type fakeLoad struct {
	mu      sync.Mutex
	usage   map[string]time.Duration
	rate    map[string]float64
	free    map[hw.Node]hw.Bytes
	missing map[string]bool
}

func (f *fakeLoad) advance(step time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for g, r := range f.rate {
		f.usage[g] += time.Duration(r * float64(step))
	}
}

func (f *fakeLoad) CPU(group string, at time.Time) (loadstat.CPUSample, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.missing[group] {
		return loadstat.CPUSample{}, fmt.Errorf("%w: %q", loadstat.ErrNoGroup, group)
	}
	return loadstat.CPUSample{At: at, Usage: f.usage[group], Source: loadstat.SourceCPUAcct}, nil
}

func (f *fakeLoad) NodeMemFree(n hw.Node) (hw.Bytes, error) {
	if b, ok := f.free[n]; ok {
		return b, nil
	}
	return 0, errors.New("no meminfo")
}

func (f *fakeLoad) MachinePressure() (loadstat.PSI, error) {
	return loadstat.PSI{}, loadstat.ErrNoPressure
}

// twoNodeParts: the partitions of TwoSocketSMT2 (CPU 0 reserved), a and b
// on node 0, c on node 1.
func twoNodeParts(t *testing.T) []samplePartition {
	plan, err := policy.MakePlan(policytest.TwoSocketSMT2(), hw.MustParse[hw.CPU]("0"), 512*hw.MiB)
	if err != nil {
		t.Fatal(err)
	}
	sub := func(node, name string) sampleSubsystem {
		return sampleSubsystem{Name: node + "/" + name, Cgroup: "vcored/" + node + "/" + name, CPUs: 1, Memory: 256 * hw.MiB}
	}
	return []samplePartition{
		{Node: 0, CPUs: plan.Partitions[0].CPUs, Memory: plan.Partitions[0].Memory, Subsystems: []sampleSubsystem{sub("node0", "a"), sub("node0", "b")}},
		{Node: 1, CPUs: plan.Partitions[1].CPUs, Memory: plan.Partitions[1].Memory, Subsystems: []sampleSubsystem{sub("node1", "c")}},
	}
}

func TestRebalancerAdvise(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	load := &fakeLoad{usage: map[string]time.Duration{}, rate: map[string]float64{
		"vcored/node0/a": 0.5, "vcored/node0/b": 0.5, "vcored/node1/c": 0.5}, free: map[hw.Node]hw.Bytes{0: 8 * hw.GiB, 1: 8 * hw.GiB}}
	var logBuf bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logBuf}, nil))
	parts := twoNodeParts(t)
	r := newRebalancer(config.RebalanceAdvise, 10*time.Second, load, func() []samplePartition { return parts }, nil, func() time.Time { return now }, log)
	reg := metrics.New()
	r.registerMetrics(reg)
	step := func() {
		now = now.Add(10 * time.Second)
		load.advance(10 * time.Second)
		r.sample(context.Background())
	}
	samples := r.cfg.Samples

	// Balanced: 1 CPU of demand on 7 vs 0.5 on 8 CPUs.
	for range samples + 2 {
		step()
	}
	st := r.Status()
	if len(st.Advice) != 0 || !strings.Contains(st.Waiting, "balanced") || st.Samples != uint64(samples+2) {
		t.Fatalf("balanced: %+v", st)
	}
	if got := st.Partitions[0].Subsystems[0].Usage; got < 0.49 || got > 0.51 {
		t.Errorf("node0/a usage %v, want 0.5 (the fake's rate)", got)
	}

	// Node 0 gets hot: a burns 3 CPUs, b 1, c idles (4/7 vs 0). Moving a
	// leaves 1/7 vs 3/8 (0.23), moving b 3/7 vs 1/8 (0.30): a is advised,
	// but only after cfg.Samples samples.
	load.mu.Lock()
	load.rate["vcored/node0/a"], load.rate["vcored/node0/b"], load.rate["vcored/node1/c"] = 3, 1, 0
	load.mu.Unlock()
	for i := 1; i < samples; i++ {
		step()
		if st := r.Status(); len(st.Advice) != 0 {
			t.Fatalf("advice after %d unbalanced samples (need %d): %+v", i, samples, st.Advice)
		}
	}
	step()
	st = r.Status()
	if len(st.Advice) != 1 {
		t.Fatalf("no advice after %d unbalanced samples: %+v", samples, st)
	}
	a := st.Advice[0]
	if a.Subsystem != "node0/a" || a.From != 0 || a.To != 1 || a.Mode != policy.MoveLive || !a.Since.Equal(now) {
		t.Errorf("advice %+v, want node0/a 0→1 live since %v", a, now)
	}
	// It stays (same Since) while the imbalance lasts, and is logged once.
	first := now
	step()
	if st := r.Status(); len(st.Advice) != 1 || !st.Advice[0].Since.Equal(first) {
		t.Errorf("advice after one more sample: %+v", st.Advice)
	}
	logMu.Lock()
	logged := strings.Count(logBuf.String(), "rebalance advice (advise mode")
	logMu.Unlock()
	if logged != 1 {
		t.Errorf("advice logged %d times, want once:\n%s", logged, logBuf.String())
	}
	rec := httptest.NewRecorder()
	reg.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if want := `vcored_rebalance_advice{from="0",mode="live",subsystem="node0/a",to="1"} 1`; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(rec.Body.String(), "vcored_rebalance"))
	}

	// Target's free memory unknown: no move goes there.
	delete(load.free, 1)
	step()
	if st := r.Status(); len(st.Advice) != 0 || st.Partitions[1].Error == "" {
		t.Errorf("advice to a node of unknown free memory: %+v", st)
	}
	load.free[1] = 8 * hw.GiB

	// Calm again: the advice is withdrawn (and said so).
	load.mu.Lock()
	load.rate["vcored/node0/a"], load.rate["vcored/node0/b"], load.rate["vcored/node1/c"] = 0.5, 0.5, 0.5
	load.mu.Unlock()
	step()
	if st := r.Status(); len(st.Advice) != 0 {
		t.Errorf("advice after the load evened out: %+v", st.Advice)
	}
	logMu.Lock()
	if !strings.Contains(logBuf.String(), "rebalance advice withdrawn") {
		t.Errorf("withdrawal not logged:\n%s", logBuf.String())
	}
	logMu.Unlock()

	// A group that cannot be read shows its error and counts as idle.
	load.mu.Lock()
	load.missing = map[string]bool{"vcored/node1/c": true}
	load.mu.Unlock()
	step()
	if s := r.Status().Partitions[1].Subsystems[0]; s.Error == "" || s.Usage != 0 {
		t.Errorf("unreadable group: %+v", s)
	}
}

// TestRebalancerWarmUp: a group's first sample gives no rate (and a counter
// that went down gives none either) instead of a spike.
func TestRebalancerWarmUp(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	load := &fakeLoad{usage: map[string]time.Duration{"vcored/node0/a": time.Hour}, rate: map[string]float64{"vcored/node0/a": 1},
		free: map[hw.Node]hw.Bytes{0: hw.GiB, 1: hw.GiB}}
	parts := twoNodeParts(t)
	r := newRebalancer(config.RebalanceAdvise, time.Second, load, func() []samplePartition { return parts }, nil, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	r.sample(context.Background())
	if u := r.Status().Partitions[0].Subsystems[0].Usage; u != 0 {
		t.Errorf("first sample usage %v, want 0 (no rate yet)", u)
	}
	now = now.Add(time.Second)
	load.advance(time.Second)
	r.sample(context.Background())
	if u := r.Status().Partitions[0].Subsystems[0].Usage; u < 0.99 || u > 1.01 {
		t.Errorf("second sample usage %v, want 1", u)
	}
	load.mu.Lock()
	load.usage["vcored/node0/a"] = 0 // the cgroup was recreated
	load.mu.Unlock()
	now = now.Add(time.Second)
	r.sample(context.Background())
	if u := r.Status().Partitions[0].Subsystems[0].Usage; u != 0 {
		t.Errorf("usage %v after the counter went down, want 0", u)
	}
}

func TestRebalanceStatusOff(t *testing.T) {
	c := &Core{}
	st := c.RebalanceStatus()
	if st.Mode != "off" || !strings.Contains(st.Waiting, "off") || st.Advice == nil {
		t.Errorf("%+v", st)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func grepLines(s, sub string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

// TestRebalancerMovableAndFaults: a subsystem its vcore reports movable is
// advised a restart move, and fault counts become rates.
func TestRebalancerMovableAndFaults(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	load := &fakeLoad{usage: map[string]time.Duration{}, rate: map[string]float64{"vcored/node0/a": 3, "vcored/node0/b": 1},
		free: map[hw.Node]hw.Bytes{0: 8 * hw.GiB, 1: 8 * hw.GiB}}
	parts := twoNodeParts(t)
	parts[0].Subsystems[0].Movable = true
	parts[0].Subsystems[0].HaveFaults = true
	r := newRebalancer(config.RebalanceAdvise, time.Second, load, func() []samplePartition { return parts }, nil, func() time.Time { return now }, slog.New(slog.DiscardHandler))
	for range r.cfg.Samples + 1 {
		now = now.Add(10 * time.Second)
		load.advance(10 * time.Second)
		parts[0].Subsystems[0].Faults += 5000 // 500 faults/s
		r.sample(context.Background())
	}
	st := r.Status()
	if len(st.Advice) != 1 || st.Advice[0].Subsystem != "node0/a" || st.Advice[0].Mode != policy.MoveRestart {
		t.Fatalf("advice %+v, want node0/a by restart", st.Advice)
	}
	if a := st.Partitions[0].Subsystems[0]; a.FaultRate != 500 || !a.Movable {
		t.Errorf("node0/a: fault rate %v movable %t, want 500 and true", a.FaultRate, a.Movable)
	}
	if b := st.Partitions[0].Subsystems[1]; b.FaultRate != 0 || b.Movable {
		t.Errorf("node0/b: %+v", b)
	}
}

// TestAskVCore: movable and fault counts come from the vcore's status API;
// a dataspace listed by two subsystems is split between them; a vcore that
// does not answer leaves both unknown, within the timeout.
func TestAskVCore(t *testing.T) {
	dir := t.TempDir()
	sock := dir + "/vcore.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/subsystems", func(w http.ResponseWriter, _ *http.Request) {
		api.WriteJSON(w, []api.Subsystem{
			{Name: "a", Cgroup: "vcored/node0/a", Movable: true, Dataspaces: []string{"local-a", "shared"}},
			{Name: "b", Cgroup: "vcored/node0/b", Dataspaces: []string{"shared"}},
		})
	})
	mux.HandleFunc("GET /v1/pager", func(w http.ResponseWriter, _ *http.Request) {
		api.WriteJSON(w, api.Pager{Dataspaces: []api.DataspaceStats{{Dataspace: "local-a", Faults: 100}, {Dataspace: "shared", Faults: 50}}})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()

	c := &Core{log: slog.New(slog.DiscardHandler)}
	subs := []sampleSubsystem{{Name: "node0/a", Cgroup: "vcored/node0/a"}, {Name: "node0/b", Cgroup: "vcored/node0/b"}, {Name: "node0/gone", Cgroup: "vcored/node0/gone"}}
	if !c.askVCore(sock, subs) {
		t.Error("askVCore: an answering vcore reported as not answering")
	}
	want := []sampleSubsystem{
		{Name: "node0/a", Cgroup: "vcored/node0/a", Movable: true, Faults: 125, HaveFaults: true},
		{Name: "node0/b", Cgroup: "vcored/node0/b", Faults: 25, HaveFaults: true},
		{Name: "node0/gone", Cgroup: "vcored/node0/gone"},
	}
	if !reflect.DeepEqual(subs, want) {
		t.Errorf("askVCore:\n got %+v\nwant %+v", subs, want)
	}

	// A socket that accepts and never answers.
	mute, err := net.Listen("unix", dir+"/mute.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	go func() {
		for {
			conn, err := mute.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	subs = []sampleSubsystem{{Name: "node0/a", Cgroup: "vcored/node0/a"}}
	start := time.Now()
	if c.askVCore(dir+"/mute.sock", subs) {
		t.Error("askVCore: a mute vcore reported as answering (its partition would be a move target)")
	}
	if took := time.Since(start); took > 10*vcoreAskTimeout || subs[0].Movable || subs[0].HaveFaults {
		t.Errorf("mute vcore: took %v, subsystem %+v", took, subs[0])
	}
}
