package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNDJSONOneObjectPerLine(t *testing.T) {
	var buf bytes.Buffer
	s := NewNDJSON(&buf)
	at := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	_ = s.Emit(Event{Time: at, Type: HostStageFinished, RunID: "r1", Host: "h1", Stage: "Maintenance", Outcome: "succeeded", Fields: map[string]any{"exit_code": 0}})
	_ = s.Emit(Event{Time: at, Type: RunFinished, RunID: "r1", Outcome: "succeeded"})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want 2:\n%s", len(lines), buf.String())
	}
	var e Event
	if err := json.Unmarshal([]byte(lines[0]), &e); err != nil || e.Host != "h1" || e.Stage != "Maintenance" || e.Type != HostStageFinished {
		t.Errorf("first line = %s (%v)", lines[0], err)
	}
	if strings.Contains(lines[1], `"host"`) {
		t.Errorf("empty fields must be omitted: %s", lines[1])
	}
}

func TestLine(t *testing.T) {
	e := Event{Time: time.Date(2026, 11, 25, 10, 1, 2, 0, time.UTC), Type: VMMigrated, Cluster: "c1", Host: "h1", VM: "vm1",
		Fields: map[string]any{"to": "h2", "ms": 7}, Message: "done"}
	want := "10:01:02 vm.migrated cluster=c1 host=h1 vm=vm1 ms=7 to=h2: done"
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
