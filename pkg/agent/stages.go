package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/safetext"
)

// Limits of the stage endpoints.
const (
	// maxStageTimeout bounds StageRequest.TimeoutS: a stage that may run longer than a day is
	// more likely a typo than a plan.
	maxStageTimeout = 24 * time.Hour
	// stageWaitTimeout is the route timeout of GET /v1/stages/{id}: longer than the longest
	// wait, so that a long poll always ends with the stage's status, never with a 503.
	stageWaitTimeout = api.MaxStageWait + 30*time.Second
)

// runIDPattern is the run id rule of hooks.Request, checked here so that a bad one is a 400
// rather than an error the executor cannot classify.
var runIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// WithHooksConfig lets tests adjust the hooks executor's configuration (grace period, the
// stage runner, no systemd) after the agent filled it from its Config.
func WithHooksConfig(fn func(*hooks.Config)) Option {
	return func(a *Agent) { a.hooksConfig = append(a.hooksConfig, fn) }
}

// newStageExecutor builds the executor agent.properties asks for. hooks.New settles the stages
// an earlier agent left running, or starts watching the scripts that still run, before the first
// request can ask about them.
func (a *Agent) newStageExecutor() (hooks.Executor, error) {
	hc := hooks.Config{
		HooksDir:      a.cfg.HooksDir,
		StateDir:      a.cfg.StateDir,
		AgentExecutor: a.cfg.ServiceExecutorDisabled,
		Runner:        a.cfg.StageRunner,
		Host:          a.cfg.HostName,
		BootID:        a.BootID,
		Now:           a.now,
		Log:           a.log,
	}
	for _, fn := range a.hooksConfig {
		fn(&hc)
	}
	e, err := hooks.New(hc)
	if err != nil {
		return nil, fmt.Errorf("stage executor: %w", err)
	}
	return e, nil
}

