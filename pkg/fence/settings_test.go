package fence

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/bmcconf"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// A host's field wins over its cluster's, field by field, templates included; the sources say
// which one each value came from, and "" for fields neither sets.
func TestEffective(t *testing.T) {
	cluster := state.BMC{Driver: "ipmitool", Username: "admin", Password: "cpw", Action: "off", Port: 6230,
		Actions: map[string]string{"off": "/c off", "status": "/c status"}}
	host := state.BMC{Address: "10.0.0.9", Password: "hpw", Interface: "lan",
		Actions: map[string]string{"status": "/h status"}, Unknown: state.Unknown{"kg": []byte(`"x"`)}}
	got, sources := Effective(cluster, host)
	want := state.BMC{Driver: "ipmitool", Address: "10.0.0.9", Port: 6230, Username: "admin", Password: "hpw", Interface: "lan",
		Action: "off", Actions: map[string]string{"off": "/c off", "status": "/h status"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Effective (-want +got):\n%s", d)
	}
	wantSources := map[string]string{
		"driver": "cluster", "address": "host", "port": "cluster", "username": "cluster", "password": "host",
		"interface": "host", "action": "cluster", "exec": "", "action-off": "cluster", "action-on": "",
		"action-reboot": "", "action-blink": "", "action-status": "host", "action-test": "",
	}
	if d := cmp.Diff(wantSources, sources); d != "" {
		t.Errorf("sources (-want +got):\n%s", d)
	}
	// The inputs are not changed, and the result shares no map with them.
	got.Actions["off"] = "changed"
	if cluster.Actions["off"] != "/c off" || len(host.Actions) != 1 {
		t.Errorf("Effective changed its inputs: %v %v", cluster.Actions, host.Actions)
	}
	if _, s := Effective(state.BMC{}, state.BMC{}); len(s) != len(bmcconf.FieldNames()) {
		t.Errorf("sources of nothing: %v", s)
	}
}

// Missing names what each driver needs; Open refuses with those names and the command that
// sets them.
func TestMissingAndOpenRefusals(t *testing.T) {
	cases := []struct {
		b    state.BMC
		want []string
	}{
		{state.BMC{}, []string{"address", "username", "password"}},
		{state.BMC{Driver: "ipmitool", Address: "a", Username: "u"}, []string{"password"}},
		{state.BMC{Address: "a", Username: "u", Password: "p"}, nil},
		{state.BMC{Driver: "exec"}, []string{"exec"}},
		// The default template reads every credential.
		{state.BMC{Driver: "exec", Exec: "/x"}, []string{"address", "username", "password"}},
		// A template reads only what it names.
		{state.BMC{Driver: "exec", Actions: map[string]string{"off": "/x $IPMI_HOST"}}, []string{"address"}},
		{state.BMC{Driver: "exec", Actions: map[string]string{"off": "$IPMI_EXEC --pw-file $IPMI_PASSWORD_FILE"}}, []string{"password", "exec"}},
	}
	for _, c := range cases {
		got := Missing(c.b)
		if d := cmp.Diff(c.want, got); d != "" {
			t.Errorf("Missing(%+v) (-want +got):\n%s", c.b, d)
		}
		_, err := Open(c.b, "h1", Options{})
		if (err == nil) != (len(c.want) == 0) {
			t.Errorf("Open(%+v) = %v", c.b, err)
		}
		if err != nil && (!errs.IsRefused(err) || !strings.Contains(err.Error(), "kvmctl bmc set --host h1 --"+c.want[0])) {
			t.Errorf("Open(%+v) = %v; want a refusal naming `kvmctl bmc set --host h1 --%s`", c.b, err, c.want[0])
		}
	}
	for _, b := range []state.BMC{
		{Driver: "redfish", Address: "a", Username: "u", Password: "p"},
		{Interface: "serial", Address: "a", Username: "u", Password: "p"},
		{Address: "a", Username: "a-user-name-of-17", Password: "p"},
		{Address: "a", Username: "u", Password: "twenty-one-bytes-long"},
		{Address: "a", Username: "u", Password: "seventeen-bytes-x", Interface: "lan"},
	} {
		if _, err := Open(b, "h1", Options{}); !errs.IsRefused(err) {
			t.Errorf("Open(%+v) = %v; want a refusal", b, err)
		}
	}
}

func TestParsePower(t *testing.T) {
	for out, want := range map[string]Power{
		"on": PowerOn, "OFF\n": PowerOff, "Chassis Power is on\n": PowerOn, "chassis power is off.": PowerOff,
		"power on": PowerOn, "Power: off": PowerOff, "power status: on": PowerOn, "Power is off": PowerOff,
		"connecting...\nlogged in\nPower is on\n\n": PowerOn,
	} {
		if got, err := parsePower(out); got != want || err != nil {
			t.Errorf("parsePower(%q) = %v, %v; want %v", out, got, err, want)
		}
	}
	for _, out := range []string{"", "unknown", "power on\nerror", "onoff", "power is maybe", "not on", "Chassis Power Control: Down/Off"} {
		if got, err := parsePower(out); err == nil || got != PowerUnknown {
			t.Errorf("parsePower(%q) = %v, %v; want an error", out, got, err)
		}
	}
}

// The stderr tail never shows the password, not even part of one cut at its start.
func TestTailBufferRedacts(t *testing.T) {
	secret := "correct-horse"
	tb := &tailBuffer{max: stderrTail + len(secret)}
	_, _ = tb.Write([]byte(strings.Repeat("x", 1000) + secret + strings.Repeat("y", stderrTail-len(secret)/2) + "\n" + secret + " end\n"))
	got := tb.text(secret)
	if strings.Contains(got, "horse") || strings.Contains(got, "correct") || !strings.HasSuffix(got, "[password] end") {
		t.Errorf("tail = %q", got)
	}
}
