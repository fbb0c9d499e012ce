package fence

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// ipmitool returns Debian's ipmitool wrapped in a script that logs, one line per run, the
// arguments ipmitool gets (NUL-separated, so each word is intact) and its environment's
// IPMI_PASSWORD, then runs it. The test fails, never skips, without ipmitool: `make deps`
// installs it.
func ipmitool(t *testing.T) (wrapper, argvLog, envLog string) {
	t.Helper()
	real, err := exec.LookPath("ipmitool")
	if err != nil {
		t.Fatalf("ipmitool is not installed (%v): run `make deps`, or apt-get install ipmitool", err)
	}
	dir := t.TempDir()
	wrapper, argvLog, envLog = filepath.Join(dir, "ipmitool"), filepath.Join(dir, "argv"), filepath.Join(dir, "env")
	script := "#!/bin/sh\n" +
		"printf '%s\\0' \"$@\" >> " + argvLog + "\n" +
		"echo >> " + argvLog + "\n" +
		"printf '%s\\n' \"$IPMI_PASSWORD\" >> " + envLog + "\n" +
		"exec " + real + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper, argvLog, envLog
}

// runs reads the argument lists a logging wrapper saw, one per run.
func runs(t *testing.T, log string) [][]string {
	t.Helper()
	data, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		out = append(out, strings.Split(strings.TrimSuffix(line, "\x00"), "\x00"))
	}
	return out
}

// ipmitool drives the same in-process BMC over both interfaces; the password reaches it
// through its environment, never its arguments.
func TestIPMIToolDriverDrivesTheChassis(t *testing.T) {
	for _, intf := range []string{bmcconf.InterfaceLanplus, bmcconf.InterfaceLan} {
		t.Run(intf, func(t *testing.T) {
			bmc := startBMC(t)
			wrapper, argvLog, envLog := ipmitool(t)
			opts := Options{Timeout: time.Second, Attempts: 2, IPMITool: wrapper}
			d := open(t, bmc.settings(bmcconf.DriverIPMITool, intf), opts)
			ctx := context.Background()
			if p, err := d.Status(ctx); err != nil || p != PowerOn {
				t.Fatalf("Status = %v, %v; want on", p, err)
			}
			for _, step := range []func(context.Context) error{d.Off, d.On, d.Reset, d.Soft, d.Identify, d.Off} {
				if err := step(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if p, err := d.Status(ctx); err != nil || p != PowerOff {
				t.Fatalf("Status after Off = %v, %v; want off", p, err)
			}
			want := []string{"power down", "power up", "hard reset", "soft shutdown", "identify 15", "power down"}
			if diff := cmp.Diff(want, bmc.chassis.Calls()); diff != "" {
				t.Errorf("the chassis was told (-want +got):\n%s", diff)
			}
			all := runs(t, argvLog)
			if len(all) != 8 {
				t.Fatalf("ipmitool ran %d times, want 8", len(all))
			}
			head := []string{"-I", intf, "-H", "127.0.0.1", "-p", strconv.Itoa(bmc.port), "-U", testUser, "-E", "-N", "1", "-R", "2"}
			if diff := cmp.Diff(append(head, "chassis", "power", "status"), all[0]); diff != "" {
				t.Errorf("argv of the status run (-want +got):\n%s", diff)
			}
			for _, argv := range all {
				for _, w := range argv {
					if strings.Contains(w, testPassword) {
						t.Errorf("the password is in ipmitool's arguments: %q", argv)
					}
				}
			}
			env, _ := os.ReadFile(envLog)
			if strings.Count(string(env), testPassword+"\n") != 8 {
				t.Errorf("IPMI_PASSWORD in ipmitool's environment, run by run: %q", env)
			}
		})
	}
}

// A wrong password fails with ipmitool's own words and without the password.
func TestIPMIToolDriverWrongPassword(t *testing.T) {
	bmc := startBMC(t)
	wrapper, _, _ := ipmitool(t)
	b := bmc.settings(bmcconf.DriverIPMITool, bmcconf.InterfaceLanplus)
	b.Password = "not-the-Pw"
	d := open(t, b, Options{Timeout: time.Second, Attempts: 1, IPMITool: wrapper})
	err := d.Off(context.Background())
	if err == nil {
		t.Fatal("Off with a wrong password succeeded")
	}
	t.Logf("error: %v", err)
	if !strings.Contains(err.Error(), "exited with status 1") || strings.Contains(err.Error(), b.Password) {
		t.Errorf("error = %v; want ipmitool's failure, without the password", err)
	}
	if calls := bmc.chassis.Calls(); len(calls) != 0 {
		t.Errorf("the chassis was told %q", calls)
	}
}

// ipmitool against a BMC that does not answer is killed once the driver's budget is spent.
func TestIPMIToolDriverTimeoutIsBounded(t *testing.T) {
	wrapper, _, _ := ipmitool(t)
	b := state.BMC{Driver: bmcconf.DriverIPMITool, Address: "127.0.0.1", Port: silentPort(t), Username: testUser, Password: testPassword}
	opts := Options{Timeout: time.Second, Attempts: 1, IPMITool: wrapper}
	d := open(t, b, opts)
	start := time.Now()
	_, err := d.Status(context.Background())
	if err == nil || time.Since(start) > opts.Budget()+2*time.Second {
		t.Errorf("Status of a silent BMC = %v after %s; want an error within %s", err, time.Since(start), opts.Budget())
	}
	t.Logf("error after %s: %v", time.Since(start), err)
}
