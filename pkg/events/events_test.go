package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestNDJSONOneObjectPerLine(t *testing.T) {
	var buf bytes.Buffer
	s := NewNDJSON(&buf)
	at := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	_ = s.Emit(Event{Time: at, Type: HostStageFinished, RunID: "r1", Host: "h1", Stage: Maintenance, Outcome: OutcomeSucceeded, ExitCode: Int(0)})
	_ = s.Emit(Event{Time: at, Type: RunFinished, RunID: "r1", RunState: RunSucceeded})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), buf.String())
	}
	var e Event
	if err := json.Unmarshal([]byte(lines[0]), &e); err != nil || e.Host != "h1" || e.Stage != Maintenance || e.Type != HostStageFinished ||
		e.ExitCode == nil || *e.ExitCode != 0 {
		t.Errorf("first line = %s (%v)", lines[0], err)
	}
	if !strings.Contains(lines[0], `"exit_code":0`) {
		t.Errorf("an exit code of 0 must be written: %s", lines[0])
	}
	if strings.Contains(lines[1], `"host"`) {
		t.Errorf("empty fields must be omitted: %s", lines[1])
	}
}

func TestLine(t *testing.T) {
	e := Event{Time: time.Date(2026, 11, 25, 10, 1, 2, 0, time.UTC), Type: VMMigrated, Cluster: "c1", Host: "h1", VM: "vm1",
		To: "h2", DurationMS: 7, Message: "done"}
	want := "10:01:02 vm.migrated cluster=c1 host=h1 vm=vm1 to=h2 duration_ms=7: done"
	if got := Line(e); got != want {
		t.Errorf("Line = %q\nwant   %q", got, want)
	}
}

func TestTeeReturnsFirstError(t *testing.T) {
	var got []string
	boom := errors.New("boom")
	tee := Tee(SinkFunc(func(e Event) error { got = append(got, "a"); return boom }), SinkFunc(func(e Event) error { got = append(got, "b"); return nil }))
	if err := tee.Emit(Event{}); !errors.Is(err, boom) || strings.Join(got, "") != "ab" {
		t.Errorf("Tee = %v, sinks called %v; want boom and both sinks", err, got)
	}
}

// Journals written before the fields were typed still read: a fields map, a step id in the
// stage field, a run's end in the outcome, a batch as a comma list.
func TestLegacyJournalRecordsRead(t *testing.T) {
	for raw, want := range map[string]Event{
		`{"type":"host.stage.finished","host":"h1","stage":"Maintenance","outcome":"failed","fields":{"exit_code":3,"note":"n","last_line":"x"}}`: {
			Type: HostStageFinished, Host: "h1", Stage: Maintenance, Outcome: OutcomeFailed, ExitCode: Int(3), Note: "n", LastLine: "x"},
		`{"type":"host.step","host":"h1","stage":"in_maintenance","fields":{"vms_moved":2}}`: {Type: HostStep, Host: "h1", Step: StepInMaintenance, VMs: 2},
		`{"type":"host.step","host":"h1","stage":"Maintenance","message":"waiting"}`:         {Type: HostStep, Host: "h1", Stage: Maintenance, Message: "waiting"},
		`{"type":"run.finished","outcome":"aborted"}`:                                        {Type: RunFinished, RunState: RunAborted},
		`{"type":"host.maintenance.planned","cluster":"c1","message":"h1,h2","fields":{"vms":3,"unplaced":0}}`: {
			Type: HostMaintenancePlan, Cluster: "c1", Hosts: []string{"h1", "h2"}, VMs: 3},
		`{"type":"run.started","fields":{"hosts":4,"clusters":2,"forced":true,"max_unavailable":2}}`: {
			Type: RunStarted, HostCount: 4, ClusterCount: 2, Forced: true, MaxUnavailable: 2},
		`{"type":"vm.migrated","vm":"v","fields":{"to":"h2","ms":12}}`: {Type: VMMigrated, VM: "v", To: "h2", DurationMS: 12},
	} {
		var got Event
		if err := json.Unmarshal([]byte(raw), &got); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s:\n%s", raw, diff)
		}
	}
}

func TestStagesAndStepsAreOrdered(t *testing.T) {
	for i, s := range Stages() {
		if s.Index() != i {
			t.Errorf("%s.Index() = %d, want %d", s, s.Index(), i)
		}
		if got, err := ParseStage(string(s)); got != s || err != nil {
			t.Errorf("ParseStage(%s) = %v, %v", s, got, err)
		}
	}
	if _, err := ParseStage("preflight"); err == nil || !strings.Contains(err.Error(), "PreFlight, PreMaintenance") {
		t.Errorf("ParseStage of a wrong spelling: %v", err)
	}
	if !(StepPending.Order() < StepPreFlightDone.Order() && StepCancelled.Order() < StepDone.Order()) || StepRestored.Order() != -1 {
		t.Error("step order is off")
	}
}
