package cli

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// hostile is what a compromised or careless host's script prints: a terminal title (OSC 0), a
// clipboard write (OSC 52), a screen clear, a carriage return that hides what came before, a C1
// CSI and a bidirectional override.
const hostile = `printf '\033]0;pwned\007\033]52;c;ZWNobyBoaQ==\007\033[2J\033[Hok\rFAKE \302\233 31m \342\200\256evil\n'`

func TestTerminalGetsHostTextEscaped(t *testing.T) {
	t.Parallel()
	l := newRollingLab(t, 2, 1, 0)
	for _, s := range stageNames {
		l.hook("h1", s, hostile+"; exit 0")
	}
	l.hook("h2", "PreFlight", hostile+"; exit 70")
	raw := func(s string) bool {
		return strings.ContainsAny(s, "\x07\r\u009b\u202e") || strings.Contains(s, "\x1b")
	}

	// hooks run prints the script's output: escaped.
	code, out, errOut := l.kvmctl("hooks", "run", "h1", "PreFlight")
	if code != 0 || raw(out) || raw(errOut) {
		t.Fatalf("hooks run: exit %d, escape sequences through: %q %q", code, out, errOut)
	}
	if !strings.Contains(out, `\u001b]0;pwned\u0007`) || !strings.Contains(out, `ok\u000dFAKE`) {
		t.Errorf("hooks run hides the output instead of showing it escaped:\n%s", out)
	}

	// Plain progress lines carry each stage's last line: escaped.
	code, out, errOut = l.kvmctl("rolling", "start", "--cluster", "c1", "--timeout", "10", "--no-tui")
	if code != 0 || raw(out) || raw(errOut) {
		t.Fatalf("rolling start: exit %d, escape sequences through:\n%q\n%q", code, out, errOut)
	}
	if !strings.Contains(errOut, `last_line=`) || !strings.Contains(errOut, `]52;c;ZWNobyBoaQ==`) || !strings.Contains(errOut, `pwned`) {
		t.Errorf("the plain lines do not show the script's last line escaped:\n%s", errOut)
	}

	// --events keeps the text as it was, JSON-escaped: every line decodes, and the script's
	// bytes come back whole.
	code, out, _ = l.kvmctl("--events", "rolling", "start", "--cluster", "c1", "--timeout", "10")
	if code != 0 || raw(out) {
		t.Fatalf("--events: exit %d, raw escape sequences on stdout: %q", code, out)
	}
	found := false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var e events.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("--events line is not JSON: %v\n%s", err, sc.Text())
		}
		if strings.Contains(e.LastLine, "\x1b]0;pwned\x07") && strings.Contains(e.LastLine, "\u202eevil") {
			found = true
		}
	}
	if !found {
		t.Errorf("--events lost the script's text:\n%s", out)
	}
}

// `hooks run` of a maintenance stage on a host that runs VMs and is not in maintenance is
// refused, saying why: a Maintenance script may reboot the host under its VMs. PreFlight always
// runs; --force, or the host in maintenance, lets the others run.
func TestHooksRunMaintenanceStageRefusedOnALiveHost(t *testing.T) {
	t.Parallel()
	l := newRollingLab(t, 2, 1, 1)
	for _, s := range []string{"PreMaintenance", "Maintenance", "PostMaintenance"} {
		code, out, errOut := l.kvmctl("hooks", "run", "h1", s)
		if code != 2 || !strings.Contains(errOut, s+" on h1, which runs 1 VM and is not in maintenance") ||
			!strings.Contains(errOut, "kvmctl maintenance enable h1") || strings.Contains(out, "ok") {
			t.Errorf("hooks run h1 %s: exit %d, want 2 saying why\n%s%s", s, code, out, errOut)
		}
	}
	if got := countStage(l.logLines("h1"), "Maintenance"); got != 0 {
		t.Fatalf("a refused Maintenance ran %d times", got)
	}
	l.ok("hooks", "run", "h1", "PreFlight")
	l.ok("hooks", "run", "h1", "Maintenance", "--force")
	l.ok("maintenance", "enable", "h1")
	l.ok("hooks", "run", "h1", "Maintenance")
	if got := countStage(l.logLines("h1"), "Maintenance"); got != 2 {
		t.Errorf("Maintenance ran %d times, want 2 (forced, then in maintenance)", got)
	}
}
