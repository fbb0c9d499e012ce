package orchestrate

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// RollingRequest is what the operator asked for.
type RollingRequest struct {
	inventory.Scope
	Forced         bool          `json:"forced"`
	Timeout        time.Duration `json:"timeout"`
	Payload        string        `json:"payload,omitempty"`
	DryRun         bool          `json:"dry_run,omitempty"`
	MaxUnavailable int           `json:"max_unavailable"`
}

// Run is a rolling-maintenance run as the state file keeps it: enough to show its progress
// from another shell, and to resume it after kvmctl was killed. Its journal stream has the run's
// id.
type Run struct {
	ID             string          `json:"id"`
	State          events.RunState `json:"state"`
	Request        RollingRequest  `json:"request"`
	PingInterval   time.Duration   `json:"ping_interval"`
	WaitTimeout    time.Duration   `json:"wait_timeout"`
	CreatedAt      time.Time       `json:"created_at"`
	EndedAt        time.Time       `json:"ended_at,omitzero"`
	Owner          holds.Owner     `json:"owner"`
	PreFlightDone  bool            `json:"preflight_done"`
	AbortRequested bool            `json:"abort_requested,omitempty"`
	// NeedsRestore: the run ended but could not take every host out of maintenance or
	// re-enable every cluster; `rolling abort` retries.
	NeedsRestore bool          `json:"needs_restore,omitempty"`
	Details      string        `json:"details,omitempty"`
	Clusters     []*RunCluster `json:"clusters"`
	Hosts        []*RunHost    `json:"hosts"`
	// Unknown keeps fields a newer kvmctl wrote.
	Unknown state.Unknown `json:"-"`
}

// UnmarshalJSON reads a run, keeping the fields this version does not know.
func (r *Run) UnmarshalJSON(b []byte) (err error) {
	type plain Run
	r.Unknown, err = state.UnmarshalKeeping(b, (*plain)(r))
	return err
}

// MarshalJSON writes a run with the fields it kept.
func (r Run) MarshalJSON() ([]byte, error) {
	type plain Run
	return state.MarshalKeeping(plain(r), r.Unknown)
}

// RunCluster is one cluster of a run.
type RunCluster struct {
	Name       string `json:"name"`
	PriorState string `json:"prior_state,omitempty"`
	// Disabled: the run disabled it and has not restored it yet.
	Disabled bool `json:"disabled"`
	Done     bool `json:"done"`
}

// RunHost is one host of a run and how far it got.
type RunHost struct {
	Name      string                        `json:"name"`
	Cluster   string                        `json:"cluster"`
	Step      events.Step                   `json:"step"`
	Reason    string                        `json:"reason,omitempty"`
	InMaint   bool                          `json:"in_maintenance_by_run"`
	StartedAt time.Time                     `json:"started_at,omitzero"`
	EndedAt   time.Time                     `json:"ended_at,omitzero"`
	Stages    map[events.Stage]*StageRecord `json:"stages"`
	VMsMoved  int                           `json:"vms_moved"`
}

// StageRecord is one stage of one host in a run.
type StageRecord struct {
	ExecID    string            `json:"exec_id,omitempty"`
	State     events.StageState `json:"state"`
	Outcome   events.Outcome    `json:"outcome,omitempty"`
	ExitCode  int               `json:"exit_code"`
	Output    string            `json:"output,omitempty"`
	Note      string            `json:"note,omitempty"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	EndedAt   time.Time         `json:"ended_at,omitzero"`
}

// At reports whether h has finished step s (or a later one), skipped hosts excepted.
func (h *RunHost) At(s events.Step) bool {
	return h.Step != events.StepSkipped && h.Step.Order() >= s.Order()
}

// Active reports whether h still takes part in the run.
func (h *RunHost) Active() bool { return h.Step != events.StepSkipped && h.Step != events.StepDone }

// Host returns the run's host called name.
func (r *Run) Host(name string) *RunHost {
	for _, h := range r.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// ref is the run as a holder of its clusters.
func (r *Run) ref() holds.Ref { return holds.Ref{Kind: holds.Rolling, ID: r.ID} }

// RunResult is the final result of a run, CloudStack's startRollingMaintenance answer.
type RunResult struct {
	RunID        string          `json:"run_id"`
	State        events.RunState `json:"state"`
	Success      bool            `json:"success"`
	Details      string          `json:"details"`
	HostsUpdated []HostUpdated   `json:"hosts_updated"`
	HostsSkipped []HostSkipped   `json:"hosts_skipped"`
}

// HostUpdated is a host that went through maintenance.
type HostUpdated struct {
	Host      string    `json:"host"`
	Cluster   string    `json:"cluster"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at"`
	Output    string    `json:"output"`
}

