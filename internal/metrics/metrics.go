// Package metrics is vcored's one adapter over the Prometheus client
// library. Daemons build a Registry, register collectors that read their
// live state at scrape time, and serve Handler() at /metrics.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry collects a daemon's metrics. Each daemon has its own (no global
// state), so tests can run several daemons in one process.
type Registry struct {
	reg *prometheus.Registry
}

// New returns a registry with the Go runtime and process collectors.
func New() *Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Registry{reg: r}
}

// Handler serves the registry in the Prometheus text exposition format.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg})
}

// Kind says how a sample behaves.
type Kind int

// Sample kinds.
const (
	Gauge Kind = iota
	Counter
)

// Sample is one value of a family at scrape time.
type Sample struct {
	Labels []string // values, in the family's label order
	Value  float64
}

// Family describes one metric family whose samples are read at scrape time.
type Family struct {
	Name   string // e.g. "vcored_pager_faults_total"
	Help   string
	Kind   Kind
	Labels []string // label names
}

// Summary is a precomputed latency distribution (quantiles in seconds).
type Summary struct {
	Labels    []string
	Count     uint64
	Sum       float64             // seconds
	Quantiles map[float64]float64 // quantile → seconds
}

// Collect registers a family whose samples come from read at every scrape.
// read is called concurrently with the daemon's work: it must take its own
// locks.
func (r *Registry) Collect(f Family, read func() []Sample) {
	r.reg.MustRegister(&funcCollector{
		desc: prometheus.NewDesc(f.Name, f.Help, f.Labels, nil),
		kind: f.Kind,
		read: read,
	})
}

// CollectSummaries registers a summary family (e.g. fault latency per
// dataspace) computed by read at every scrape.
func (r *Registry) CollectSummaries(name, help string, labels []string, read func() []Summary) {
	r.reg.MustRegister(&summaryCollector{desc: prometheus.NewDesc(name, help, labels, nil), read: read})
}

type funcCollector struct {
	desc *prometheus.Desc
	kind Kind
	read func() []Sample
}

func (c *funcCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *funcCollector) Collect(ch chan<- prometheus.Metric) {
	vt := prometheus.GaugeValue
	if c.kind == Counter {
		vt = prometheus.CounterValue
	}
	for _, s := range c.read() {
		m, err := prometheus.NewConstMetric(c.desc, vt, s.Value, s.Labels...)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.desc, err)
			continue
		}
		ch <- m
	}
}

type summaryCollector struct {
	desc *prometheus.Desc
	read func() []Summary
}

func (c *summaryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *summaryCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.read() {
		m, err := prometheus.NewConstSummary(c.desc, s.Count, s.Sum, s.Quantiles, s.Labels...)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.desc, err)
			continue
		}
		ch <- m
	}
}
