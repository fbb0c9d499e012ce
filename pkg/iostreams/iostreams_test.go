package iostreams

import (
	"testing"
	"time"
)

func TestTableTTYAndPipe(t *testing.T) {
	ios, _, out, _ := Test()
	tb := ios.NewTable("NAME", "STATE")
	tb.AddRow("h1", "Enabled")
	tb.AddRow("h10", "")
	_ = tb.Render()
	if got := out.String(); got != "h1\tEnabled\nh10\t-\n" {
		t.Errorf("pipe table = %q: want tab-separated rows, no header, - for empty", got)
	}
	out.Reset()
	ios.SetStdoutTTY(true)
	tb = ios.NewTable("NAME", "STATE")
	tb.AddRow("h1", "Enabled")
	_ = tb.Render()
	if got := out.String(); got != "NAME  STATE\nh1    Enabled\n" {
		t.Errorf("tty table = %q: want an aligned table with a header", got)
	}
}

func TestTime(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	ios, _, _, _ := Test()
	if got := ios.Time(now.Add(-90*time.Second), now); got != "2026-11-25T11:58:30Z" {
		t.Errorf("pipe time = %q, want RFC 3339", got)
	}
	ios.SetStdoutTTY(true)
	for d, want := range map[time.Duration]string{90 * time.Second: "1m ago", 3 * time.Hour: "3h ago", 0: "just now", 72 * time.Hour: "3d ago"} {
		if got := ios.Time(now.Add(-d), now); got != want {
			t.Errorf("tty time %s ago = %q, want %q", d, got, want)
		}
	}
	if got := ios.Time(time.Time{}, now); got != "-" {
		t.Errorf("zero time = %q, want -", got)
	}
}
