package core

import (
	"net/http"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/metrics"
)

func (c *Core) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, _ *http.Request) {
		info := api.Info{Role: "core", Pid: os.Getpid(), PagerMode: string(c.mode), CPUs: c.cfg.ReservedCPUs.String(), Started: c.started}
		if d, bad := c.ledger.Degraded(); bad {
			info.Degraded = &api.Degraded{Reason: d.Reason, Since: d.Since, Pending: d.Pending}
		}
		api.WriteJSON(w, info)
	})
	mux.HandleFunc("GET /v1/partitions", func(w http.ResponseWriter, _ *http.Request) { api.WriteJSON(w, c.Partitions()) })
	mux.HandleFunc("GET /v1/vcores", func(w http.ResponseWriter, _ *http.Request) { api.WriteJSON(w, c.VCores()) })
	mux.HandleFunc("GET /v1/pager", func(w http.ResponseWriter, _ *http.Request) { api.WriteJSON(w, c.PagerStatus()) })
	mux.HandleFunc("GET /v1/rebalance", func(w http.ResponseWriter, _ *http.Request) { api.WriteJSON(w, c.RebalanceStatus()) })
	mux.Handle("GET /metrics", c.reg.Handler())
	c.serveMoves(mux)
	return mux
}

// Partitions describes every node's partition: the plan, and the lease on
// it if any. A node whose CPUs are split among several vcores shows one
// entry per lease.
func (c *Core) Partitions() []api.Partition {
	leases := c.ledger.Leases()
	c.mu.Lock()
	connected := map[string]bool{}
	for id := range c.sessions {
		connected[id] = true
	}
	c.mu.Unlock()
	var out []api.Partition
	for _, p := range c.plan.Partitions {
		var mine []Lease
		for _, le := range leases {
			if le.Node == p.Node {
				mine = append(mine, le)
			}
		}
		if len(mine) == 0 {
			out = append(out, api.Partition{Node: int(p.Node), CPUs: p.CPUs.String(), Mems: strconv.Itoa(int(p.Node)),
				MemoryBytes: uint64(p.Memory), CPULess: p.MemoryOnly(), State: "free"})
			continue
		}
		for _, le := range mine {
			granted := le.GrantedAt
			ap := api.Partition{Node: int(p.Node), CPUs: le.CPUs.String(), Mems: le.Mems.String(), MemoryBytes: uint64(le.Memory),
				CPULess: p.MemoryOnly(), State: le.State, Cgroup: le.Cgroup, GrantedAt: &granted,
				Holder: &api.Holder{ID: le.Holder, Pid: le.HolderPid, Socket: le.Socket}, Pending: le.Pending}
			if !connected[le.Holder] {
				ap.Running = c.running(le.Cgroup)
			}
			if !le.OrphanedAt.IsZero() {
				orphaned := le.OrphanedAt
				ap.OrphanedAt = &orphaned
				grace := c.cfg.OrphanGrace
				if le.State == StateUnconfirmed {
					grace = c.cfg.RejoinGrace
				}
				ap.GraceLeft = max(0, grace-time.Since(le.OrphanedAt)).Round(100 * time.Millisecond).String()
			}
			out = append(out, ap)
		}
	}
	return out
}

// running lists the processes left in a partition cgroup, by subsystem
// cgroup (the partition's children); nothing for a cgroup outside
// cgroup_parent or one that is gone.
func (c *Core) running(cgroup string) []api.Running {
	if CgroupUnder(c.cfg.CgroupParent, cgroup) != nil || !c.cg.Exists(cgroup) {
		return nil
	}
	g, err := c.cg.Load(cgroup)
	if err != nil {
		return nil
	}
	all, err := g.Procs()
	if err != nil || len(all) == 0 {
		return nil
	}
	var out []api.Running
	inChild := map[int]bool{}
	ents, _ := os.ReadDir(g.Dirs()[0])
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		sub, err := c.cg.Load(cgroup + "/" + e.Name())
		if err != nil {
			continue
		}
		pids, err := sub.Procs()
		if err != nil || len(pids) == 0 {
			continue
		}
		for _, p := range pids {
			inChild[p] = true
		}
		out = append(out, api.Running{Subsystem: e.Name(), Pids: pids})
	}
	var direct []int
	for _, p := range all {
		if !inChild[p] {
			direct = append(direct, p)
		}
	}
	if len(direct) > 0 {
		out = append(out, api.Running{Subsystem: "", Pids: direct})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Subsystem < out[j].Subsystem })
	return out
}

