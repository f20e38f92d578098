package core

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/metrics"
	"github.com/vcored/vcored/policy"
)

// handClock is a clock the test moves by hand (read by the move goroutine).
type handClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *handClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *handClock) Add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// fakeMover records each move asked of it and makes it end as the test
// says (or when its context ends).
type fakeMover struct {
	calls   chan autoMove
	results chan fakeMoveResult
}

type fakeMoveResult struct {
	res autoMoveResult
	err error
}

func newFakeMover() *fakeMover {
	return &fakeMover{calls: make(chan autoMove, 16), results: make(chan fakeMoveResult, 1)}
}

func (f *fakeMover) move(ctx context.Context, m autoMove) (autoMoveResult, error) {
	f.calls <- m
	select {
	case r := <-f.results:
		return r.res, r.err
	case <-ctx.Done():
		return autoMoveResult{}, ctx.Err()
	}
}

// called returns the next move asked of the mover (which the rebalancer
// calls from the goroutine it starts for the move).
func (f *fakeMover) called() (autoMove, bool) {
	select {
	case m := <-f.calls:
		return m, true
	case <-time.After(time.Minute):
		return autoMove{}, false
	}
}

// autoFixture: node 0 (7 CPUs) runs a (3 CPUs busy), b and d (2 each);
// node 1 (8 CPUs) runs an idle c.
type autoFixture struct {
	t     *testing.T
	clock *handClock
	load  *fakeLoad
	parts []samplePartition
	mu    sync.Mutex // parts
	mover *fakeMover
	r     *rebalancer
	log   *bytes.Buffer
	logMu sync.Mutex
	reg   *metrics.Registry
}

func newAutoFixture(t *testing.T) *autoFixture {
	f := &autoFixture{t: t, clock: &handClock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}, mover: newFakeMover(), log: &bytes.Buffer{}}
	f.load = &fakeLoad{usage: map[string]time.Duration{}, rate: map[string]float64{
		"vcored/node0/a": 3, "vcored/node0/b": 2, "vcored/node0/d": 2, "vcored/node1/c": 0}, free: map[hw.Node]hw.Bytes{0: 8 * hw.GiB, 1: 8 * hw.GiB}}
	f.parts = twoNodeParts(t)
	f.parts[0].Subsystems = append(f.parts[0].Subsystems, sampleSubsystem{Name: "node0/d", Cgroup: "vcored/node0/d", CPUs: 1, Memory: 256 * hw.MiB})
	log := slog.New(slog.NewTextHandler(lockedWriter{&f.logMu, f.log}, nil))
	f.r = newRebalancer(config.RebalanceAuto, 10*time.Second, f.load, func() []samplePartition {
		f.mu.Lock()
		defer f.mu.Unlock()
		return clonePartitions(f.parts)
	}, f.mover.move, f.clock.Now, log)
	f.reg = metrics.New()
	f.r.registerMetrics(f.reg)
	return f
}

func clonePartitions(ps []samplePartition) []samplePartition {
	out := make([]samplePartition, len(ps))
	for i, p := range ps {
		out[i] = p
		out[i].Subsystems = append([]sampleSubsystem{}, p.Subsystems...)
	}
	return out
}

// started counts the moves started (the rebalancer records a move in
// flight in the sample that starts it).
func (f *autoFixture) started() int {
	st := f.r.Status()
	n := len(st.Moves)
	if st.InFlight != nil {
		n++
	}
	return n
}

// step advances the clock by the interval and takes a sample.
func (f *autoFixture) step(ctx context.Context) {
	f.clock.Add(10 * time.Second)
	f.load.advance(10 * time.Second)
	f.r.sample(ctx)
}

// carryOut does what a move of name from node 0 to node 1 does to the
// cgroup tree: it runs under node 1's partition now, with its load.
func (f *autoFixture) carryOut(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var keep []sampleSubsystem
	for _, s := range f.parts[0].Subsystems {
		if s.Name != "node0/"+name {
			keep = append(keep, s)
		}
	}
	f.parts[0].Subsystems = keep
	f.parts[1].Subsystems = append(f.parts[1].Subsystems, sampleSubsystem{Name: "node1/" + name, Cgroup: "vcored/node1/" + name, CPUs: 1, Memory: 256 * hw.MiB})
	f.load.mu.Lock()
	f.load.rate["vcored/node1/"+name] = f.load.rate["vcored/node0/"+name]
	delete(f.load.rate, "vcored/node0/"+name)
	f.load.mu.Unlock()
}

func (f *autoFixture) logged() string {
	f.logMu.Lock()
	defer f.logMu.Unlock()
	return f.log.String()
}

func (f *autoFixture) metrics() string {
	rec := httptest.NewRecorder()
	f.reg.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return grepLines(rec.Body.String(), "vcored_rebalance_mov")
}

