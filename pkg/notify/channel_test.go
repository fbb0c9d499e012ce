package notify

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Check refuses what would not work, naming the field, and never shows a secret.
func TestCheckRefuses(t *testing.T) {
	mail := mailChannel("smtp.example.net:587")
	snmp := state.NotifyChannel{Name: "traps", Type: state.NotifySNMP, Target: "10.0.0.5:162", Community: "public"}
	hook := hookChannel("https://hooks.example.net/kvmctl")
	for _, ok := range []state.NotifyChannel{mail, snmp, hook, with(mail, func(c *state.NotifyChannel) {
		c.SMTP, c.Username, c.Password = "localhost:25", "kvmctl", testPassword
	})} {
		if err := Check(ok); err != nil {
			t.Errorf("Check(%s): %v", ok.Name, err)
		}
	}
	for _, c := range []struct {
		ch   state.NotifyChannel
		want string
	}{
		{with(mail, func(c *state.NotifyChannel) { c.Name = "bad name" }), `invalid channel name "bad name"`},
		{with(mail, func(c *state.NotifyChannel) { c.Type = "pager" }), `unknown channel type "pager": use email, snmp or webhook`},
		{with(mail, func(c *state.NotifyChannel) { c.SMTP = "smtp.example.net" }),
			`invalid SMTP server "smtp.example.net": want host:port of the mail server, e.g. smtp.example.net:587`},
		{with(mail, func(c *state.NotifyChannel) { c.SMTP = "smtp.example.net:0" }), `the port must be a number from 1 to 65535`},
		{with(mail, func(c *state.NotifyChannel) { c.From = "kvmctl" }), `invalid sender address "kvmctl": want a mail address`},
		{with(mail, func(c *state.NotifyChannel) { c.To = nil }), `no recipient`},
		{with(mail, func(c *state.NotifyChannel) { c.To = []string{"ops@example.net\r\nBcc: x@y"} }),
			`invalid recipient address "ops@example.net\r\nBcc: x@y": control character U+000D`},
		{with(mail, func(c *state.NotifyChannel) { c.Username = "kvmctl" }), `SMTP username "kvmctl" without a password`},
		{with(mail, func(c *state.NotifyChannel) { c.Password = testPassword }), `an SMTP password without a username`},
		{with(mail, func(c *state.NotifyChannel) { c.Username, c.Password = "kvmctl", testPassword }),
			`SMTP login to smtp.example.net:587 without STARTTLS would send the password in clear`},
		{with(mail, func(c *state.NotifyChannel) { c.CAFile = "/etc/ssl/ca.pem" }), `a CA file is only used with STARTTLS`},
		{with(mail, func(c *state.NotifyChannel) { c.StartTLS, c.CAFile = true, "/nonexistent.pem" }), `read CA file: open /nonexistent.pem`},
		{with(mail, func(c *state.NotifyChannel) {
			c.StartTLS, c.Username, c.Password = true, "kvmctl", testPassword+"\x1b"
		}), `the SMTP password holds a control character U+001B at byte 24: a secret is one line of printable text`},
		{with(snmp, func(c *state.NotifyChannel) { c.Target = "10.0.0.5" }), `invalid trap receiver "10.0.0.5": want host:port of the SNMP trap receiver`},
		{with(snmp, func(c *state.NotifyChannel) { c.Community = "" }), `invalid SNMP community "": use 1 to 255 characters`},
		{with(snmp, func(c *state.NotifyChannel) { c.Community = "pub\tlic" }), `invalid SNMP community "pub\tlic": control character U+0009 at byte 3`},
		{with(snmp, func(c *state.NotifyChannel) { c.Community = "pub\u0085" }), `C1 control character U+0085`},
		{with(hook, func(c *state.NotifyChannel) { c.URL = "ftp://hooks.example.net/" }), `the scheme must be http or https, not "ftp"`},
		{with(hook, func(c *state.NotifyChannel) { c.URL = "hooks.example.net/kvmctl" }), `the scheme must be http or https, not ""`},
		{with(hook, func(c *state.NotifyChannel) { c.URL = "https:///kvmctl" }), `no host`},
		{with(hook, func(c *state.NotifyChannel) { c.URL = "https://u:pa55@hooks.example.net/" }), `"https://u:xxxxx@hooks.example.net/": no user or password in the URL`},
		{with(hook, func(c *state.NotifyChannel) { c.URL = "https://hooks.example.net:99999/" }), `the port must be a number from 1 to 65535`},
		{with(hook, func(c *state.NotifyChannel) { c.URL = "https://hooks.example.net/#x" }), `a #fragment is never sent`},
		{with(hook, func(c *state.NotifyChannel) { c.URL, c.CAFile = "http://hooks.example.net/", "/ca.pem" }), `a CA file is only used with an https:// URL`},
		{with(hook, func(c *state.NotifyChannel) { c.Secret = "short" }), `the webhook secret has 5 bytes: use at least 16`},
	} {
		err := Check(c.ch)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%+v) = %v, want %q", c.ch, err, c.want)
			continue
		}
		if !errs.IsRefused(err) {
			t.Errorf("Check: %v is not a refusal (exit 2)", err)
		}
		for _, secret := range []string{testPassword, "short", "pa55"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Check: %v shows the secret", err)
			}
		}
	}
}

