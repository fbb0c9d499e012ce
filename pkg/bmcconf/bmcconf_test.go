package bmcconf

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/state"
)

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
		tm, err := ParseTemplate("off", c.in)
		if err != nil {
			t.Errorf("parseTemplate(%q): %v", c.in, err)
			continue
		}
		if d := cmp.Diff(c.want, tm.Expand(vals)); d != "" {
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