// TestRebalancerAuto: with rebalance = "auto" the rebalancer calls its
// mover once the imbalance lasted cfg.Samples samples, never starts a
// second move while one is in flight, reports the move (status, log,
// metrics) when it ends, waits the min interval after it, and reports a
// failed move, which it does not try again.
func TestRebalancerAuto(t *testing.T) {
	f := newAutoFixture(t)
	ctx := context.Background()
	samples := f.r.cfg.Samples
	// Loads 7/7 vs 0/8: moving a (3) leaves 4/7 vs 3/8 (0.20), b or d
	// 5/7 vs 2/8 (0.46). The first sample gives no rate yet.
	for i := range samples {
		f.step(ctx)
		if f.started() != 0 {
			t.Fatalf("move %+v after %d samples, before the imbalance lasted %d", f.r.Status().InFlight, i+1, samples)
		}
	}
	f.step(ctx)
	m, ok := f.mover.called()
	want := autoMove{Subsystem: "a", Name: "node0/a", Cgroup: "vcored/node0/a", From: 0, To: 1, Mode: policy.MoveLive}
	if !ok || m != want {
		t.Fatalf("mover called %t with %+v, want %+v (status %+v)", ok, m, want, f.r.Status())
	}
	started := f.clock.Now()
	st := f.r.Status()
	if st.Mode != "auto" || st.InFlight == nil || st.InFlight.Subsystem != "node0/a" || st.InFlight.Result != moveInFlight ||
		!st.InFlight.Started.Equal(started) || !strings.HasPrefix(st.Decision, "started moving node0/a from node 0 to node 1 (live)") {
		t.Fatalf("status while moving: %+v", st)
	}
	if !strings.Contains(f.metrics(), "vcored_rebalance_move_in_flight 1") || !strings.Contains(f.logged(), "rebalance: moving a subsystem") {
		t.Errorf("move start not reported:\n%s\n%s", f.metrics(), f.logged())
	}

	// In flight for a minute: no second move, however unbalanced.
	for range 6 {
		f.step(ctx)
		if f.started() != 1 {
			t.Fatalf("second move while the first is in flight: %+v", f.r.Status())
		}
		if w := f.r.Status().Waiting; !strings.Contains(w, "the move of node0/a from node 0 to node 1 is in flight") {
			t.Fatalf("waiting %q", w)
		}
	}
	f.carryOut("a")
	f.mover.results <- fakeMoveResult{res: autoMoveResult{TotalMS: 850, Bytes: 64 << 20, PagesLeftBehind: 3}}
	f.r.moving.Wait()
	ended := f.clock.Now()
	st = f.r.Status()
	if st.InFlight != nil || len(st.Moves) != 1 || st.MovesDone != 1 || st.MovesFailed != 0 {
		t.Fatalf("status after the move: %+v", st)
	}
	if mv := st.Moves[0]; mv.Result != moveDone || mv.Ended == nil || !mv.Ended.Equal(ended) || mv.TotalMS != 850 || mv.Bytes != 64<<20 ||
		mv.PagesLeftBehind != 3 || mv.From != 0 || mv.To != 1 || mv.Mode != policy.MoveLive || mv.Reason == "" || mv.ImbalanceBefore != 1 ||
		!(mv.ImbalanceAfter > 0.19 && mv.ImbalanceAfter < 0.2) {
		t.Errorf("move record %+v", mv)
	}
	if m := f.metrics(); !strings.Contains(m, `vcored_rebalance_moves_total{mode="live",result="done"} 1`) ||
		!strings.Contains(m, `vcored_rebalance_moves_total{mode="live",result="failed"} 0`) || !strings.Contains(m, "vcored_rebalance_move_in_flight 0") {
		t.Errorf("metrics after the move:\n%s", m)
	}
	if !strings.Contains(f.logged(), "rebalance: move done") || !strings.Contains(f.logged(), "pages_left_behind=3") {
		t.Errorf("move end not logged:\n%s", f.logged())
	}

	// Balanced now (4/7 vs 3/8). Then d gets busier: 5/7 vs 3/8 = 0.34.
	// Moving b leaves 3/7 vs 5/8 (0.20); a (on node 1 now) is not on the
	// hot node. The move waits for the min interval after the first ended.
	// (A's new cgroup has a rate from its second sample on.)
	f.step(ctx)
	f.step(ctx)
	if st := f.r.Status(); !strings.Contains(st.Waiting, "balanced") || st.Decision != st.Waiting {
		t.Fatalf("after the move: %+v", st)
	}
	f.load.mu.Lock()
	f.load.rate["vcored/node0/d"] = 3
	f.load.mu.Unlock()
	for f.clock.Now().Sub(ended) < f.r.cfg.MinInterval-10*time.Second {
		f.step(ctx)
		if f.started() != 1 {
			t.Fatalf("move %+v %s after the last ended (min interval %s)", f.r.Status().InFlight, f.clock.Now().Sub(ended), f.r.cfg.MinInterval)
		}
	}
	if w := f.r.Status().Waiting; !strings.Contains(w, "last move 50s ago, min interval 1m0s") {
		t.Errorf("waiting %q", w)
	}
	f.step(ctx)
	m, ok = f.mover.called()
	if !ok || m.Subsystem != "b" || m.From != 0 || m.To != 1 {
		t.Fatalf("second move %t %+v at %s after the first (status %+v)", ok, m, f.clock.Now().Sub(ended), f.r.Status())
	}
	f.mover.results <- fakeMoveResult{err: errors.New("destination vcore refused")}
	f.r.moving.Wait()
	st = f.r.Status()
	if st.MovesDone != 1 || st.MovesFailed != 1 || len(st.Moves) != 2 || st.Moves[1].Result != moveFailed ||
		st.Moves[1].Error != "destination vcore refused" || st.InFlight != nil {
		t.Fatalf("status after a failed move: %+v", st)
	}
	if !strings.Contains(f.metrics(), `vcored_rebalance_moves_total{mode="live",result="failed"} 1`) || !strings.Contains(f.logged(), "rebalance: move failed") {
		t.Errorf("failure not reported:\n%s\n%s", f.metrics(), f.logged())
	}
	// b stays (not tried again for the flap window); d would not help.
	for f.clock.Now().Sub(ended) < f.r.cfg.FlapWindow {
		f.step(ctx)
		if f.started() != 2 {
			t.Fatalf("move %+v %s after b's move failed", f.r.Status().InFlight, f.clock.Now().Sub(ended))
		}
	}
	if w := f.r.Status().Waiting; !strings.Contains(w, "node0/b: its move to node 1 failed") {
		t.Errorf("waiting %q does not say why b stays", w)
	}
	if len(f.mover.calls) != 0 {
		t.Errorf("the mover was asked for %d moves more than started", len(f.mover.calls))
	}
}

