package agent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/hooks"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// stagesAgent is an in-process agent with the config of hooksConfig.
func stagesAgent(t *testing.T, scripts map[string]string) (*Agent, Config) {
	t.Helper()
	cfg := hooksConfig(t, newFleet(t), scripts)
	a, err := New(cfg, virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}))
	if err != nil {
		t.Fatal(err)
	}
	return a, cfg
}

// doRaw sends one request to h without TLS and returns the status and decoded error code.
func doRaw(t *testing.T, h http.Handler, method, path, body string) (int, api.ErrorBody, []byte) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var eb api.ErrorBody
	_ = json.Unmarshal(rec.Body.Bytes(), &eb)
	return rec.Code, eb, rec.Body.Bytes()
}

func TestStartStageRefusesBadInput(t *testing.T) {
	a, _ := stagesAgent(t, map[string]string{"PreFlight.sh": "exit 0"})
	for _, tc := range []struct{ name, body, msg string }{
		{"unknown stage", `{"run_id":"r1","stage":"Preflight","timeout_s":5}`, "unknown stage"},
		{"empty run id", `{"run_id":"","stage":"PreFlight","timeout_s":5}`, "run_id"},
		{"run id with a slash", `{"run_id":"a/b","stage":"PreFlight","timeout_s":5}`, "run_id"},
		{"negative timeout", `{"run_id":"r1","stage":"PreFlight","timeout_s":-1}`, "timeout_s -1"},
		{"timeout over a day", `{"run_id":"r1","stage":"PreFlight","timeout_s":86401}`, "timeout_s 86401"},
		{"unterminated quote", `{"run_id":"r1","stage":"PreFlight","payload":"a \"b"}`, "payload"},
		{"unquoted semicolon", `{"run_id":"r1","stage":"PreFlight","payload":"a; rm -rf /"}`, "payload"},
		{"unknown field", `{"run_id":"r1","stage":"PreFlight","timeout":5}`, "unknown field"},
		{"not json", `run PreFlight`, "bad JSON"},
	} {
		code, eb, raw := doRaw(t, a.Handler(), http.MethodPost, api.PathStages, tc.body)
		if code != http.StatusBadRequest || eb.Code != api.CodeBadRequest || !strings.Contains(eb.Error, tc.msg) {
			t.Errorf("%s: %d %s, want 400 %s mentioning %q", tc.name, code, raw, api.CodeBadRequest, tc.msg)
		}
	}
	// Nothing was started by any of them.
	if ents, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, "stages")); len(ents) != 0 {
		t.Errorf("stages dir holds %d entries after refusals", len(ents))
	}
}

func TestStageNotFound(t *testing.T) {
	a, _ := stagesAgent(t, nil)
	code, eb, raw := doRaw(t, a.Handler(), http.MethodPost, api.PathStages, `{"run_id":"r1","stage":"Maintenance","timeout_s":5}`)
	if code != http.StatusNotFound || eb.Code != api.CodeNoScript || !strings.Contains(eb.Error, "Maintenance.sh") {
		t.Errorf("no script: %d %s", code, raw)
	}
	code, eb, raw = doRaw(t, a.Handler(), http.MethodGet, api.PathStages+"/0123456789abcdef?wait=1s", "")
	if code != http.StatusNotFound || eb.Code != api.CodeNotFound {
		t.Errorf("GET an unknown id: %d %s, want 404 %s", code, raw, api.CodeNotFound)
	}
	// What is not an exec id at all is a bad request, refused before any file is looked for.
	for _, id := range []string{"not-an-id", "0123456789ABCDEF"} {
		code, eb, raw := doRaw(t, a.Handler(), http.MethodGet, api.PathStages+"/"+id+"?wait=1s", "")
		if code != http.StatusBadRequest || eb.Code != api.CodeBadRequest {
			t.Errorf("GET %s: %d %s, want 400 %s", id, code, raw, api.CodeBadRequest)
		}
	}
	code, _, raw = doRaw(t, a.Handler(), http.MethodDelete, api.PathStages+"/0123456789abcdef", "")
	if code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %d %s, want 405", code, raw)
	}
}

func TestHooksDirMissing(t *testing.T) {
	a, cfg := stagesAgent(t, nil)
	if err := os.Remove(cfg.HooksDir); err != nil {
		t.Fatal(err)
	}
	code, eb, raw := doRaw(t, a.Handler(), http.MethodGet, api.PathHooks, "")
	if code != http.StatusInternalServerError || !strings.Contains(eb.Error, KeyHooksDir) {
		t.Errorf("GET hooks without the dir: %d %s, want 500 naming %s", code, raw, KeyHooksDir)
	}
}

