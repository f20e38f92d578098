package core

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/loadstat"
	"github.com/vcored/vcored/internal/metrics"
	"github.com/vcored/vcored/policy"
)

// loadReader is where the sampler reads load (a *loadstat.Reader of the
// host; a fake in tests).
type loadReader interface {
	CPU(group string, at time.Time) (loadstat.CPUSample, error)
	NodeMemFree(node hw.Node) (hw.Bytes, error)
	MachinePressure() (loadstat.PSI, error)
}

// samplePartition is one node's live leases and the subsystems running in
// them, as the sampler sees them.
type samplePartition struct {
	Node       hw.Node
	CPUs       hw.CPUSet
	Memory     hw.Bytes
	Subsystems []sampleSubsystem
}

// sampleSubsystem is one subsystem cgroup (a child of a partition cgroup).
type sampleSubsystem struct {
	Name   string // "<partition cgroup name>/<subsystem>", e.g. "node0/toucher"
	Cgroup string // relative cgroup path
	CPUs   int    // its cpuset's size
	Memory hw.Bytes
	// From its vcore, when it answered: movable = true in the vcore file,
	// and the faults its pager resolved (cumulative; a dataspace several
	// subsystems attach is split evenly between them).
	Movable    bool
	Faults     float64
	HaveFaults bool
}

// autoMove is one move rebalance = "auto" asks its mover to make.
type autoMove struct {
	// Subsystem is its name in its vcore's file ("toucher"), Name the one
	// /v1/rebalance shows ("node0/toucher"), Cgroup its cgroup now.
	Subsystem, Name, Cgroup string
	From, To                hw.Node
	Mode                    string // policy.MoveLive or policy.MoveRestart
}

// autoMoveResult is what a mover measured of a move it made (0: not
// measured).
type autoMoveResult struct {
	DowntimeMS, TotalMS    float64
	Bytes, PagesLeftBehind int64
}

// moveFunc makes one move and returns when it is done or has failed. It
// must give up when ctx ends (rebalance_move_timeout, or core stopping).
type moveFunc func(ctx context.Context, m autoMove) (autoMoveResult, error)

// Move results, as /v1/rebalance and the metrics name them.
const (
	moveInFlight = "in flight"
	moveDone     = "done"
	moveFailed   = "failed"
)

// keptMoves is how many ended automatic moves /v1/rebalance lists.
const keptMoves = 16

// rebalancer samples every live partition's load each interval, asks
// policy.Rebalance for the move it would make and keeps the answer for
// /v1/rebalance, the log and the metrics. In advise mode nothing is moved:
// the policy's state never has a move in flight. In auto mode an advised
// move is started at once (mover, in its own goroutine) and recorded in the
// policy's state until it returns, so no second move starts meanwhile.
type rebalancer struct {
	mode        config.Rebalance
	interval    time.Duration
	cfg         policy.RebalanceConfig
	moveTimeout time.Duration
	now         func() time.Time
	load        loadReader
	parts       func() []samplePartition
	mover       moveFunc // nil: moves are not possible (advise only)
	log         *slog.Logger

	moving sync.WaitGroup // the move in flight

	mu         sync.Mutex // held for a sample's reads of cgroup and proc files (the vcores are asked before), never across a move
	prev       map[string]loadstat.CPUSample
	prevFaults map[string]faultSample
	state      policy.RebalanceState
	status     api.Rebalance
	advised    map[string]time.Time // advice key → first advised
	inFlight   *api.RebalanceMove
	moves      []api.RebalanceMove // the last keptMoves ended, oldest first
	ended      map[[2]string]uint64
}

// newRebalancer returns a sampler for mode that moves with mover (nil:
// none; rebalance = "auto" then advises only) under the default policy
// thresholds (set cfg and moveTimeout to change them).
func newRebalancer(mode config.Rebalance, interval time.Duration, load loadReader, parts func() []samplePartition,
	mover moveFunc, now func() time.Time, log *slog.Logger) *rebalancer {
	return &rebalancer{
		mode: mode, interval: interval, cfg: policy.DefaultRebalanceConfig(), moveTimeout: config.DefaultRebalanceMoveTimeout,
		now: now, load: load, parts: parts, mover: mover, log: log,
		prev:       map[string]loadstat.CPUSample{},
		prevFaults: map[string]faultSample{},
		advised:    map[string]time.Time{},
		ended:      map[[2]string]uint64{},
		status:     api.Rebalance{Mode: string(mode), Interval: interval.String(), Advice: []api.RebalanceAdvice{}, Partitions: []api.RebalancePartition{}},
	}
}