// TestRebalancerAutoTimeout: a move that outlives rebalance_move_timeout is
// cancelled and counts as failed, saying so.
func TestRebalancerAutoTimeout(t *testing.T) {
	f := newAutoFixture(t)
	f.r.moveTimeout = time.Millisecond // the fake mover returns when its context ends
	for range f.r.cfg.Samples + 1 {
		f.step(context.Background())
	}
	if _, ok := f.mover.called(); !ok {
		t.Fatal("no move")
	}
	f.r.moving.Wait()
	st := f.r.Status()
	if st.MovesFailed != 1 || !strings.Contains(st.Moves[0].Error, "gave up after rebalance_move_timeout 1ms: context deadline exceeded") {
		t.Fatalf("%+v", st)
	}
}

// TestRebalancerAutoStop: stopping the rebalancer ends the move in flight
// (its context ends) and run returns only after the mover returned.
func TestRebalancerAutoStop(t *testing.T) {
	f := newAutoFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	for range f.r.cfg.Samples + 1 {
		f.step(ctx)
	}
	if _, ok := f.mover.called(); !ok {
		t.Fatal("no move")
	}
	cancel()
	f.r.run(ctx)
	st := f.r.Status()
	if st.InFlight != nil || st.MovesFailed != 1 || !strings.Contains(st.Moves[0].Error, "context canceled") {
		t.Fatalf("after stop: %+v", st)
	}
}

// TestCheckRebalance: a core without a mover refuses rebalance = "auto" at
// New, naming the file and line (one with a mover accepts it); advise and
// off need none.
func TestCheckRebalance(t *testing.T) {
	refused := `core.toml:2: rebalance: "auto" needs moves between nodes, which this core cannot make; use "advise"`
	if (&Core{}).rebalanceMover() != nil {
		refused = ""
	}
	for _, tc := range []struct{ doc, want string }{
		{"rebalance = \"off\"\n", ""},
		{"rebalance = \"advise\"\n", ""},
		{"log_level = \"info\"\nrebalance = \"auto\"\n", refused},
	} {
		cfg, err := config.ParseCore("core.toml", []byte(tc.doc))
		if err != nil {
			t.Fatal(err)
		}
		c := &Core{cfg: cfg}
		err = c.checkRebalance()
		if tc.want == "" && err != nil || tc.want != "" && (!errors.Is(err, ErrConfig) || !errors.Is(err, config.ErrValue) || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%q: %v, want %q", tc.doc, err, tc.want)
		}
	}
	cfg, _ := config.ParseCore("core.toml", []byte("rebalance = \"advise\"\n"))
	cfg.RebalancePolicy.Samples = 0
	if err := (&Core{cfg: cfg}).checkRebalance(); !errors.Is(err, ErrConfig) {
		t.Errorf("a policy the policy refuses: %v", err)
	}
}
