package orchestrate

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Run states.
const (
	RunRunning   = "running"
	RunSucceeded = "succeeded"
	RunFailed    = "failed"
	RunAborted   = "aborted"
)

// Host steps of a run, in the order a host goes through them. A host's Step is the last one it
// finished, so a resumed run knows what is left.
const (
	StepPending   = "pending"
	StepPreFlight = "preflight_done"
	StepChecked   = "maintenance_script_checked"
	StepPreMaint  = "premaintenance_done"
	StepPrepared  = "prepare_for_maintenance"
	StepInMaint   = "in_maintenance"
	StepMaintDone = "maintenance_done"
	StepCancelled = "maintenance_cancelled"
	StepDone      = "done"
	StepSkipped   = "skipped"
)

var stepOrder = map[string]int{StepPending: 0, StepPreFlight: 1, StepChecked: 2, StepPreMaint: 3, StepPrepared: 4,
	StepInMaint: 5, StepMaintDone: 6, StepCancelled: 7, StepDone: 8, StepSkipped: 9}

// RollingRequest is what the operator asked for.
type RollingRequest struct {
	Zones          []string      `json:"zones,omitempty"`
	Pods           []string      `json:"pods,omitempty"`
	Clusters       []string      `json:"clusters,omitempty"`
	Hosts          []string      `json:"hosts,omitempty"`
	Forced         bool          `json:"forced"`
	Timeout        time.Duration `json:"timeout"`
	Payload        string        `json:"payload,omitempty"`
	DryRun         bool          `json:"dry_run,omitempty"`
	MaxUnavailable int           `json:"max_unavailable"`
}

// Run is a rolling-maintenance run as the state file keeps it: enough to show its progress
// from another shell, and to resume it after kvmctl was killed.
type Run struct {
	ID             string         `json:"id"`
	State          string         `json:"state"`
	Request        RollingRequest `json:"request"`
	PingInterval   time.Duration  `json:"ping_interval"`
	WaitTimeout    time.Duration  `json:"wait_timeout"`
	CreatedAt      time.Time      `json:"created_at"`
	EndedAt        time.Time      `json:"ended_at,omitzero"`
	Owner          Owner          `json:"owner"`
	PreFlightDone  bool           `json:"preflight_done"`
	AbortRequested bool           `json:"abort_requested,omitempty"`
	// NeedsRestore: the run ended but could not take every host out of maintenance or
	// re-enable every cluster; `rolling abort` retries.
	NeedsRestore bool          `json:"needs_restore,omitempty"`
	Details      string        `json:"details,omitempty"`
	Seq          int           `json:"seq"`
	Clusters     []*RunCluster `json:"clusters"`
	Hosts        []*RunHost    `json:"hosts"`
}

// Owner identifies the kvmctl process running a run, so that a lock left by a dead one can be
// told from a live one.
type Owner struct {
	PID       int    `json:"pid"`
	StartTime string `json:"start_time"`
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
	Name      string                  `json:"name"`
	Cluster   string                  `json:"cluster"`
	Step      string                  `json:"step"`
	Reason    string                  `json:"reason,omitempty"`
	InMaint   bool                    `json:"in_maintenance_by_run"`
	StartedAt time.Time               `json:"started_at,omitzero"`
	EndedAt   time.Time               `json:"ended_at,omitzero"`
	Stages    map[string]*StageRecord `json:"stages"`
	VMsMoved  int                     `json:"vms_moved"`
}