// auto reports whether the rebalancer makes the moves it decides.
func (r *rebalancer) auto() bool { return r.mode == config.RebalanceAuto && r.mover != nil }

func adviceKey(a policy.Advice) string {
	return a.Subsystem + " " + strconv.Itoa(int(a.From)) + ">" + strconv.Itoa(int(a.To)) + " " + a.Mode
}

// faultSample is a subsystem's cumulative fault count at one moment.
type faultSample struct {
	at     time.Time
	faults float64
}

// sample takes one sample and updates the advice; in auto mode it starts
// the advised move (which ends with ctx at the latest).
func (r *rebalancer) sample(ctx context.Context) {
	parts := r.parts() // may ask the vcores over their sockets: no lock held
	r.mu.Lock()
	defer r.mu.Unlock()
	at := r.now()
	snap := policy.LoadSnapshot{At: at}
	st := api.Rebalance{Mode: string(r.mode), Interval: r.interval.String(), SampledAt: &at, Samples: r.status.Samples + 1,
		Advice: []api.RebalanceAdvice{}, Partitions: []api.RebalancePartition{}}
	if p, err := r.load.MachinePressure(); err == nil {
		st.MachinePressure = &p.Avg10
	}
	seen := map[string]bool{}
	byName := map[string]sampleSubsystem{}
	for _, p := range parts {
		pl := policy.PartitionLoad{Node: p.Node, CPUs: p.CPUs, Memory: p.Memory}
		ap := api.RebalancePartition{Node: int(p.Node), CPUs: p.CPUs.String(), MemoryBytes: uint64(p.Memory), Subsystems: []api.RebalanceSubsystem{}}
		free, err := r.load.NodeMemFree(p.Node)
		if err != nil {
			// Unknown free memory: no move goes there (MemFree 0).
			ap.Error = err.Error()
		}
		pl.MemFree, ap.MemFreeBytes = free, uint64(free)
		for _, s := range p.Subsystems {
			seen[s.Cgroup] = true
			byName[s.Name] = s
			as := api.RebalanceSubsystem{Name: s.Name, Cgroup: s.Cgroup, CPUs: s.CPUs, MemoryBytes: uint64(s.Memory), Movable: s.Movable}
			// Its ID is its name in its vcore's file, which a move keeps
			// while the partition part of Name changes. Subsystems of the
			// same name on two vcores share their move history: the policy
			// then waits more, never less.
			sl := policy.SubsystemLoad{Name: s.Name, ID: path.Base(s.Cgroup), CPUs: s.CPUs, Memory: s.Memory, ConfiguredNode: p.Node, Movable: s.Movable}
			if s.HaveFaults {
				if prev, ok := r.prevFaults[s.Cgroup]; ok && at.After(prev.at) && s.Faults >= prev.faults {
					sl.FaultRate = (s.Faults - prev.faults) / at.Sub(prev.at).Seconds()
				}
				r.prevFaults[s.Cgroup] = faultSample{at: at, faults: s.Faults}
			} else {
				delete(r.prevFaults, s.Cgroup)
			}
			as.FaultRate = sl.FaultRate
			cur, err := r.load.CPU(s.Cgroup, at)
			if err != nil {
				as.Error = err.Error()
				delete(r.prev, s.Cgroup)
			} else {
				as.Source = cur.Source
				if prev, ok := r.prev[s.Cgroup]; ok {
					if u, pr, ok := loadstat.Rates(prev, cur); ok {
						sl.Usage, sl.Pressure = u, pr
					}
				}
				r.prev[s.Cgroup] = cur
			}
			as.Usage, as.Pressure = sl.Usage, sl.Pressure
			ap.Demand += sl.Demand()
			pl.Subsystems = append(pl.Subsystems, sl)
			ap.Subsystems = append(ap.Subsystems, as)
		}
		if n := p.CPUs.Len(); n > 0 {
			ap.Load = ap.Demand / float64(n)
		}
		snap.Partitions = append(snap.Partitions, pl)
		st.Partitions = append(st.Partitions, ap)
	}
	for g := range r.prev {
		if !seen[g] {
			delete(r.prev, g)
		}
	}
	for g := range r.prevFaults {
		if !seen[g] {
			delete(r.prevFaults, g)
		}
	}
	d, next := policy.Rebalance(r.cfg, snap, r.state)
	r.state = next // startLocked records a move it starts
	st.Imbalance, st.Waiting, st.Decision = d.Imbalance, d.Waiting, d.Waiting
	keep := map[string]time.Time{}
	for _, a := range d.Advice {
		k := adviceKey(a)
		since, ok := r.advised[k]
		if !ok {
			since = at
		}
		st.Advice = append(st.Advice, api.RebalanceAdvice{Subsystem: a.Subsystem, From: int(a.From), To: int(a.To), Mode: a.Mode,
			ImbalanceBefore: a.Before, ImbalanceAfter: a.After, Reason: a.Reason, Since: since})
		if r.auto() {
			st.Decision = fmt.Sprintf("started moving %s from node %d to node %d (%s): %s", a.Subsystem, a.From, a.To, a.Mode, a.Reason)
			r.startLocked(ctx, a, at, byName[a.Subsystem])
			continue
		}
		st.Decision = fmt.Sprintf("advised moving %s from node %d to node %d (%s): %s", a.Subsystem, a.From, a.To, a.Mode, a.Reason)
		if !ok {
			r.log.Info("rebalance advice (advise mode: nothing is moved)", "subsystem", a.Subsystem, "from", a.From, "to", a.To,
				"mode", a.Mode, "reason", a.Reason)
		}
		keep[k] = since
	}
	if len(r.advised) > 0 && len(keep) == 0 {
		r.log.Info("rebalance advice withdrawn", "why", d.Waiting)
	}
	r.advised = keep
	r.status = st
}

