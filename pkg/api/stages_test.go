package api

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

func TestStageCodes(t *testing.T) {
	if HTTPStatus(CodeNoScript) != 404 || HTTPStatus(CodeScriptRefused) != 409 {
		t.Errorf("no_script → %d, script_refused → %d; want 404, 409", HTTPStatus(CodeNoScript), HTTPStatus(CodeScriptRefused))
	}
}

func TestClampWait(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		wait     time.Duration
		deadline time.Duration // from now; 0 means none
		want     time.Duration
	}{
		{30 * time.Second, 0, 30 * time.Second},
		{-time.Second, 0, 0},
		{time.Hour, 0, MaxStageWait},
		{30 * time.Second, 10 * time.Second, 10*time.Second - waitSlack},
		{30 * time.Second, time.Second, 0},
		{5 * time.Second, time.Minute, 5 * time.Second},
	} {
		got := clampWait(tc.wait, now.Add(tc.deadline), tc.deadline != 0, now)
		if got != tc.want {
			t.Errorf("clampWait(%s, deadline in %s) = %s, want %s", tc.wait, tc.deadline, got, tc.want)
		}
	}
}

func TestStageStatusJSON(t *testing.T) {
	b, err := json.Marshal(StageStatus{ExecID: "0123456789abcdef", RunID: "r1", Stage: "PreFlight", State: events.StageRunning,
		StartedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"exec_id":"0123456789abcdef","run_id":"r1","stage":"PreFlight","state":"running","exit_code":0,"started_at":"2025-01-02T03:04:05Z"}`
	if string(b) != want {
		t.Errorf("running status JSON:\n got %s\nwant %s", b, want)
	}
	b, _ = json.Marshal(StageRequest{RunID: "r1", Stage: "Maintenance", Payload: `a "b c"`, TimeoutS: 60})
	if !strings.Contains(string(b), `"timeout_s":60`) || !strings.Contains(string(b), `"run_id":"r1"`) {
		t.Errorf("request JSON %s", b)
	}
}
