package cmdutil

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
	"github.com/kvmctl/kvmctl/pkg/state"
)

func TestExitCode(t *testing.T) {
	for err, want := range map[error]int{
		nil:                  ExitOK,
		errs.Refusedf("bad"): ExitRefused,
		fmt.Errorf("wrap: %w", errs.Refusedf("bad")):   ExitRefused,
		fmt.Errorf("x: %w", state.ErrNotInitialized):   ExitRefused,
		errors.New(`unknown command "x" for "kvmctl"`): ExitRefused,
		errors.New("agent h1 is unreachable"):          ExitFailed,
		ErrSilent:                                      ExitFailed,
	} {
		if got := ExitCode(err); got != want {
			t.Errorf("ExitCode(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestStatePath(t *testing.T) {
	ios, _, _, _ := iostreams.Test()
	env := map[string]string{}
	f := New(ios)
	f.Getenv = func(k string) string { return env[k] }
	env["XDG_STATE_HOME"] = "/x"
	if p, _ := f.StatePath(); p != "/x/kvmctl/state.db" {
		t.Errorf("with XDG_STATE_HOME: %s", p)
	}
	env[EnvState] = "/e/s.db"
	if p, _ := f.StatePath(); p != "/e/s.db" {
		t.Errorf("with KVMCTL_STATE: %s", p)
	}
	f.StateFlag = "/f/s.db"
	if p, _ := f.StatePath(); p != "/f/s.db" {
		t.Errorf("--state must win: %s", p)
	}
	if d, _ := f.PKIDir(); d != filepath.Join("/f", "pki") {
		t.Errorf("PKIDir = %s, want pki beside the state file", d)
	}
}

func TestTimeFlags(t *testing.T) {
	for in, want := range map[string]time.Duration{"30": 30 * time.Second, "30s": 30 * time.Second, "2m": 2 * time.Minute, "1500ms": 1500 * time.Millisecond} {
		var d time.Duration
		if err := (durationValue{&d}).Set(in); err != nil || d != want {
			t.Errorf("duration %q = %s, %v; want %s", in, d, err, want)
		}
	}
	var n int
	if err := (secondsValue{&n}).Set("1500ms"); err != nil || n != 2 {
		t.Errorf("seconds 1500ms = %d, %v; want 2 (rounded up)", n, err)
	}
	for _, bad := range []string{"soon", "-5", "1e9"} {
		var d time.Duration
		if err := (durationValue{&d}).Set(bad); err == nil {
			t.Errorf("duration %q accepted", bad)
		}
	}
}