func TestStageLongPoll(t *testing.T) {
	f := newFleet(t)
	cfg := f.testConfig("kvm1", "boot-1")
	cfg.ServiceExecutorDisabled = true
	if err := os.MkdirAll(cfg.HooksDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(cfg.HooksDir, "PreFlight")
	if err := os.WriteFile(p, []byte("#!/bin/sh\nsleep 0.5\necho slept\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	addr := serve(t, cfg, virt.NewFake(virt.Capacity{CPUs: 4, MemoryMiB: 4096}))
	c := f.client("kvm1", addr)
	ctx := context.Background()

	id, err := c.StartStage(ctx, api.StageRequest{RunID: "poll", Stage: "PreFlight"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := c.WaitStage(ctx, id, 100*time.Millisecond)
	if err != nil || st.State != events.StageRunning || time.Since(start) < 100*time.Millisecond {
		t.Errorf("short wait = %+v, %v after %s; want running after 100ms", st, err, time.Since(start))
	}
	st, err = c.WaitStage(ctx, id, 30*time.Second)
	if err != nil || !st.Done() || st.Outcome != events.OutcomeSucceeded || st.Output != "slept\n" {
		t.Fatalf("long wait = %+v, %v", st, err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("long poll returned after %s, want right after the script's 0.5s", took)
	}
	// A completed stage answers a long poll at once.
	start = time.Now()
	if st, err := c.WaitStage(ctx, id, time.Minute); err != nil || !st.Done() || time.Since(start) > time.Second {
		t.Errorf("wait on a completed stage = %+v, %v after %s", st, err, time.Since(start))
	}
	if st, err := c.Stage(ctx, id); err != nil || st.ExecID != id || st.RunID != "poll" || st.Stage != "PreFlight" {
		t.Errorf("Stage = %+v, %v", st, err)
	}
	if _, err := c.WaitStage(ctx, "0123456789abcdef", time.Second); !api.IsCode(err, api.CodeNotFound) {
		t.Errorf("WaitStage of an unknown id = %v, want %s", err, api.CodeNotFound)
	}
}

func TestStagesAcceptedInMaintenance(t *testing.T) {
	a, _ := stagesAgent(t, map[string]string{"Maintenance.sh": "exit 70"})
	// Through the endpoint, not the agent's internals: the maintenance code owns its state.
	if code, _, raw := doRaw(t, a.Handler(), http.MethodPost, api.PathMaintenance, ""); code != http.StatusOK {
		t.Fatalf("enter maintenance: %d %s", code, raw)
	}
	if a.state.Get() != api.AgentStateInMaintenance {
		t.Fatalf("agent state %s, want %s", a.state.Get(), api.AgentStateInMaintenance)
	}
	code, _, raw := doRaw(t, a.Handler(), http.MethodPost, api.PathStages, `{"run_id":"m","stage":"Maintenance","timeout_s":5}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST in maintenance: %d %s", code, raw)
	}
	var started api.StageStarted
	if err := json.Unmarshal(raw, &started); err != nil || started.ExecID != hooks.ExecID("m", events.Maintenance) {
		t.Fatalf("answer %s: %v", raw, err)
	}
	code, _, raw = doRaw(t, a.Handler(), http.MethodGet, api.PathStages+"/"+started.ExecID+"?wait=10s", "")
	var st api.StageStatus
	if err := json.Unmarshal(raw, &st); code != http.StatusOK || err != nil || st.Outcome != events.OutcomeSkipped || st.ExitCode != 70 {
		t.Errorf("GET: %d %s", code, raw)
	}
}

func TestParseWait(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"": 0, "0": 0, "30s": 30 * time.Second, "30": 30 * time.Second, "1m30s": 90 * time.Second,
		"1h": api.MaxStageWait, "250ms": 250 * time.Millisecond,
	} {
		if got, err := parseWait(in); err != nil || got != want {
			t.Errorf("parseWait(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"-1s", "-3", "soon", "1x"} {
		if _, err := parseWait(in); err == nil || err.Code != api.CodeBadRequest {
			t.Errorf("parseWait(%q) = %v, want a 400", in, err)
		}
	}
}

// A long poll must end with the stage's status, never with the route's 503: the route's
// timeout outlasts the longest wait, and the server's write timeout outlasts the route.
func TestStageRouteTimeoutOutlastsWait(t *testing.T) {
	a, _ := stagesAgent(t, nil)
	var found bool
	for _, rt := range a.routes() {
		if rt.method == http.MethodGet && rt.path == api.PathStages+"/{id}" {
			found = true
			if rt.timeout <= api.MaxStageWait {
				t.Errorf("route timeout %s, want more than the max wait %s", rt.timeout, api.MaxStageWait)
			}
		}
	}
	if !found {
		t.Fatal("no GET route for a stage")
	}
	if a.maxTimeout() < stageWaitTimeout {
		t.Errorf("maxTimeout %s < %s", a.maxTimeout(), stageWaitTimeout)
	}
}
