package vcore

import (
	"net/http"
	"slices"
	"strings"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/metrics"
	"github.com/vcored/vcored/internal/supervise"
	"github.com/vcored/vcored/pager"
)

// httpHandler serves the status API and /metrics on the vcore socket.
func (v *VCore) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/info", func(w http.ResponseWriter, r *http.Request) { api.WriteJSON(w, v.Info()) })
	mux.HandleFunc("GET /v1/subsystems", func(w http.ResponseWriter, r *http.Request) { api.WriteJSON(w, v.Subsystems()) })
	mux.HandleFunc("GET /v1/pager", func(w http.ResponseWriter, r *http.Request) { api.WriteJSON(w, v.PagerStatus()) })
	mux.Handle("GET /metrics", v.reg.Handler())
	mux.HandleFunc("POST /v1/subsystems/{name}/checkpoint", v.handleCheckpoint)
	v.serveMoves(mux)
	v.serveExternal(mux)
	return mux
}

// Subsystems is the /v1/subsystems document, sorted by name.
func (v *VCore) Subsystems() []api.Subsystem {
	out := []api.Subsystem{}
	for _, s := range v.sortedSubs() {
		out = append(out, v.subsystemStatus(s))
	}
	return v.withMoves(out)
}

func (v *VCore) subsystemStatus(s *subsystem) api.Subsystem {
	used, limit := uint64(s.quota.Used()), uint64(s.quota.Limit())
	a := api.Subsystem{
		Name:            s.cfg.Name,
		State:           "not started",
		Pids:            []int{},
		Restarts:        s.prevRestarts,
		CPUs:            s.cpus.String(),
		Mems:            v.grant.Mems.String(),
		Cgroup:          s.cgroup,
		QuotaUsedBytes:  used,
		QuotaLimitBytes: limit,
		Adopted:         s.adopted,
		Movable:         s.cfg.Movable,
	}
	for _, d := range s.cfg.Local {
		a.Dataspaces = append(a.Dataspaces, d.Name)
		if mode := persistentOf(s, d.Name).trackingMode(); mode != "" {
			if a.Tracking == nil {
				a.Tracking = map[string]string{}
			}
			a.Tracking[d.Name] = mode
		}
	}
	a.Dataspaces = append(a.Dataspaces, s.cfg.Dataspaces...)
	if s.sup != nil {
		st := s.sup.Status()
		a.State, a.Restarts, a.LastExit = string(st.State), a.Restarts+st.Restarts, st.LastExit
		if st.Pids != nil {
			a.Pids = st.Pids
		}
	}
	if s.group != nil {
		if cs, err := s.group.Stats(); err == nil {
			a.MemoryUsageBytes, a.MemoryLimitBytes = uint64(cs.MemoryUsage), uint64(cs.MemoryLimit)
			a.CPUs, a.Mems = cs.CPUs.String(), cs.Mems.String()
		}
	}
	return a
}

