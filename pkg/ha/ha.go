// Package ha is host HA (seed 002): `kvmctl ha watch` checks every HA host's health every
// second; a host that stops answering becomes Suspect, and up to two healthy neighbours of its
// cluster read its heartbeat and its VMs' disks on the shared storage; only when every neighbour
// that answered read every file and nothing advanced, several times in a row, and every guard
// allows it, is the host fenced through its BMC, and its VMs started on other hosts of its
// cluster. A host that still writes is alive whatever its network says: it is Degraded, never
// fenced.
//
// The monitor is one loop on an injected clock; every transition and decision is written to the
// host's journal stream (ha-HOST) and its record before it is acted on, so a killed watch
// resumes without doing anything twice.
package ha

import (
	"context"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// State is a host's HA state; the names are CloudStack's.
type State string

// HA states (DESIGN.md "HA and fencing").
const (
	Disabled   State = "Disabled"
	Ineligible State = "Ineligible"
	Available  State = "Available"
	Suspect    State = "Suspect"
	Checking   State = "Checking"
	Degraded   State = "Degraded"
	Fencing    State = "Fencing"
	Fenced     State = "Fenced"
	Recovering State = "Recovering"
	Recovered  State = "Recovered"
)

// Verdict is what one activity check concluded.
type Verdict string

// Activity verdicts. Baseline is the first check of a suspect host: nothing to compare with yet.
const (
	Active   Verdict = "ACTIVE"
	Inactive Verdict = "INACTIVE"
	Unknown  Verdict = "UNKNOWN"
	Baseline Verdict = "BASELINE"
)

// Guards that stop a fence.
const (
	GuardStartup = "startup-grace"
	GuardStorm   = "storm"
	GuardCap     = "rate-cap"
	GuardQuiet   = "quiet-time"
	GuardHeld    = "held"
)

// Agents is how the monitor reaches agents: each call bounded by ctx.
type Agents interface {
	Health(ctx context.Context, h state.Host) (api.HealthReport, error)
	ActivityCheck(ctx context.Context, checker state.Host, req api.ActivityCheckRequest) (api.ActivityCheckResult, error)
	Status(ctx context.Context, h state.Host) (api.Status, error)
	VMXML(ctx context.Context, h state.Host, name string) (string, error)
	DefineAndStartVM(ctx context.Context, h state.Host, xml string) error
	// RemoveVM stops (if it runs) and undefines a VM on h.
	RemoveVM(ctx context.Context, h state.Host, name string) error
}

// Fencer is the fence path (*fence.Service): every power action HA takes goes through it.
type Fencer interface {
	Do(ctx context.Context, req fence.Request) (fence.Result, error)
	Reconcile(ctx context.Context, host string) ([]events.Event, error)
	Refuse(req fence.Request, why error) (string, error)
}

// Notifier sends HA's notices (*notify.Notifier over the state file's channels).
type Notifier interface {
	Notify(ctx context.Context, n notify.Notice) error
}

// Restarter restarts a Degraded host's agent over SSH (the soft step); nil for none.
type Restarter interface {
	RestartAgent(ctx context.Context, h state.Host) error
}

// Config is the monitor's settings (kvm.ha.*), read at every tick so that `config set` takes
// effect without a restart.
type Config struct {
	HealthInterval      time.Duration
	HealthTimeout       time.Duration
	CheckInterval       time.Duration
	Neighbours          int
	MaxAttempts         int
	RestartEvery        time.Duration
	StartupGrace        time.Duration
	StormRatio          float64
	QuietTime           time.Duration
	RecoverWithoutFence bool
	RecoverParallel     int
	SSHToAgent          bool
	CPUFactor           float64
	MemFactor           float64
}

// Timeouts of the monitor's calls; a field left zero takes its default.
type Timeouts struct {
	// Health bounds one health call (default: the health interval, at least 1 s).
	Health time.Duration
	// Activity bounds one neighbour's activity check, its reads included (default 5 s).
	Activity time.Duration
	// Status bounds a status call of a recovery (default 10 s); Start one VM start (default 60 s).
	Status time.Duration
	Start  time.Duration
	// Fence bounds one fence (default 5 min: the BMC's retries and the power confirmation).
	Fence time.Duration
	// Restart bounds an SSH restart of an agent (default 2 min).
	Restart time.Duration
	// Notify bounds sending one notice (default 30 s).
	Notify time.Duration
}

func (t Timeouts) withDefaults(c Config) Timeouts {
	if t.Health <= 0 {
		t.Health = max(c.HealthInterval, time.Second)
	}
	if t.Activity <= 0 {
		t.Activity = 5 * time.Second
	}
	if t.Status <= 0 {
		t.Status = 10 * time.Second
	}
	if t.Start <= 0 {
		t.Start = time.Minute
	}
	if t.Fence <= 0 {
		t.Fence = 5 * time.Minute
	}
	if t.Restart <= 0 {
		t.Restart = 2 * time.Minute
	}
	if t.Notify <= 0 {
		t.Notify = 30 * time.Second
	}
	return t
}

// StreamID is the journal stream of host's HA life.
func StreamID(host string) string { return "ha-" + host }