// startLocked starts move a (sampled as s) in its own goroutine and records
// it in flight. r.mu is held.
func (r *rebalancer) startLocked(ctx context.Context, a policy.Advice, at time.Time, s sampleSubsystem) {
	r.state = r.state.Start(a, at)
	rec := api.RebalanceMove{Subsystem: a.Subsystem, From: int(a.From), To: int(a.To), Mode: a.Mode, Reason: a.Reason,
		ImbalanceBefore: a.Before, ImbalanceAfter: a.After, Started: at, Result: moveInFlight}
	r.inFlight = &rec
	m := autoMove{Subsystem: path.Base(s.Cgroup), Name: a.Subsystem, Cgroup: s.Cgroup, From: a.From, To: a.To, Mode: a.Mode}
	r.log.Info("rebalance: moving a subsystem", "subsystem", a.Subsystem, "from", a.From, "to", a.To, "mode", a.Mode,
		"timeout", r.moveTimeout, "reason", a.Reason)
	r.moving.Add(1)
	go func() {
		defer r.moving.Done()
		mctx, cancel := context.WithTimeout(ctx, r.moveTimeout)
		res, err := r.mover(mctx, m)
		if err != nil && errors.Is(mctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("gave up after rebalance_move_timeout %s: %w", r.moveTimeout, err)
		}
		cancel()
		r.finish(rec, res, err)
	}()
}

// finish records the end of the move in flight.
func (r *rebalancer) finish(rec api.RebalanceMove, res autoMoveResult, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := r.now()
	rec.Ended = &end
	rec.DowntimeMS, rec.TotalMS, rec.Bytes, rec.PagesLeftBehind = res.DowntimeMS, res.TotalMS, res.Bytes, res.PagesLeftBehind
	took := end.Sub(rec.Started)
	if err != nil {
		rec.Result, rec.Error = moveFailed, err.Error()
		r.state = r.state.Fail(end, err.Error())
		r.log.Warn("rebalance: move failed; the subsystem stays where it was and is not tried again for the flap window",
			"subsystem", rec.Subsystem, "from", rec.From, "to", rec.To, "mode", rec.Mode, "took", took,
			"flap_window", r.cfg.FlapWindow, "err", err)
	} else {
		rec.Result = moveDone
		r.state = r.state.Done(end)
		r.log.Info("rebalance: move done", "subsystem", rec.Subsystem, "from", rec.From, "to", rec.To, "mode", rec.Mode,
			"took", took, "downtime_ms", res.DowntimeMS, "total_ms", res.TotalMS, "bytes", res.Bytes, "pages_left_behind", res.PagesLeftBehind)
	}
	r.ended[[2]string{rec.Result, rec.Mode}]++
	r.inFlight = nil
	r.moves = append(r.moves, rec)
	if n := len(r.moves); n > keptMoves {
		r.moves = slices.Clone(r.moves[n-keptMoves:])
	}
}

// Status returns the last sample and advice.
func (r *rebalancer) Status() api.Rebalance {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status
	st.Advice = slices.Clone(st.Advice)
	st.Partitions = slices.Clone(st.Partitions)
	if r.inFlight != nil {
		m := *r.inFlight
		st.InFlight = &m
	}
	st.Moves = append([]api.RebalanceMove{}, r.moves...)
	for k, n := range r.ended {
		switch k[0] {
		case moveDone:
			st.MovesDone += n
		case moveFailed:
			st.MovesFailed += n
		}
	}
	return st
}