// PagerStatus is the /v1/pager document.
func (v *VCore) PagerStatus() api.Pager {
	v.mu.Lock()
	mode, cpus, uffds := string(v.grant.Pager), v.grant.CPUs, len(v.uffds)
	v.mu.Unlock()
	threads := v.cfg.PagerThreads
	if threads == 0 {
		threads = max(cpus.Len(), 1)
	}
	p := api.Pager{
		Mode:            mode,
		CPUs:            cpus.String(),
		Threads:         threads,
		Placement:       string(v.placement),
		PlacementReason: v.placementWhy,
		Uffds:           uffds,
		TrackingBytes:   uint64(v.pgr.TrackingBytes()),
		TrackedPages:    uint64(v.pgr.RegisteredPages()),
		Dataspaces:      []api.DataspaceStats{},
	}
	pb, pp := v.pgr.PeakTracking()
	p.PeakTrackingBytes, p.PeakTrackedPages = uint64(pb), uint64(pp)
	stats := v.pgr.Stats()
	v.fwdMu.Lock()
	for name := range v.fwdLat {
		if _, ok := stats[name]; !ok {
			stats[name] = pager.DataspaceStats{}
		}
	}
	v.fwdMu.Unlock()
	for _, name := range sortedKeys(stats) {
		s := stats[name]
		h := s.LatencyHistogram()
		d := api.DataspaceStats{
			Dataspace:  name,
			Faults:     s.Faults,
			Pages:      s.Pages,
			Prefetched: s.Prefetched,
			Replicated: s.Replicated,
			Forwarded:  s.Forwarded,
			Errors:     s.Errors,
			MedianNs:   h.Quantile(0.5),
			P99Ns:      h.Quantile(0.99),
			MeanNs:     h.Mean(),
		}
		if s.Timed > 0 {
			n := float64(s.Timed)
			d.ReadMeanNs, d.WorkMeanNs, d.IoctlMeanNs = float64(s.ReadNS)/n, float64(s.WorkNS)/n, float64(s.IoctlNS)/n
		}
		if f := v.forwardLatency(name); f != nil {
			d.ForwardMedianNs, d.ForwardP99Ns = f.Quantile(0.5), f.Quantile(0.99)
		}
		p.Dataspaces = append(p.Dataspaces, d)
	}
	return p
}

