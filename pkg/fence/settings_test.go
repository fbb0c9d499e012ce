package fence

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

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
	if _, s := Effective(state.BMC{}, state.BMC{}); len(s) != len(FieldNames()) {
		t.Errorf("sources of nothing: %v", s)
	}
}

func TestGetUnsetChangedRedacted(t *testing.T) {
	b := state.BMC{Port: 623, Password: "pw", Actions: map[string]string{"off": "/x"}, Unknown: state.Unknown{"kg": []byte(`"k"`)}}
	if v, err := Get(b, "port"); v != "623" || err != nil {
		t.Errorf("Get port = %q, %v", v, err)
	}
	if _, err := Get(b, "colour"); err == nil || !strings.Contains(err.Error(), "driver, address, port") {
		t.Errorf("Get of an unknown field: %v", err)
	}
	before := b
	if err := Unset(&b, "action-off"); err != nil || b.Actions != nil {
		t.Errorf("Unset action-off: %v, %v", err, b.Actions)
	}
	if d := cmp.Diff([]string{"action-off"}, Changed(before, b)); d != "" {
		t.Errorf("Changed: %s", d)
	}
	r := Redacted(before)
	if r.Password != "set" || r.Unknown != nil || r.Actions["off"] != "/x" {
		t.Errorf("Redacted = %+v", r)
	}
	if Redacted(state.BMC{}).Password != "" {
		t.Error("Redacted invents a password")
	}
	if Default("port") != "623" || Default("driver") != "ipmi" || Default("interface") != "lanplus" || Default("username") != "" {
		t.Error("defaults")
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

func TestTemplateSplitAndSubstitute(t *testing.T) {
	vals := map[string]string{VarExec: "/opt/fence", VarUsername: "ad min", VarPassword: `p"w $x`, VarPasswordFile: "/tmp/f",
		VarAction: "off", VarHost: "bmc1", VarPort: "623", VarInterface: "lanplus"}
	for _, c := range []struct {
		in   string
		want []string
	}{
		{DefaultTemplate, []string{"/opt/fence", "--username", "ad min", "--password", `p"w $x`, "--command", "off", "--host", "bmc1"}},
		// Seed 002 spells some names in mixed case.
		{"$IPMI_EXEC --username $IPMI_Username --password $IPMI_password", []string{"/opt/fence", "--username", "ad min", "--password", `p"w $x`}},
		{`/bin/f -H ${IPMI_HOST}:$IPMI_PORT "-I $IPMI_INTERFACE" --pwfile=$IPMI_PASSWORD_FILE`, []string{"/bin/f", "-H", "bmc1:623", "-I lanplus", "--pwfile=/tmp/f"}},
		// Other dollars, and what a shell would run, stay literal text: nothing runs them.
		{`/bin/f '$(reboot)' "$HOME" $ $1 ${x} 'a;b' "" $(reboot) ` + "`reboot`", []string{"/bin/f", "$(reboot)", "$HOME", "$", "$1", "${x}", "a;b", "", "$(reboot)", "`reboot`"}},
	} {
		tm, err := parseTemplate("off", c.in)
		if err != nil {
			t.Errorf("parseTemplate(%q): %v", c.in, err)
			continue
		}
		if d := cmp.Diff(c.want, tm.expand(vals)); d != "" {
			t.Errorf("expand(%q) (-want +got):\n%s", c.in, d)
		}
	}
	for in, want := range map[string]string{
		"":                                      "the off template is empty",
		"fence $IPMI_HOST":                      "must start with $IPMI_EXEC or an absolute program path",
		"$IPMI_EXEC$IPMI_HOST":                  "must start with $IPMI_EXEC",
		"/f $IPMI_HOTS":                         "unknown variable $IPMI_HOTS",
		"/f ${ipmi_passwd}":                     "unknown variable $ipmi_passwd",
		"/f $IPMI_PASSWORD $IPMI_PASSWORD_FILE": "uses both $IPMI_PASSWORD and $IPMI_PASSWORD_FILE",
		"/f 'unbalanced":                        "split off template",
		"/f; reboot":                            `unquoted ';'`,
		"/f > /etc/passwd":                      `unquoted '>'`,
		"/f a\x00b":                             "NUL",
		"/f $IPMI_HOST\n/bin/reboot":            "control character",
		"/f --host=$IPMI_HOST --pass=$IPMI_PASS1": "unknown variable $IPMI_PASS1",
	} {
		if err := CheckTemplate("off", in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckTemplate(%q) = %v; want %q", in, err, want)
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