// run samples every interval until ctx ends, then waits for the move in
// flight (which ctx ends too).
func (r *rebalancer) run(ctx context.Context) {
	defer r.moving.Wait()
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.sample(ctx)
		}
	}
}

func (r *rebalancer) registerMetrics(reg *metrics.Registry) {
	if r.mode == config.RebalanceAuto {
		reg.Collect(metrics.Family{Name: "vcored_rebalance_moves_total", Help: "Moves core made by itself (rebalance = \"auto\") that ended, by result (done, failed) and mode.",
			Kind: metrics.Counter, Labels: []string{"result", "mode"}},
			func() []metrics.Sample {
				r.mu.Lock()
				defer r.mu.Unlock()
				var out []metrics.Sample
				for _, res := range []string{moveDone, moveFailed} {
					for _, mode := range []string{policy.MoveLive, policy.MoveRestart} {
						out = append(out, metrics.Sample{Labels: []string{res, mode}, Value: float64(r.ended[[2]string{res, mode}])})
					}
				}
				return out
			})
		reg.Collect(metrics.Family{Name: "vcored_rebalance_move_in_flight", Help: "1 while a move core started by itself is under way.", Labels: []string{}},
			func() []metrics.Sample {
				r.mu.Lock()
				defer r.mu.Unlock()
				v := 0.0
				if r.inFlight != nil {
					v = 1
				}
				return []metrics.Sample{{Labels: []string{}, Value: v}}
			})
	}
	reg.Collect(metrics.Family{Name: "vcored_rebalance_advice", Help: "The move core would make (rebalance = \"advise\") or started (\"auto\") in the last sample: 1 per move.",
		Labels: []string{"subsystem", "from", "to", "mode"}},
		func() []metrics.Sample {
			var out []metrics.Sample
			for _, a := range r.Status().Advice {
				out = append(out, metrics.Sample{Labels: []string{a.Subsystem, strconv.Itoa(a.From), strconv.Itoa(a.To), a.Mode}, Value: 1})
			}
			return out
		})
	reg.Collect(metrics.Family{Name: "vcored_rebalance_imbalance", Help: "Hottest minus coolest partition load (CPU demand per CPU) in the last sample.", Labels: []string{}},
		func() []metrics.Sample { return []metrics.Sample{{Labels: []string{}, Value: r.Status().Imbalance}} })
	reg.Collect(metrics.Family{Name: "vcored_rebalance_partition_load", Help: "A node's partition load (CPU demand per CPU) in the last sample.", Labels: []string{"node"}},
		func() []metrics.Sample {
			var out []metrics.Sample
			for _, p := range r.Status().Partitions {
				out = append(out, metrics.Sample{Labels: []string{strconv.Itoa(p.Node)}, Value: p.Load})
			}
			return out
		})
}

// rebalanceMover is what rebalance = "auto" moves subsystems with: core's
// own Move (core/move.go), as an operator's `vcored move` would.
func (c *Core) rebalanceMover() moveFunc {
	return func(ctx context.Context, m autoMove) (autoMoveResult, error) {
		res, err := c.Move(ctx, api.MoveRequest{Subsystem: m.Name, ToNode: int(m.To), Mode: m.Mode})
		return autoMoveResult{DowntimeMS: res.DowntimeMS, TotalMS: res.TotalMS,
			Bytes: int64(res.Bytes), PagesLeftBehind: int64(res.PagesLeftBehind)}, err
	}
}

// checkRebalance refuses a rebalance configuration this core cannot carry
// out (New calls it: nothing has started yet).
func (c *Core) checkRebalance() error {
	if c.cfg.Rebalance == config.RebalanceOff {
		return nil
	}
	if err := c.cfg.RebalancePolicy.Check(); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if c.cfg.Rebalance == config.RebalanceAuto && c.rebalanceMover() == nil {
		return fmt.Errorf("%w: %w", ErrConfig, c.cfg.RebalanceUnavailable(
			`"auto" needs moves between nodes, which this core cannot make; use "advise" to see the moves it would make`))
	}
	return nil
}

// startRebalance starts the sampler when core.toml says rebalance =
// "advise" or "auto".
func (c *Core) startRebalance(ctx context.Context, wg *sync.WaitGroup) {
	if c.cfg.Rebalance != config.RebalanceAdvise && c.cfg.Rebalance != config.RebalanceAuto {
		return
	}
	host := os.DirFS("/")
	c.rb = newRebalancer(c.cfg.Rebalance, c.cfg.RebalanceInterval, loadstat.New(host, loadstat.ProbeLayout(host)),
		c.rebalanceParts, c.rebalanceMover(), time.Now, c.log.With("part", "rebalance"))
	c.rb.cfg, c.rb.moveTimeout = c.cfg.RebalancePolicy, c.cfg.RebalanceMoveTimeout
	c.rb.registerMetrics(c.reg)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.rb.run(ctx)
	}()
}

