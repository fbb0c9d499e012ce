package ha

import (
	"context"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// HostView is one host as the watch sees it now.
type HostView struct {
	Host    string    `json:"host"`
	Cluster string    `json:"cluster"`
	Enabled bool      `json:"enabled"`
	State   string    `json:"state"`
	Since   time.Time `json:"since"`
	Reason  string    `json:"reason,omitempty"`
	// Healthy says the last health answer is good and recent; LastHealth is when it came.
	Healthy     bool      `json:"healthy"`
	LastHealth  time.Time `json:"last_health,omitzero"`
	HealthError string    `json:"health_error,omitempty"`
	// HeartbeatOK is when the host's agent last wrote its heartbeat (its own clock).
	HeartbeatOK    time.Time          `json:"heartbeat_ok,omitzero"`
	HeartbeatSeq   uint64             `json:"heartbeat_seq,omitempty"`
	HeartbeatError string             `json:"heartbeat_error,omitempty"`
	Verdict        string             `json:"verdict,omitempty"`
	Streak         int                `json:"streak,omitempty"`
	Evidence       string             `json:"evidence,omitempty"`
	Guard          string             `json:"guard,omitempty"`
	Action         string             `json:"action"`
	Recovery       []state.VMRecovery `json:"recovery,omitempty"`
}

// Snapshot is every watched host, in the inventory's order.
type Snapshot struct {
	Time    time.Time  `json:"time"`
	Started time.Time  `json:"started"`
	Hosts   []HostView `json:"hosts"`
}

func (m *Monitor) snapshot() Snapshot {
	s := Snapshot{Time: m.clock().Now().UTC(), Started: m.started.UTC()}
	for _, name := range m.fleet.order {
		rt := m.hosts[name]
		if rt == nil {
			continue
		}
		v := View(rt.rec, m.fleet.hosts[name].Cluster, m.fleet.enabled[name], m.fleet.action[name])
		v.Healthy, v.HealthError = m.healthy(rt), rt.lastErr
		s.Hosts = append(s.Hosts, v)
	}
	return s
}

// View is a host's view from its stored record (`ha status` in another shell).
func View(rec state.HAHost, cluster string, enabled bool, action string) HostView {
	return HostView{Host: rec.Host, Cluster: cluster, Enabled: enabled, State: rec.State, Since: rec.Since, Reason: rec.Reason,
		LastHealth: rec.LastHealth, HeartbeatOK: rec.HeartbeatOK, HeartbeatSeq: rec.HeartbeatSeq, HeartbeatError: rec.HeartbeatErr,
		Verdict: rec.Verdict, Streak: rec.Streak, Evidence: rec.Evidence, Guard: rec.Guard, Action: action, Recovery: rec.Recovery}
}

// reconcile settles what a killed watch left before anything new is done: fence intents without
// a result are settled by the fence path (the BMC's power status), a host left in Fencing whose
// fence did confirm is recorded fenced, and suspicions start over from a new baseline.
func (m *Monitor) reconcile(ctx context.Context) error {
	if _, err := m.Fence.Reconcile(ctx, ""); err != nil {
		return err
	}
	var f *fleet
	if err := m.Store.View(func(tx state.Tx) (err error) { f, err = loadFleet(tx); return err }); err != nil {
		return err
	}
	m.fleet, m.cfg = f, f.cfg
	m.to = m.Timeouts.withDefaults(f.cfg)
	now := m.clock().Now()
	for _, name := range f.order {
		if !f.watched[name] {
			continue
		}
		rec := f.records[name]
		rec.Host = name
		if rec.State == "" {
			rec.State = string(Disabled)
		}
		rec.Streak = 0 // the reads to compare with are gone with the old watch
		rt := &hostRT{rec: rec, lastOK: now, samples: map[string]sample{}, told: map[string]bool{}}
		m.hosts[name] = rt
		switch State(rec.State) {
		case Fencing:
			var audit []events.Event
			if err := m.Store.View(func(tx state.Tx) (err error) { audit, err = fence.Audit(tx, name, rec.Since); return err }); err != nil {
				return err
			}
			for _, e := range audit {
				done := (e.Type == events.FenceResult && e.Fenced) || (e.Type == events.FenceReconciled && e.PowerAfter == string(fence.PowerOff))
				if done && (e.Action == "off" || e.Action == "reboot") {
					rt.rec.Action = e.Action
					m.fenced(ctx, rt, "fenced before the watch restarted (audit "+e.AuditID+"): "+e.Message, e.AuditID)
					break
				}
			}
		case Recovering:
			rt.nextRecover = now
		}
	}
	return nil
}