func with(c state.NotifyChannel, change func(*state.NotifyChannel)) state.NotifyChannel {
	c.To = append([]string(nil), c.To...)
	change(&c)
	return c
}

// A secret file must be a regular file of its owner's alone, one line of printable text; the
// final newline is dropped; refusals never show the secret.
func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, c := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"newline":  {testPassword + "\n", 0o600, testPassword},
		"crlf":     {testPassword + "\r\n", 0o400, testPassword},
		"no-final": {testPassword, 0o600, testPassword},
	} {
		got, err := ReadSecretFile("SMTP password", write(name, c.content, c.mode))
		if err != nil || got != c.want {
			t.Errorf("%s: %q, %v", name, got, err)
		}
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		path string
		want string
	}{
		"group":   {write("group", testPassword, 0o640), "is readable by group (mode 0640): chmod 600 "},
		"others":  {write("others", testPassword, 0o604), "is readable by others (mode 0604)"},
		"gwrite":  {write("gwrite", testPassword, 0o620), "is accessible by group or others (mode 0620)"},
		"empty":   {write("empty", "\n", 0o600), "is empty: write the secret in it"},
		"two":     {write("two", testPassword+"\nsecond\n", 0o600), "holds a control character U+000A at byte 24"},
		"long":    {write("long", strings.Repeat("x", 5000), 0o600), "is longer than 4096 bytes"},
		"missing": {filepath.Join(dir, "nope"), "no such file or directory"},
		"dir":     {dir, "is not a regular file"},
		"fifo":    {fifo, "is not a regular file"},
	} {
		_, err := ReadSecretFile("SMTP password", c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) || !errs.IsRefused(err) {
			t.Errorf("%s: %v, want a refusal saying %q", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), testPassword) {
			t.Errorf("%s: the refusal shows the secret: %v", name, err)
		}
	}
}

// AddChannel names a channel after its type when it has no name, refuses a name taken, and
// RemoveChannel refuses a name unknown. Redact shows "set" for each secret and drops fields a
// newer kvmctl wrote.
func TestAddRemoveRedact(t *testing.T) {
	db := state.NewMemory()
	var names []string
	for _, c := range []state.NotifyChannel{
		with(mailChannel("smtp.example.net:25"), func(c *state.NotifyChannel) { c.Name = "" }),
		with(mailChannel("smtp.example.net:25"), func(c *state.NotifyChannel) { c.Name = "" }),
		{Type: state.NotifySNMP, Target: "10.0.0.5:162", Community: "public"},
	} {
		err := db.Update(func(tx state.Tx) error {
			got, err := AddChannel(tx, c)
			names = append(names, got.Name)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if d := cmp.Diff([]string{"email", "email-2", "snmp"}, names); d != "" {
		t.Errorf("names (-want +got):\n%s", d)
	}
	err := db.Update(func(tx state.Tx) error {
		_, err := AddChannel(tx, with(mailChannel("smtp.example.net:25"), func(c *state.NotifyChannel) { c.Name = "email-2" }))
		return err
	})
	if err == nil || err.Error() != "notification channel \"email-2\" exists: `kvmctl notify rm email-2` first to replace it" || !errs.IsRefused(err) {
		t.Errorf("duplicate: %v", err)
	}
	err = db.Update(func(tx state.Tx) error { _, err := RemoveChannel(tx, "nope"); return err })
	if err == nil || err.Error() != "no notification channel \"nope\": `kvmctl notify list` shows them" {
		t.Errorf("rm nope: %v", err)
	}

	c := hookChannel("https://hooks.example.net/")
	c.Unknown = state.Unknown{"token": []byte(`"t0k3n"`)}
	r := Redact(c)
	if r.Secret != "set" || r.Unknown != nil || c.Secret != testSecret {
		t.Errorf("Redact: %+v (the original: %+v)", r, c)
	}
	m := mailChannel("localhost:25")
	m.Username, m.Password = "kvmctl", testPassword
	if r := Redact(m); r.Password != "set" || r.Username != "kvmctl" {
		t.Errorf("Redact: %+v", r)
	}
	if r := Redact(mailChannel("localhost:25")); r.Password != "" {
		t.Errorf("Redact of a channel without a password: %+v", r)
	}
}