// RebalanceStatus is GET /v1/rebalance.
func (c *Core) RebalanceStatus() api.Rebalance {
	if c.rb == nil {
		return api.Rebalance{Mode: string(config.RebalanceOff), Waiting: `rebalancing is off (core.toml: rebalance = "off")`,
			Advice: []api.RebalanceAdvice{}, Partitions: []api.RebalancePartition{}, Moves: []api.RebalanceMove{}}
	}
	return c.rb.Status()
}

// rebalanceParts lists the live leases by node, with the subsystem cgroups
// (children of each lease's cgroup) and their cpuset size and memory limit.
func (c *Core) rebalanceParts() []samplePartition {
	byNode := map[hw.Node]*samplePartition{}
	var nodes []hw.Node
	for _, le := range c.ledger.Leases() {
		if le.State != StateLive {
			continue
		}
		var subs []sampleSubsystem
		if CgroupUnder(c.cfg.CgroupParent, le.Cgroup) == nil && c.cg.Exists(le.Cgroup) {
			subs = c.partitionSubsystems(le.Cgroup)
		}
		// A vcore that does not answer yet (starting, or stuck) is left
		// out of the sample: its partition is no place to move to, and
		// whether its subsystems may move is unknown.
		if !c.askVCore(le.Socket, subs) {
			continue
		}
		p := byNode[le.Node]
		if p == nil {
			p = &samplePartition{Node: le.Node}
			byNode[le.Node] = p
			nodes = append(nodes, le.Node)
		}
		p.CPUs, p.Memory = p.CPUs.Union(le.CPUs), p.Memory+le.Memory
		p.Subsystems = append(p.Subsystems, subs...)
	}
	slices.Sort(nodes)
	out := make([]samplePartition, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, *byNode[n])
	}
	return out
}

// partitionSubsystems lists the subsystem cgroups of a partition cgroup.
func (c *Core) partitionSubsystems(cgroup string) []sampleSubsystem {
	g, err := c.cg.Load(cgroup)
	if err != nil {
		return nil
	}
	ents, _ := os.ReadDir(g.Dirs()[0])
	var subs []sampleSubsystem
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		cg := cgroup + "/" + e.Name()
		sub, err := c.cg.Load(cg)
		if err != nil {
			continue
		}
		s := sampleSubsystem{Name: path.Base(cgroup) + "/" + e.Name(), Cgroup: cg}
		if st, err := sub.Stats(); err == nil {
			s.CPUs, s.Memory = st.CPUs.Len(), st.MemoryLimit
		}
		subs = append(subs, s)
	}
	return subs
}

// vcoreAskTimeout bounds the sampler's status requests to a vcore.
const vcoreAskTimeout = time.Second

// askVCore fills in what only the vcore knows about its subsystems: the
// movable key of its file, and its pager's fault counts, attributed to each
// subsystem through the dataspaces it lists (a dataspace listed by several
// subsystems is split evenly). A vcore that does not answer within
// vcoreAskTimeout leaves them unknown (not movable, no fault rate), and
// answered is false.
func (c *Core) askVCore(socket string, subs []sampleSubsystem) (answered bool) {
	if socket == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), vcoreAskTimeout)
	defer cancel()
	cl := api.NewClient(socket)
	var status []api.Subsystem
	if err := cl.Get(ctx, "/v1/subsystems", &status); err != nil {
		c.log.Debug("rebalance: vcore did not answer; its partition is left out of this sample", "socket", socket, "err", err)
		return false
	}
	var pg api.Pager
	pagerErr := cl.Get(ctx, "/v1/pager", &pg)
	byCgroup := map[string]api.Subsystem{}
	listed := map[string]int{} // dataspace → subsystems listing it
	for _, st := range status {
		byCgroup[st.Cgroup] = st
		for _, d := range st.Dataspaces {
			listed[d]++
		}
	}
	faults := map[string]uint64{}
	for _, d := range pg.Dataspaces {
		faults[d.Dataspace] = d.Faults
	}
	for i := range subs {
		st, ok := byCgroup[subs[i].Cgroup]
		if !ok {
			continue
		}
		subs[i].Movable = st.Movable
		if pagerErr != nil {
			continue
		}
		subs[i].HaveFaults = true
		for _, d := range st.Dataspaces {
			subs[i].Faults += float64(faults[d]) / float64(listed[d])
		}
	}
	return true
}
