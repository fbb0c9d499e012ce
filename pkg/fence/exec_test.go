package fence

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// fenceScript writes a BMC program that logs its arguments (NUL-separated, a line per run) and,
// when it is given a password file, the file's mode and content; it keeps the power state in a
// file, answers status with it, and fails (echoing the password on stderr) when asked to.
func fenceScript(t *testing.T) (script, argvLog, fileLog string) {
	t.Helper()
	dir := t.TempDir()
	script, argvLog, fileLog = filepath.Join(dir, "fence-agent"), filepath.Join(dir, "argv"), filepath.Join(dir, "file")
	power := filepath.Join(dir, "power")
	body := `#!/bin/sh
printf '%s\0' "$@" >> ` + argvLog + `
echo >> ` + argvLog + `
action=
while [ $# -gt 0 ]; do
	case "$1" in
	--command) action=$2; shift ;;
	--password-file) stat -c %a "$2" >> ` + fileLog + `; cat "$2" >> ` + fileLog + `; echo >> ` + fileLog + ` ;;
	--fail) echo "login failed for $2" >&2; exit 3 ;;
	--hang) sleep 30 & wait; exit 0 ;;
	esac
	shift
done
case "$action" in
off|on) echo "$action" > ` + power + ` ;;
status) echo "Status of the chassis:"; echo "Power is $(cat ` + power + ` 2>/dev/null || echo on)" ;;
esac
`
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return script, argvLog, fileLog
}

// The seed's template: the exec program with the seed's flags, one argument per word, values
// with spaces intact; the status output read as the power state.
func TestExecDriverDefaultTemplate(t *testing.T) {
	script, argvLog, _ := fenceScript(t)
	b := state.BMC{Driver: bmcconf.DriverExec, Exec: script, Address: "10.0.0.9", Username: "ad min", Password: testPassword}
	d := open(t, b, fast)
	ctx := context.Background()
	if err := d.Off(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err := d.Status(ctx); err != nil || p != PowerOff {
		t.Fatalf("Status = %v, %v; want off", p, err)
	}
	for _, step := range []func(context.Context) error{d.On, d.Reset, d.Identify, d.(Tester).Test} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Soft(ctx); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Soft = %v; want ErrUnsupported", err)
	}
	var commands []string
	for _, argv := range runs(t, argvLog) {
		commands = append(commands, argv[5])
	}
	if diff := cmp.Diff([]string{"off", "status", "on", "reboot", "blink", "test"}, commands); diff != "" {
		t.Errorf("--command of each run (-want +got):\n%s", diff)
	}
	want := []string{"--username", "ad min", "--password", testPassword, "--command", "off", "--host", "10.0.0.9"}
	if diff := cmp.Diff(want, runs(t, argvLog)[0]); diff != "" {
		t.Errorf("argv of off (-want +got):\n%s", diff)
	}
	if got := bmcconf.PasswordInArgs(b); len(got) != len(bmcconf.TemplateActions) {
		t.Errorf("PasswordInArgs = %q; want every action: the default template passes it", got)
	}
}

// A template with $IPMI_PASSWORD_FILE: the password reaches the program in a 0600 file that is
// gone afterwards, and in no argument; words hold what a shell would have read as syntax.
func TestExecDriverPasswordFile(t *testing.T) {
	script, argvLog, fileLog := fenceScript(t)
	tmp := t.TempDir()
	tmpl := script + ` --user "$IPMI_USERNAME" --password-file $IPMI_PASSWORD_FILE --host ${IPMI_HOST}:$IPMI_PORT --command $IPMI_ACTION 'a; rm -rf /' "$(id)" '$HOME'`
	b := state.BMC{Driver: bmcconf.DriverExec, Address: "bmc1.example", Username: `o'brien "x"`, Password: "pa ss;$(reboot)",
		Actions: map[string]string{"off": tmpl, "status": tmpl}}
	d := open(t, b, Options{TempDir: tmp})
	if err := d.Off(context.Background()); err != nil {
		t.Fatal(err)
	}
	argv := runs(t, argvLog)[0]
	want := []string{"--user", `o'brien "x"`, "--password-file", argv[3], "--host", "bmc1.example:623", "--command", "off", "a; rm -rf /", "$(id)", "$HOME"}
	if diff := cmp.Diff(want, argv); diff != "" {
		t.Errorf("argv (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(argv[3], tmp+"/") {
		t.Errorf("password file %s is not in the temp dir %s", argv[3], tmp)
	}
	for _, w := range argv {
		if strings.Contains(w, b.Password) {
			t.Errorf("the password is in the arguments: %q", argv)
		}
	}
	if got, _ := os.ReadFile(fileLog); string(got) != "600\n"+b.Password+"\n" {
		t.Errorf("the program read mode and password %q; want 600 and the password", got)
	}
	if _, err := os.Stat(argv[3]); !os.IsNotExist(err) {
		t.Errorf("the password file is still there: %v", err)
	}
	if got := bmcconf.PasswordInArgs(b); len(got) != 0 {
		t.Errorf("PasswordInArgs = %q; want none", got)
	}
	// Without an exec program, an action without a template of its own is unsupported.
	if err := d.On(context.Background()); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "--action-on") {
		t.Errorf("On = %v; want ErrUnsupported naming --action-on", err)
	}
}

// A program that fails is an error with the end of its stderr, the password never in it.
func TestExecDriverFailureShowsStderrWithoutPassword(t *testing.T) {
	script, _, _ := fenceScript(t)
	b := state.BMC{Driver: bmcconf.DriverExec, Address: "10.0.0.9", Username: "u", Password: testPassword,
		Actions: map[string]string{"off": script + " --fail $IPMI_PASSWORD_FILE", "on": script + " --fail x"}}
	d := open(t, b, fast)
	err := d.Off(context.Background())
	if err == nil || !strings.Contains(err.Error(), "exited with status 3: login failed for /") {
		t.Fatalf("Off = %v; want the exit status and stderr", err)
	}
	b.Actions["off"] = script + " --fail " + testPassword[2:] // a template may hold anything; stderr echoes it
	b.Actions["on"] = script + " --fail $IPMI_PASSWORD"
	d = open(t, b, fast)
	err = d.On(context.Background())
	if err == nil || strings.Contains(err.Error(), testPassword) || !strings.Contains(err.Error(), "login failed for [password]") {
		t.Errorf("On = %v; want stderr with the password redacted", err)
	}
}

// A program that hangs, its children with it, is killed once the budget is spent.
func TestExecDriverTimeoutIsBounded(t *testing.T) {
	script, _, _ := fenceScript(t)
	b := state.BMC{Driver: bmcconf.DriverExec, Actions: map[string]string{"off": script + " --hang"}}
	opts := Options{Timeout: 200 * time.Millisecond, Attempts: 1}
	d := open(t, b, opts)
	start := time.Now()
	err := d.Off(context.Background())
	if err == nil || !strings.Contains(err.Error(), "did not finish in time and was killed") || time.Since(start) > 3*time.Second {
		t.Errorf("Off of a hanging program = %v after %s", err, time.Since(start))
	}
}

// A status whose output says neither on nor off is an error, not a guess.
func TestExecDriverStatusNotUnderstood(t *testing.T) {
	b := state.BMC{Driver: bmcconf.DriverExec, Actions: map[string]string{"status": "/bin/echo power maybe"}}
	p, err := open(t, b, fast).Status(context.Background())
	if err == nil || p != PowerUnknown || !strings.Contains(err.Error(), `"power maybe"`) {
		t.Errorf("Status = %v, %v", p, err)
	}
}