// VCores describes the vcores core knows: connected sessions, and the
// holders of orphaned or unconfirmed leases.
func (c *Core) VCores() []api.VCore {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []api.VCore
	seen := map[string]bool{}
	for _, s := range c.sessions {
		seen[s.id] = true
		out = append(out, api.VCore{ID: s.id, Node: int(s.node), Pid: s.pid, Socket: s.lease.Socket, CPUs: s.lease.CPUs.String(),
			Connected: true, Since: s.since, Uffds: len(c.held[s.id]), Forwarded: s.forwarded, ServedByCore: c.mode == "central"})
	}
	for _, le := range c.ledger.Leases() {
		if seen[le.Holder] {
			continue
		}
		out = append(out, api.VCore{ID: le.Holder, Node: int(le.Node), Pid: le.HolderPid, Socket: le.Socket, CPUs: le.CPUs.String(),
			Connected: false, Since: le.OrphanedAt, Uffds: len(c.held[le.Holder]), ServedByCore: true})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// PagerStatus describes core's pager.
func (c *Core) PagerStatus() api.Pager {
	pagerCPU, _ := c.cfg.ReservedCPUs.Min()
	p := api.Pager{Mode: string(c.mode), CPUs: strconv.Itoa(int(pagerCPU)), Threads: 1,
		Uffds: len(c.pg.Uffds()), TrackingBytes: uint64(c.pg.TrackingBytes()), TrackedPages: uint64(c.pg.RegisteredPages())}
	pb, pp := c.pg.PeakTracking()
	p.PeakTrackingBytes, p.PeakTrackedPages = uint64(pb), uint64(pp)
	for name, st := range c.pg.Stats() {
		p.Dataspaces = append(p.Dataspaces, dataspaceStats(name, st))
	}
	sort.Slice(p.Dataspaces, func(i, j int) bool { return p.Dataspaces[i].Dataspace < p.Dataspaces[j].Dataspace })
	return p
}

func (c *Core) registerMetrics() {
	c.reg.Collect(metrics.Family{Name: "vcored_core_leases", Help: "Partition leases by state.", Labels: []string{"state"}},
		func() []metrics.Sample {
			n := map[string]float64{StateLive: 0, StateOrphaned: 0, StateUnconfirmed: 0}
			for _, le := range c.ledger.Leases() {
				n[le.State]++
			}
			var out []metrics.Sample
			for st, v := range n {
				out = append(out, metrics.Sample{Labels: []string{st}, Value: v})
			}
			return out
		})
	c.reg.Collect(metrics.Family{Name: "vcored_core_events_total", Help: "Claims granted and refused, partitions reclaimed, faults forwarded to core.", Kind: metrics.Counter, Labels: []string{"event"}},
		func() []metrics.Sample {
			c.mu.Lock()
			defer c.mu.Unlock()
			k := c.counters
			return []metrics.Sample{
				{Labels: []string{"claim"}, Value: float64(k.claims)},
				{Labels: []string{"claim_refused"}, Value: float64(k.refused)},
				{Labels: []string{"reclaim"}, Value: float64(k.reclaimed)},
				{Labels: []string{"forwarded_fault"}, Value: float64(k.forwarded)},
				{Labels: []string{"forwarded_fault_error"}, Value: float64(k.forwardErrors)},
			}
		})
	registerPagerMetrics(c.reg, "core", func() api.Pager { return c.PagerStatus() })
}