// registerMetrics builds the Prometheus registry served at /metrics.
func (v *VCore) registerMetrics() {
	r := metrics.New()
	v.reg = r
	subs := func(val func(api.Subsystem) float64) func() []metrics.Sample {
		return func() []metrics.Sample {
			var out []metrics.Sample
			for _, s := range v.Subsystems() {
				out = append(out, metrics.Sample{Labels: []string{s.Name}, Value: val(s)})
			}
			return out
		}
	}
	r.Collect(metrics.Family{Name: "vcored_subsystem_restarts_total", Help: "Restarts of a subsystem's command (including those of earlier vcores of the partition).", Kind: metrics.Counter, Labels: []string{"subsystem"}},
		subs(func(s api.Subsystem) float64 { return float64(s.Restarts) }))
	r.Collect(metrics.Family{Name: "vcored_subsystem_memory_usage_bytes", Help: "Memory charged to the subsystem's cgroup.", Labels: []string{"subsystem"}},
		subs(func(s api.Subsystem) float64 { return float64(s.MemoryUsageBytes) }))
	r.Collect(metrics.Family{Name: "vcored_subsystem_memory_limit_bytes", Help: "Memory limit of the subsystem's cgroup (0 = none).", Labels: []string{"subsystem"}},
		subs(func(s api.Subsystem) float64 { return float64(s.MemoryLimitBytes) }))
	r.Collect(metrics.Family{Name: "vcored_subsystem_quota_used_bytes", Help: "Bytes of local dataspaces the subsystem's workers have attached.", Labels: []string{"subsystem"}},
		subs(func(s api.Subsystem) float64 { return float64(s.QuotaUsedBytes) }))
	r.Collect(metrics.Family{Name: "vcored_subsystem_quota_limit_bytes", Help: "The subsystem's RAM quota.", Labels: []string{"subsystem"}},
		subs(func(s api.Subsystem) float64 { return float64(s.QuotaLimitBytes) }))
	r.Collect(metrics.Family{Name: "vcored_subsystem_processes", Help: "Live processes in the subsystem's cgroup.", Labels: []string{"subsystem"}},
		subs(func(s api.Subsystem) float64 { return float64(len(s.Pids)) }))
	states := []supervise.State{supervise.Starting, supervise.Running, supervise.Backoff, supervise.Failed, supervise.Stopped, supervise.Exited, supervise.Detached}
	r.Collect(metrics.Family{Name: "vcored_subsystem_state", Help: "1 for the subsystem's current supervision state.", Labels: []string{"subsystem", "state"}},
		func() []metrics.Sample {
			var out []metrics.Sample
			for _, s := range v.Subsystems() {
				for _, st := range states {
					val := 0.0
					if s.State == string(st) {
						val = 1
					}
					out = append(out, metrics.Sample{Labels: []string{s.Name, string(st)}, Value: val})
				}
			}
			return out
		})
	r.Collect(metrics.Family{Name: "vcored_vcore_core_connected", Help: "1 while the session with core is up."},
		func() []metrics.Sample {
			v.mu.Lock()
			defer v.mu.Unlock()
			if v.conn != nil {
				return []metrics.Sample{{Value: 1}}
			}
			return []metrics.Sample{{Value: 0}}
		})
	r.Collect(metrics.Family{Name: "vcored_pager_uffds", Help: "Worker userfaultfds held by the pager."},
		func() []metrics.Sample {
			v.mu.Lock()
			defer v.mu.Unlock()
			return []metrics.Sample{{Value: float64(len(v.uffds))}}
		})
	pagerFam := func(name, help string, val func(api.DataspaceStats) uint64) {
		r.Collect(metrics.Family{Name: name, Help: help, Kind: metrics.Counter, Labels: []string{"dataspace"}},
			func() []metrics.Sample {
				var out []metrics.Sample
				for _, d := range v.PagerStatus().Dataspaces {
					out = append(out, metrics.Sample{Labels: []string{d.Dataspace}, Value: float64(val(d))})
				}
				return out
			})
	}
	pagerFam("vcored_pager_faults_total", "Page faults read by the vcore's pager.", func(d api.DataspaceStats) uint64 { return d.Faults })
	pagerFam("vcored_pager_pages_total", "Pages mapped by the vcore's pager (more than faults with fault-around).", func(d api.DataspaceStats) uint64 { return d.Pages })
	pagerFam("vcored_pager_prefetched_total", "Pages mapped ahead of fault streams (prefetch = \"sequential\"); counted in pages too.", func(d api.DataspaceStats) uint64 { return d.Prefetched })
	pagerFam("vcored_pager_replicated_total", "Faults of core-owned dataspaces served from this vcore's node-local replica.", func(d api.DataspaceStats) uint64 { return d.Replicated })
	pagerFam("vcored_pager_forwarded_total", "Faults forwarded to core (core-owned dataspaces).", func(d api.DataspaceStats) uint64 { return d.Forwarded })
	pagerFam("vcored_pager_errors_total", "Faults that could not be resolved.", func(d api.DataspaceStats) uint64 { return d.Errors })
	r.CollectSummaries("vcored_pager_fault_latency_seconds", "Time from reading a fault to resolving it, per dataspace.", []string{"dataspace"},
		func() []metrics.Summary {
			var out []metrics.Summary
			stats := v.pgr.Stats()
			for _, name := range sortedKeys(stats) {
				out = append(out, summary(name, stats[name].LatencyHistogram()))
			}
			return out
		})
	r.CollectSummaries("vcored_forward_latency_seconds", "Round trip of faults forwarded to core, per dataspace.", []string{"dataspace"},
		func() []metrics.Summary {
			v.fwdMu.Lock()
			names := sortedKeys(v.fwdLat)
			v.fwdMu.Unlock()
			var out []metrics.Summary
			for _, name := range names {
				if h := v.forwardLatency(name); h != nil {
					out = append(out, summary(name, h))
				}
			}
			return out
		})
}

// summary turns a nanosecond histogram into a Prometheus summary.
func summary(label string, h *hist.Histogram) metrics.Summary {
	n := h.Count()
	s := metrics.Summary{Labels: []string{label}, Count: uint64(n), Sum: h.Mean() * float64(n) / 1e9, Quantiles: map[float64]float64{}}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		s.Quantiles[q] = float64(h.Quantile(q)) / 1e9
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, strings.Compare)
	return keys
}
