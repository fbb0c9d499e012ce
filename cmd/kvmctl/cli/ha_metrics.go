package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/ha"
)

// haMetrics are `ha watch --metrics`'s Prometheus metrics: hosts per HA state, health and
// activity checks with their latency, fences by result, guard refusals.
type haMetrics struct {
	hosts          *prometheus.GaugeVec
	health         *prometheus.CounterVec
	healthSeconds  prometheus.Histogram
	checks         *prometheus.CounterVec
	checkSeconds   prometheus.Histogram
	fences         *prometheus.CounterVec
	guardRefusals  *prometheus.CounterVec
	watchStartTime prometheus.Gauge
}

var haStates = []ha.State{ha.Disabled, ha.Ineligible, ha.Available, ha.Suspect, ha.Checking, ha.Degraded, ha.Fencing, ha.Fenced, ha.Recovering, ha.Recovered}

func newHAMetrics(reg prometheus.Registerer) *haMetrics {
	m := &haMetrics{
		hosts: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "kvmctl_ha_hosts", Help: "Watched hosts per HA state."}, []string{"state"}),
		health: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvmctl_ha_health_checks_total",
			Help: "Health checks of agents, by result (ok, failed)."}, []string{"result"}),
		healthSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kvmctl_ha_health_check_seconds",
			Help: "Latency of health checks.", Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5}}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvmctl_ha_activity_checks_total",
			Help: "Activity checks of suspect hosts by their neighbours, by verdict."}, []string{"verdict"}),
		checkSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kvmctl_ha_activity_check_seconds",
			Help: "Latency of activity checks (every neighbour's reads).", Buckets: []float64{.01, .05, .1, .25, .5, 1, 2.5, 5}}),
		fences: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvmctl_ha_fences_total",
			Help: "Fences HA ran, by result (fenced, failed, refused, blinked)."}, []string{"result"}),
		guardRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kvmctl_ha_guard_refusals_total",
			Help: "Fences a guard stopped, by guard."}, []string{"guard"}),
		watchStartTime: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kvmctl_ha_watch_start_time_seconds", Help: "When this ha watch started (Unix time)."}),
	}
	reg.MustRegister(m.hosts, m.health, m.healthSeconds, m.checks, m.checkSeconds, m.fences, m.guardRefusals, m.watchStartTime)
	for _, s := range haStates {
		m.hosts.WithLabelValues(string(s))
	}
	for _, r := range []string{"ok", "failed"} {
		m.health.WithLabelValues(r)
	}
	for _, v := range []ha.Verdict{ha.Active, ha.Inactive, ha.Unknown, ha.Baseline} {
		m.checks.WithLabelValues(string(v))
	}
	for _, r := range []string{"fenced", "failed", "refused", "blinked"} {
		m.fences.WithLabelValues(r)
	}
	return m
}

func (m *haMetrics) HealthCheck(ok bool, took time.Duration) {
	m.health.WithLabelValues(map[bool]string{true: "ok", false: "failed"}[ok]).Inc()
	m.healthSeconds.Observe(took.Seconds())
}

func (m *haMetrics) ActivityCheck(v ha.Verdict, took time.Duration) {
	m.checks.WithLabelValues(string(v)).Inc()
	m.checkSeconds.Observe(took.Seconds())
}

func (m *haMetrics) Fence(result string)       { m.fences.WithLabelValues(result).Inc() }
func (m *haMetrics) GuardRefusal(guard string) { m.guardRefusals.WithLabelValues(guard).Inc() }

// observe sets the hosts per state from a snapshot.
func (m *haMetrics) observe(s ha.Snapshot) {
	n := map[string]int{}
	for _, h := range s.Hosts {
		n[h.State]++
	}
	for _, st := range haStates {
		m.hosts.WithLabelValues(string(st)).Set(float64(n[string(st)]))
	}
	m.watchStartTime.Set(float64(s.Started.Unix()))
}

// serveMetrics serves the monitor's metrics on addr until stop is called; a bad or busy address
// is refused before the watch starts.
func serveMetrics(addr string, mon *ha.Monitor) (stop func(), err error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, errs.Refusedf("--metrics %q: want host:port, e.g. 127.0.0.1:9451", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, errs.Refusedf("--metrics %s: %v", addr, err)
	}
	reg := prometheus.NewRegistry()
	m := newHAMetrics(reg)
	mon.Metrics = m
	prev := mon.Observe
	mon.Observe = func(s ha.Snapshot) {
		m.observe(s)
		if prev != nil {
			prev(s)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Printf("kvmctl: metrics server: %v\n", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}