// handleHooks answers GET /v1/hooks: the script of every stage and why one would be refused.
func (a *Agent) handleHooks(w http.ResponseWriter, _ *http.Request) *httpError {
	infos, err := hooks.Discover(a.cfg.HooksDir)
	if err != nil {
		return newHTTPError(api.CodeInternal, "%v: create the directory or fix %s in agent.properties", err, KeyHooksDir)
	}
	out := api.Hooks{Dir: a.cfg.HooksDir, Scripts: make([]api.HookScript, 0, len(infos))}
	for _, in := range infos {
		out.Scripts = append(out.Scripts, api.HookScript{Stage: in.Stage, Present: in.Present, Path: in.Path, Refused: in.Refused})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// handleStartStage answers POST /v1/stages: it starts the stage, or finds the execution already
// started for the same (run_id, stage), and returns its id.
func (a *Agent) handleStartStage(w http.ResponseWriter, r *http.Request) *httpError {
	var req api.StageRequest
	if e := decodeJSON(w, r, &req); e != nil {
		return e
	}
	hr, e := stageRequest(req)
	if e != nil {
		return e
	}
	// A client that hangs up must not abort a launch half done (systemd-run is killed with its
	// context); asking again finds the execution by its (run_id, stage).
	id, err := a.stages.Start(context.WithoutCancel(r.Context()), hr)
	var refused *hooks.RefusedError
	switch {
	case errors.Is(err, hooks.ErrNoScript):
		return newHTTPError(api.CodeNoScript, "no %s script in %s (looked for %[1]s, %[1]s.sh and %[1]s.py)", hr.Stage, a.cfg.HooksDir)
	case errors.As(err, &refused):
		return newHTTPError(api.CodeScriptRefused, "%s script %s refused: %s", refused.Stage, refused.Path, refused.Reason)
	case err != nil:
		return newHTTPError(api.CodeInternal, "start %s: %v", hr.Stage, err)
	}
	a.log.Info("stage started", "exec_id", id, "run_id", hr.RunID, "stage", hr.Stage, "operator", peerName(r))
	writeJSON(w, http.StatusAccepted, api.StageStarted{ExecID: id})
	return nil
}

// stageRequest checks a StageRequest and turns it into a hooks.Request; every problem is a 400.
func stageRequest(req api.StageRequest) (hooks.Request, *httpError) {
	stage, err := events.ParseStage(string(req.Stage))
	if err != nil {
		return hooks.Request{}, newHTTPError(api.CodeBadRequest, "stage: %v", err)
	}
	if !runIDPattern.MatchString(req.RunID) {
		return hooks.Request{}, newHTTPError(api.CodeBadRequest, "run_id %q: use 1 to 64 characters of A-Z a-z 0-9 . _ -", req.RunID)
	}
	// The integer is checked before it becomes a Duration: a huge one would overflow into a
	// short or negative timeout.
	var timeout time.Duration
	switch {
	case req.TimeoutS == 0:
		timeout = api.DefaultStageTimeoutS * time.Second
	case req.TimeoutS < 0 || int64(req.TimeoutS) > int64(maxStageTimeout/time.Second):
		return hooks.Request{}, newHTTPError(api.CodeBadRequest, "timeout_s %d: want 1 to %d seconds (0 for the default, %d)",
			req.TimeoutS, int(maxStageTimeout/time.Second), api.DefaultStageTimeoutS)
	default:
		timeout = time.Duration(req.TimeoutS) * time.Second
	}
	// The payload becomes the script's argv: a NUL would cut an argument, a newline or an
	// escape sequence would reach the script's log unseen.
	if err := safetext.Check("payload", req.Payload); err != nil {
		return hooks.Request{}, newHTTPError(api.CodeBadRequest, "%v", err)
	}
	if _, err := hooks.SplitPayload(req.Payload); err != nil {
		return hooks.Request{}, newHTTPError(api.CodeBadRequest, "payload: %v", err)
	}
	return hooks.Request{RunID: req.RunID, Stage: stage, Payload: req.Payload, Timeout: timeout}, nil
}

// handleStage answers GET /v1/stages/{id}, at once or, with ?wait=D, the moment the stage
// completes or after D (at most api.MaxStageWait) with the stage still running.
func (a *Agent) handleStage(w http.ResponseWriter, r *http.Request) *httpError {
	id := r.PathValue("id")
	// Checked here, before the executor looks for a record file named after it.
	if !api.ValidExecID(id) {
		return newHTTPError(api.CodeBadRequest, "exec id %q: want the 16 lowercase hex digits POST %s answered", abbreviate(id), api.PathStages)
	}
	wait, e := parseWait(r.URL.Query().Get("wait"))
	if e != nil {
		return e
	}
	var st hooks.Status
	var err error
	if wait > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		st, err = a.stages.Wait(ctx, id)
		if err != nil && ctx.Err() != nil {
			// Waited long enough (or the client left): answer with what is known now.
			st, err = a.stages.Get(id)
		}
		cancel()
	} else {
		st, err = a.stages.Get(id)
	}
	switch {
	case errors.Is(err, hooks.ErrUnknownID):
		return newHTTPError(api.CodeNotFound, "no stage execution %q on %s: start one with POST %s", id, a.cfg.HostName, api.PathStages)
	case err != nil:
		return newHTTPError(api.CodeInternal, "stage %s: %v", id, err)
	}
	writeJSON(w, http.StatusOK, wireStage(st))
	return nil
}

// parseWait reads ?wait= as a Go duration ("30s", "1m") or whole seconds ("30"); a wait over
// api.MaxStageWait is cut to it.
func parseWait(s string) (time.Duration, *httpError) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		n, err2 := strconv.Atoi(s)
		if err2 != nil {
			return 0, newHTTPError(api.CodeBadRequest, "wait %q: want a duration such as 30s", s)
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 {
		return 0, newHTTPError(api.CodeBadRequest, "wait %q: must not be negative", s)
	}
	return min(d, api.MaxStageWait), nil
}

func wireStage(st hooks.Status) api.StageStatus {
	return api.StageStatus{
		ExecID:    st.ID,
		RunID:     st.RunID,
		Stage:     st.Stage,
		State:     st.State,
		Outcome:   st.Outcome,
		ExitCode:  st.ExitCode,
		Output:    st.Output,
		StartedAt: st.StartedAt.UTC(),
		EndedAt:   st.EndedAt.UTC(),
		Note:      st.Note,
	}
}
