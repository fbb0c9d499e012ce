package api

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// DefaultStageTimeoutS is the stage timeout the agent applies when a StageRequest has none:
// CloudStack's kvm.rolling.maintenance.stage.timeout default.
const DefaultStageTimeoutS = 1800

// MaxStageWait is the longest long poll GET /v1/stages/{id}?wait= holds; a longer wait is cut
// to it, and the caller polls again.
const MaxStageWait = 5 * time.Minute

// HookScript is the script of one stage on a host, as GET /v1/hooks lists it.
type HookScript struct {
	Stage events.Stage `json:"stage"`
	// Present: a file for the stage exists (it may still be refused).
	Present bool   `json:"present"`
	Path    string `json:"path,omitempty"`
	// Refused is why the script would not run; empty when it would.
	Refused string `json:"refused,omitempty"`
}

// Hooks is the answer to GET /v1/hooks: the hooks dir and one HookScript per stage, in the
// order the stages run.
type Hooks struct {
	Dir     string       `json:"dir"`
	Scripts []HookScript `json:"scripts"`
}

// StageRequest is the body of POST /v1/stages. Asking twice for the same (RunID, Stage) returns
// the same execution and never runs the script twice.
type StageRequest struct {
	// RunID names the rolling-maintenance run: 1 to 64 characters of [A-Za-z0-9._-].
	RunID string `json:"run_id"`
	// Stage is PreFlight, PreMaintenance, Maintenance or PostMaintenance.
	Stage events.Stage `json:"stage"`
	// Payload is passed to the script as arguments, split by shell quoting rules without a shell.
	Payload string `json:"payload,omitempty"`
	// TimeoutS bounds the script's run time in seconds; 0 means DefaultStageTimeoutS.
	TimeoutS int `json:"timeout_s,omitempty"`
}

// StageStarted is the answer to POST /v1/stages.
type StageStarted struct {
	// ExecID is 16 lowercase hex digits, derived from the run id and the stage (ValidExecID).
	ExecID string `json:"exec_id"`
}

// ValidExecID reports whether id has the form of an execution id, 16 lowercase hex digits: the
// agent refuses any other id in GET /v1/stages/{id} before it looks for a record. The agent
// derives ids (hooks.ExecID); a test there keeps the two in step.
func ValidExecID(id string) bool {
	if len(id) != 16 {
		return false
	}
	for _, c := range []byte(id) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// StageStatus is the answer to GET /v1/stages/{id}: a stage execution, running or completed.
type StageStatus struct {
	ExecID string       `json:"exec_id"`
	RunID  string       `json:"run_id"`
	Stage  events.Stage `json:"stage"`
	// State is running or completed.
	State events.StageState `json:"state"`
	// Outcome says how the stage ended, once State is completed.
	Outcome  events.Outcome `json:"outcome,omitempty"`
	ExitCode int            `json:"exit_code"`
	// Output is the tail (last 64 KiB) of the script's stdout and stderr.
	Output    string    `json:"output,omitempty"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
	// Note explains an outcome that was inferred, e.g. "agent restarted", "host rebooted during
	// stage".
	Note string `json:"note,omitempty"`
}

// Done reports whether the stage has completed.
func (s StageStatus) Done() bool { return s.State == events.StageCompleted }

// Hooks lists the stage scripts of the host and why any is refused.
func (c *Client) Hooks(ctx context.Context) ([]HookScript, error) {
	var h Hooks
	if err := c.do(ctx, http.MethodGet, PathHooks, nil, &h); err != nil {
		return nil, err
	}
	return h.Scripts, nil
}

// StartStage starts a stage (or finds the one already started for the same run and stage) and
// returns its execution id. A stage without a script fails with CodeNoScript, a refused script
// with CodeScriptRefused (see IsCode).
func (c *Client) StartStage(ctx context.Context, req StageRequest) (string, error) {
	var s StageStarted
	if err := c.do(ctx, http.MethodPost, PathStages, req, &s); err != nil {
		return "", err
	}
	return s.ExecID, nil
}

// Stage returns the status of execution id at once.
func (c *Client) Stage(ctx context.Context, id string) (StageStatus, error) {
	var s StageStatus
	err := c.do(ctx, http.MethodGet, PathStages+"/"+url.PathEscape(id), nil, &s)
	return s, err
}

// waitSlack is what a long poll leaves for the answer to travel before the caller's deadline.
const waitSlack = 2 * time.Second

// WaitStage long-polls execution id: it returns as soon as the stage completes, or after wait
// (at most MaxStageWait) with the stage still running; loop on it until Done. Without a
// deadline on ctx the call gets one of wait plus a margin; with one, wait is shortened to end
// before it.
func (c *Client) WaitStage(ctx context.Context, id string, wait time.Duration) (StageStatus, error) {
	dl, ok := ctx.Deadline()
	wait = clampWait(wait, dl, ok, time.Now())
	if !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait+c.requestTimeout)
		defer cancel()
	}
	var s StageStatus
	path := PathStages + "/" + url.PathEscape(id) + "?wait=" + url.QueryEscape(wait.String())
	err := c.do(ctx, http.MethodGet, path, nil, &s)
	return s, err
}

// clampWait bounds a long poll's wait to [0, MaxStageWait] and, when the caller has a deadline,
// ends it waitSlack before that deadline so that the answer still arrives in time.
func clampWait(wait time.Duration, deadline time.Time, hasDeadline bool, now time.Time) time.Duration {
	wait = min(max(wait, 0), MaxStageWait)
	if hasDeadline {
		wait = min(wait, max(deadline.Sub(now)-waitSlack, 0))
	}
	return wait
}
