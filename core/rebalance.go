package core

import (
	"context"
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

// rebalancer samples every live partition's load each interval, asks
// policy.Rebalance for the move it would make and keeps the answer for
// /v1/rebalance, the log and the metrics. In advise mode nothing is moved:
// the policy's state never has a move in flight.
type rebalancer struct {
	mode     config.Rebalance
	interval time.Duration
	cfg      policy.RebalanceConfig
	now      func() time.Time
	load     loadReader
	parts    func() []samplePartition
	log      *slog.Logger

	mu         sync.Mutex // held for a sample's reads of cgroup and proc files (the vcores are asked before)
	prev       map[string]loadstat.CPUSample
	prevFaults map[string]faultSample
	state      policy.RebalanceState
	status     api.Rebalance
	advised    map[string]time.Time // advice key → first advised
}

func newRebalancer(mode config.Rebalance, interval time.Duration, load loadReader, parts func() []samplePartition,
	now func() time.Time, log *slog.Logger) *rebalancer {
	return &rebalancer{
		mode: mode, interval: interval, cfg: policy.DefaultRebalanceConfig(), now: now, load: load, parts: parts, log: log,
		prev:       map[string]loadstat.CPUSample{},
		prevFaults: map[string]faultSample{},
		advised:    map[string]time.Time{},
		status:     api.Rebalance{Mode: string(mode), Interval: interval.String(), Advice: []api.RebalanceAdvice{}, Partitions: []api.RebalancePartition{}},
	}
}

func adviceKey(a policy.Advice) string {
	return a.Subsystem + " " + strconv.Itoa(int(a.From)) + ">" + strconv.Itoa(int(a.To)) + " " + a.Mode
}

// faultSample is a subsystem's cumulative fault count at one moment.
type faultSample struct {
	at     time.Time
	faults float64
}

// sample takes one sample and updates the advice.
func (r *rebalancer) sample() {
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
			as := api.RebalanceSubsystem{Name: s.Name, Cgroup: s.Cgroup, CPUs: s.CPUs, MemoryBytes: uint64(s.Memory), Movable: s.Movable}
			sl := policy.SubsystemLoad{Name: s.Name, CPUs: s.CPUs, Memory: s.Memory, ConfiguredNode: p.Node, Movable: s.Movable}
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
	r.state = next // advise: never Start, so no move is ever in flight
	st.Imbalance, st.Waiting = d.Imbalance, d.Waiting
	keep := map[string]time.Time{}
	for _, a := range d.Advice {
		k := adviceKey(a)
		since, ok := r.advised[k]
		if !ok {
			since = at
			r.log.Info("rebalance advice (advise mode: nothing is moved)", "subsystem", a.Subsystem, "from", a.From, "to", a.To,
				"mode", a.Mode, "reason", a.Reason)
		}
		keep[k] = since
		st.Advice = append(st.Advice, api.RebalanceAdvice{Subsystem: a.Subsystem, From: int(a.From), To: int(a.To), Mode: a.Mode,
			ImbalanceBefore: a.Before, ImbalanceAfter: a.After, Reason: a.Reason, Since: since})
	}
	if len(r.advised) > 0 && len(keep) == 0 {
		r.log.Info("rebalance advice withdrawn", "why", d.Waiting)
	}
	r.advised = keep
	r.status = st
}

// Status returns the last sample and advice.
func (r *rebalancer) Status() api.Rebalance {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status
	st.Advice = slices.Clone(st.Advice)
	st.Partitions = slices.Clone(st.Partitions)
	return st
}

// run samples every interval until ctx ends.
func (r *rebalancer) run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.sample()
		}
	}
}

func (r *rebalancer) registerMetrics(reg *metrics.Registry) {
	reg.Collect(metrics.Family{Name: "vcored_rebalance_advice", Help: "The move core would make (rebalance = \"advise\"): 1 per advised move.",
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

// startRebalance starts the sampler when core.toml says rebalance =
// "advise" (config refuses "auto" until moves exist).
func (c *Core) startRebalance(ctx context.Context, wg *sync.WaitGroup) {
	if c.cfg.Rebalance != config.RebalanceAdvise {
		return
	}
	host := os.DirFS("/")
	c.rb = newRebalancer(c.cfg.Rebalance, c.cfg.RebalanceInterval, loadstat.New(host, loadstat.ProbeLayout(host)),
		c.rebalanceParts, time.Now, c.log.With("part", "rebalance"))
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
			Advice: []api.RebalanceAdvice{}, Partitions: []api.RebalancePartition{}}
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
		p := byNode[le.Node]
		if p == nil {
			p = &samplePartition{Node: le.Node}
			byNode[le.Node] = p
			nodes = append(nodes, le.Node)
		}
		p.CPUs, p.Memory = p.CPUs.Union(le.CPUs), p.Memory+le.Memory
		if CgroupUnder(c.cfg.CgroupParent, le.Cgroup) != nil || !c.cg.Exists(le.Cgroup) {
			continue
		}
		g, err := c.cg.Load(le.Cgroup)
		if err != nil {
			continue
		}
		ents, _ := os.ReadDir(g.Dirs()[0])
		var subs []sampleSubsystem
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			cg := le.Cgroup + "/" + e.Name()
			sub, err := c.cg.Load(cg)
			if err != nil {
				continue
			}
			s := sampleSubsystem{Name: path.Base(le.Cgroup) + "/" + e.Name(), Cgroup: cg}
			if st, err := sub.Stats(); err == nil {
				s.CPUs, s.Memory = st.CPUs.Len(), st.MemoryLimit
			}
			subs = append(subs, s)
		}
		c.askVCore(le.Socket, subs)
		p.Subsystems = append(p.Subsystems, subs...)
	}
	slices.Sort(nodes)
	out := make([]samplePartition, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, *byNode[n])
	}
	return out
}

// vcoreAskTimeout bounds the sampler's status requests to a vcore.
const vcoreAskTimeout = time.Second

// askVCore fills in what only the vcore knows about its subsystems: the
// movable key of its file, and its pager's fault counts, attributed to each
// subsystem through the dataspaces it lists (a dataspace listed by several
// subsystems is split evenly). A vcore that does not answer within
// vcoreAskTimeout leaves them unknown (not movable, no fault rate).
func (c *Core) askVCore(socket string, subs []sampleSubsystem) {
	if socket == "" || len(subs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), vcoreAskTimeout)
	defer cancel()
	cl := api.NewClient(socket)
	var status []api.Subsystem
	if err := cl.Get(ctx, "/v1/subsystems", &status); err != nil {
		c.log.Debug("rebalance: vcore did not say which subsystems are movable", "socket", socket, "err", err)
		return
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
}
