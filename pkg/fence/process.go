package fence

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// Output kept of a program the ipmitool and exec drivers run: the start of its stdout (where
// the power state is), the end of its stderr (where the reason of a failure is).
const (
	maxStdout  = 64 << 10
	stderrTail = 512
)

// program is one run of a BMC program: its arguments (no shell ever reads them), the
// environment it adds, and the secret no error may repeat.
type program struct {
	argv   []string
	env    []string
	secret string
}

// run runs p under ctx, in a process group of its own that is killed when ctx ends, and
// returns its stdout. A program that cannot start, exits non-zero or outlives ctx is an error
// carrying the end of its stderr, the secret replaced wherever it appears.
func (p program) run(ctx context.Context) (string, error) {
	cmd := exec.CommandContext(ctx, p.argv[0], p.argv[1:]...)
	cmd.Env = append(os.Environ(), p.env...)
	stdout := &headBuffer{max: maxStdout}
	stderr := &tailBuffer{max: stderrTail + len(p.secret)}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// A program's children may hold its pipes open after it is killed: Wait gives up on them.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	out := redact(stdout.String(), p.secret)
	if err == nil {
		return out, nil
	}
	why := err.Error()
	var ee *exec.ExitError
	switch {
	case !errors.As(err, &ee) && ctx.Err() == nil:
		return "", fmt.Errorf("run %s: %w", p.argv[0], err)
	case ctx.Err() != nil:
		why = "did not finish in time and was killed"
		if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			why = "was stopped: " + ctx.Err().Error()
		}
	case errors.As(err, &ee) && ee.Exited():
		why = fmt.Sprintf("exited with status %d", ee.ExitCode())
	}
	msg := stderr.text(p.secret)
	if msg == "" {
		msg = strings.TrimSpace(tail(out, stderrTail))
	}
	if msg == "" {
		return out, fmt.Errorf("%s %s", p.argv[0], why)
	}
	return out, fmt.Errorf("%s %s: %s", p.argv[0], why, msg)
}

// redact replaces every occurrence of secret in s.
func redact(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "[password]")
}

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	max int
	b   []byte
}

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := h.max - len(h.b); room > 0 {
		h.b = append(h.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (h *headBuffer) String() string { return string(h.b) }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
	cut bool // older bytes were dropped
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append([]byte(nil), t.b[over:]...)
		t.cut = true
	}
	return len(p), nil
}

// text returns the kept bytes, trimmed, with secret redacted. The buffer holds len(secret)
// bytes more than is shown: when older bytes were dropped, a secret cut in two at the start
// cannot be matched, so that much is dropped after redaction.
func (t *tailBuffer) text(secret string) string {
	s := redact(string(t.b), secret)
	if t.cut {
		s = s[min(len(s), len(secret)):]
	}
	return strings.TrimSpace(tail(s, stderrTail))
}

// tail returns the last n bytes of s, without a rune cut in two at its start.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[len(s)-n:]
	for i := 0; i < utf8.UTFMax && len(s) > 0 && !utf8.RuneStart(s[0]); i++ {
		s = s[1:]
	}
	return s
}

// powerLine is a line that says the power state: "on", "off", "power on", "power: off",
// "power is on", "power status: off", ipmitool's "Chassis Power is on"; any case, a final '.'
// allowed.
var powerLine = regexp.MustCompile(`(?i)^(?:chassis\s+)?(?:power(?:\s+status)?\s*(?:is\s+|:\s*|\s)\s*)?(on|off)\.?$`)

// parsePower reads the power state from a program's output: its last non-empty line must be a
// powerLine.
func parsePower(out string) (Power, error) {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	m := powerLine.FindStringSubmatch(last)
	if m == nil {
		return PowerUnknown, fmt.Errorf("cannot read a power state from %q: want a last line such as \"on\", \"off\", \"power is off\" or \"Chassis Power is on\"", tail(last, 80))
	}
	return Power(strings.ToLower(m[1])), nil
}

// powerOf is the power state a program that ran (err is how it ended) printed; what names the
// request in the error of output that says no state.
func powerOf(out string, err error, what string) (Power, error) {
	if err != nil {
		return PowerUnknown, err
	}
	p, err := parsePower(out)
	if err != nil {
		return PowerUnknown, fmt.Errorf("%s: %w", what, err)
	}
	return p, nil
}
