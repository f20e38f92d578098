package core

import (
	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/metrics"
	"github.com/vcored/vcored/pager"
)

// dataspaceStats converts the pager's counters for the status API.
func dataspaceStats(name string, st pager.DataspaceStats) api.DataspaceStats {
	d := api.DataspaceStats{Dataspace: name, Faults: st.Faults, Pages: st.Pages, Forwarded: st.Forwarded, Errors: st.Errors}
	if st.Timed > 0 {
		n := float64(st.Timed)
		d.ReadMeanNs, d.WorkMeanNs, d.IoctlMeanNs = float64(st.ReadNS)/n, float64(st.WorkNS)/n, float64(st.IoctlNS)/n
	}
	if h := st.LatencyHistogram(); h.Count() > 0 {
		d.MedianNs, d.P99Ns, d.MeanNs = h.Quantile(0.5), h.Quantile(0.99), h.Mean()
	}
	return d
}

// registerPagerMetrics exports a pager's per-dataspace counters and latency.
func registerPagerMetrics(reg *metrics.Registry, daemon string, read func() api.Pager) {
	reg.Collect(metrics.Family{Name: "vcored_pager_faults_total", Help: "Faults resolved, pages mapped, faults forwarded and errors, per dataspace.",
		Kind: metrics.Counter, Labels: []string{"daemon", "dataspace", "kind"}},
		func() []metrics.Sample {
			var out []metrics.Sample
			for _, d := range read().Dataspaces {
				out = append(out,
					metrics.Sample{Labels: []string{daemon, d.Dataspace, "fault"}, Value: float64(d.Faults)},
					metrics.Sample{Labels: []string{daemon, d.Dataspace, "page"}, Value: float64(d.Pages)},
					metrics.Sample{Labels: []string{daemon, d.Dataspace, "forwarded"}, Value: float64(d.Forwarded)},
					metrics.Sample{Labels: []string{daemon, d.Dataspace, "error"}, Value: float64(d.Errors)})
			}
			return out
		})
	reg.CollectSummaries("vcored_pager_resolve_seconds", "Time from reading a fault to mapping its page(s), per dataspace.",
		[]string{"daemon", "dataspace"}, func() []metrics.Summary {
			var out []metrics.Summary
			for _, d := range read().Dataspaces {
				if d.Faults == 0 {
					continue
				}
				out = append(out, metrics.Summary{Labels: []string{daemon, d.Dataspace}, Count: d.Faults,
					Sum:       d.MeanNs * float64(d.Faults) / 1e9,
					Quantiles: map[float64]float64{0.5: float64(d.MedianNs) / 1e9, 0.99: float64(d.P99Ns) / 1e9}})
			}
			return out
		})
	reg.Collect(metrics.Family{Name: "vcored_pager_tracking_bytes", Help: "Memory the pager uses to track registered regions.", Labels: []string{"daemon"}},
		func() []metrics.Sample {
			return []metrics.Sample{{Labels: []string{daemon}, Value: float64(read().TrackingBytes)}}
		})
}