// StageRecord is one stage of one host in a run.
type StageRecord struct {
	ExecID    string    `json:"exec_id,omitempty"`
	State     string    `json:"state"` // starting, running, completed
	Outcome   string    `json:"outcome,omitempty"`
	ExitCode  int       `json:"exit_code"`
	Output    string    `json:"output,omitempty"`
	Note      string    `json:"note,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
}

// At reports whether h has finished step s (or a later one), skipped hosts excepted.
func (h *RunHost) At(s string) bool {
	return h.Step != StepSkipped && stepOrder[h.Step] >= stepOrder[s]
}

// Active reports whether h still takes part in the run.
func (h *RunHost) Active() bool { return h.Step != StepSkipped && h.Step != StepDone }

// Host returns the run's host called name.
func (r *Run) Host(name string) *RunHost {
	for _, h := range r.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// RunResult is the final result of a run, CloudStack's startRollingMaintenance answer.
type RunResult struct {
	RunID        string        `json:"run_id"`
	State        string        `json:"state"`
	Success      bool          `json:"success"`
	Details      string        `json:"details"`
	HostsUpdated []HostUpdated `json:"hosts_updated"`
	HostsSkipped []HostSkipped `json:"hosts_skipped"`
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
	res := RunResult{RunID: r.ID, State: r.State, Success: r.State == RunSucceeded, Details: r.Details,
		HostsUpdated: []HostUpdated{}, HostsSkipped: []HostSkipped{}}
	for _, h := range r.Hosts {
		switch h.Step {
		case StepDone:
			res.HostsUpdated = append(res.HostsUpdated, HostUpdated{Host: h.Name, Cluster: h.Cluster, StartedAt: h.StartedAt, EndedAt: h.EndedAt, Output: h.output()})
		case StepSkipped:
			res.HostsSkipped = append(res.HostsSkipped, HostSkipped{Host: h.Name, Cluster: h.Cluster, Reason: h.Reason})
		}
	}
	return res
}

func (h *RunHost) output() string {
	var b strings.Builder
	for _, s := range []string{"PreFlight", "PreMaintenance", "Maintenance", "PostMaintenance"} {
		if rec := h.Stages[s]; rec != nil && rec.Output != "" {
			fmt.Fprintf(&b, "%s: %s", s, rec.Output)
			if !strings.HasSuffix(rec.Output, "\n") {
				b.WriteByte('\n')
			}
		}
	}
	return b.String()
}

// newRunID returns a sortable, unique run id: time then randomness.
func newRunID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "r" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// SelfOwner identifies this process.
func SelfOwner() Owner {
	return Owner{PID: os.Getpid(), StartTime: procStartTime(os.Getpid())}
}

// Alive reports whether the process that owns a run still runs.
func (o Owner) Alive() bool {
	if o.PID <= 0 {
		return false
	}
	st := procStartTime(o.PID)
	return st != "" && st == o.StartTime
}

// procStartTime is field 22 of /proc/PID/stat: a pid reused by another process differs in it.
func procStartTime(pid int) string {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(string(raw[i+1:]))
	// fields[0] is the state (field 3); the start time is field 22.
	if len(fields) < 20 || fields[0] == "Z" {
		return ""
	}
	return fields[19]
}

// journalKey orders a run's events by sequence.
func journalKey(runID string, seq int) string { return fmt.Sprintf("%s/%08d", runID, seq) }

// LoadRun reads run id.
func LoadRun(tx state.Tx, id string) (*Run, error) {
	var r Run
	if err := state.GetJSON(tx, state.BucketRuns, id, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ListRuns reads every run, newest first.
func ListRuns(tx state.Tx) ([]*Run, error) {
	runs, err := state.ListJSON[*Run](tx, state.BucketRuns)
	sort.Slice(runs, func(i, j int) bool { return runs[i].CreatedAt.After(runs[j].CreatedAt) })
	return runs, err
}

// Journal reads the events of run id in order.
func Journal(tx state.Tx, id string) ([]events.Event, error) {
	var out []events.Event
	prefix := id + "/"
	err := tx.ForEach(state.BucketJournal, func(key string, raw []byte) error {
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		var e events.Event
		if err := json.Unmarshal(raw, &e); err != nil {
			return fmt.Errorf("journal %s: %w", key, err)
		}
		out = append(out, e)
		return nil
	})
	return out, err
}