// HostSkipped is a host the run left alone, and why.
type HostSkipped struct {
	Host    string `json:"host"`
	Cluster string `json:"cluster"`
	Reason  string `json:"reason"`
}

// Result summarises r.
func (r *Run) Result() RunResult {
	res := RunResult{RunID: r.ID, State: r.State, Success: r.State == events.RunSucceeded, Details: r.Details,
		HostsUpdated: []HostUpdated{}, HostsSkipped: []HostSkipped{}}
	for _, h := range r.Hosts {
		switch h.Step {
		case events.StepDone:
			res.HostsUpdated = append(res.HostsUpdated, HostUpdated{Host: h.Name, Cluster: h.Cluster, StartedAt: h.StartedAt, EndedAt: h.EndedAt, Output: h.output()})
		case events.StepSkipped:
			res.HostsSkipped = append(res.HostsSkipped, HostSkipped{Host: h.Name, Cluster: h.Cluster, Reason: h.Reason})
		}
	}
	return res
}

func (h *RunHost) output() string {
	var b strings.Builder
	for _, s := range events.Stages() {
		if rec := h.Stages[s]; rec != nil && rec.Output != "" {
			fmt.Fprintf(&b, "%s: %s", s, rec.Output)
			if !strings.HasSuffix(rec.Output, "\n") {
				b.WriteByte('\n')
			}
		}
	}
	return b.String()
}

// newID returns a sortable, unique id: a letter, the time, then randomness.
func newID(prefix string, now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return prefix + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// LoadRun reads run id.
func LoadRun(tx state.Tx, id string) (*Run, error) {
	var r Run
	if err := state.GetJSON(tx, state.BucketRuns, id, &r); err != nil {
		return nil, err
	}
	for _, h := range r.Hosts {
		if h.Stages == nil {
			h.Stages = map[events.Stage]*StageRecord{}
		}
	}
	return &r, nil
}

// ListRuns reads every run, newest first. A record that cannot be read is skipped rather than
// hiding every other run.
func ListRuns(tx state.Tx) ([]*Run, error) {
	var runs []*Run
	err := tx.ForEach(state.BucketRuns, func(k string, _ []byte) error {
		if r, err := LoadRun(tx, k); err == nil {
			runs = append(runs, r)
		}
		return nil
	})
	sort.Slice(runs, func(i, j int) bool { return runs[i].CreatedAt.After(runs[j].CreatedAt) })
	return runs, err
}

// Journal reads the events of run id in order.
func Journal(tx state.Tx, id string) ([]events.Event, error) { return journal.Events(tx, id) }

// RollingWork reports whether a rolling run works on host h now (its script checked, through
// its maintenance and stages, until it is done or skipped), and which run: HA must not take a
// host rebooted by its Maintenance stage for a crashed one. A run holds its clusters; a host of
// such a cluster that the run has not reached, or has finished, is not worked on.
func RollingWork(tx state.Tx, h state.Host) (string, bool, error) {
	hold, ok, err := holds.Get(tx, holds.Cluster(h.Cluster))
	if err != nil || !ok || hold.Kind != holds.Rolling {
		return "", false, err
	}
	run, err := LoadRun(tx, hold.ID)
	if err != nil {
		return hold.ID, true, nil // a run whose record is missing or unreadable: assume the worst
	}
	for _, rh := range run.Hosts {
		if rh.Name != h.Name {
			continue
		}
		switch rh.Step {
		case events.StepPending, events.StepPreFlightDone, events.StepDone, events.StepSkipped, events.StepRestored:
			return run.ID, false, nil
		}
		return run.ID, true, nil
	}
	return run.ID, false, nil
}
