package inventory

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

const bmcFile = `zones:
  - name: z1
    pods:
      - name: p1
        clusters:
          - name: c1
            bmc:
              driver: ipmi
              username: admin
              password_file: secrets/c1.pw
              action: "off"
            hosts:
              - name: h1
                address: "10.0.0.1:9250"
                bmc:
                  address: 10.0.1.1
                  port: 6230
              - name: h2
                address: "10.0.0.2:9250"
                bmc:
                  driver: exec
                  exec: /opt/fence/agent
                  actions:
                    status: $IPMI_EXEC --password-file $IPMI_PASSWORD_FILE --host $IPMI_HOST status
`

// writePassword writes a password file of mode perm under dir.
func writePassword(t *testing.T, dir, name, content string, perm os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
}

func getBMC(t *testing.T, s *state.Store, kind, name string) state.BMC {
	t.Helper()
	var b state.BMC
	if err := s.View(func(tx state.Tx) (err error) { b, err = state.GetBMC(tx, kind, name); return err }); err != nil {
		t.Fatal(err)
	}
	return b
}

// bmc blocks set a cluster's and its hosts' settings; the password comes from a file beside the
// inventory file, and export writes none, so applying the export changes nothing and keeps it.
func TestApplyAndExportBMC(t *testing.T) {
	dir := t.TempDir()
	writePassword(t, dir, "secrets/c1.pw", "s3cret-Pw\n", 0o600)
	s := newStore(t)
	name := filepath.Join(dir, "fleet.yaml")
	if _, err := applyFile(t, s, name, []byte(bmcFile)); err != nil {
		t.Fatal(err)
	}
	want := state.BMC{Driver: "ipmi", Username: "admin", Password: "s3cret-Pw", Action: "off"}
	if d := cmp.Diff(want, getBMC(t, s, "cluster", "c1")); d != "" {
		t.Errorf("c1's BMC (-want +got):\n%s", d)
	}
	if d := cmp.Diff(state.BMC{Address: "10.0.1.1", Port: 6230}, getBMC(t, s, "host", "h1")); d != "" {
		t.Errorf("h1's BMC (-want +got):\n%s", d)
	}
	out := export(t, s)
	if strings.Contains(string(out), "s3cret") || strings.Contains(string(out), "password_file") {
		t.Errorf("export shows the password or its file:\n%s", out)
	}
	for _, w := range []string{"port: 6230", "action: \"off\"", "exec: /opt/fence/agent", "status: $IPMI_EXEC --password-file"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("export lacks %q:\n%s", w, out)
		}
	}
	sum, err := applyFile(t, s, "exported.yaml", out)
	if err != nil || len(sum.Updated)+len(sum.Created) != 0 {
		t.Errorf("apply of the export = %+v, %v; want nothing changed", sum, err)
	}
	if got := getBMC(t, s, "cluster", "c1").Password; got != "s3cret-Pw" {
		t.Errorf("the password after applying the export is %q", got)
	}
	// A changed block updates the cluster and is named, so the CLI can check its holds.
	changed := strings.Replace(bmcFile, `action: "off"`, `action: reboot`, 1)
	sum, err = applyFile(t, s, name, []byte(changed))
	if err != nil || sum.Updated["clusters"] != 1 || len(sum.UpdatedClusters) != 1 || len(sum.UpdatedHosts) != 0 {
		t.Errorf("apply changing c1's action = %+v, %v", sum, err)
	}
	changed = strings.Replace(changed, "port: 6230", "port: 6231", 1)
	if sum, err = applyFile(t, s, name, []byte(changed)); err != nil || len(sum.UpdatedHosts) != 1 || sum.UpdatedHosts[0] != "h1" {
		t.Errorf("apply changing h1's port = %+v, %v", sum, err)
	}
}

// A bad bmc block is refused with the line of the key at fault, and nothing is applied.
func TestBMCRefusals(t *testing.T) {
	dir := t.TempDir()
	writePassword(t, dir, "secrets/c1.pw", "s3cret-Pw\n", 0o600)
	writePassword(t, dir, "open.pw", "s3cret-Pw\n", 0o644)
	writePassword(t, dir, "empty.pw", "\n", 0o600)
	writePassword(t, dir, "ctl.pw", "s3cret\x1bPw", 0o600)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	name := filepath.Join(dir, "f.yaml")
	for what, c := range map[string]struct{ old, new, want string }{
		"world-readable file": {"secrets/c1.pw", "open.pw", "f.yaml:10: password file " + dir + "/open.pw has mode 0644: group or others may read or change it; run `chmod 600"},
		"missing file":        {"secrets/c1.pw", "nope.pw", "f.yaml:10: password file: open " + dir + "/nope.pw: no such file"},
		"a directory":         {"secrets/c1.pw", "adir", "f.yaml:10: password file " + dir + "/adir is not a regular file"},
		"empty file":          {"secrets/c1.pw", "empty.pw", "f.yaml:10: password file " + dir + "/empty.pw holds no password"},
		"control character":   {"secrets/c1.pw", "ctl.pw", "control character U+001B at byte 6 (the password is not shown)"},
		"the password itself": {"password_file: secrets/c1.pw", "password: s3cret-Pw", `f.yaml:10: unknown field "password"`},
		"unknown driver":      {"driver: ipmi", "driver: redfish", `f.yaml:8: unknown BMC driver "redfish": use ipmi, ipmitool, exec`},
		"bad port":            {"port: 6230", "port: 70000", "f.yaml:17: invalid BMC port 70000: use 1 to 65535"},
		"address with a port": {"address: 10.0.1.1", "address: 10.0.1.1:623", `f.yaml:16: invalid BMC address "10.0.1.1:623": give the host "10.0.1.1" alone`},
		"bad address":         {"address: 10.0.1.1", "address: 'bmc 1'", `f.yaml:16: invalid BMC address "bmc 1"`},
		"relative exec":       {"exec: /opt/fence/agent", "exec: agent", `f.yaml:22: invalid BMC exec program "agent": give its absolute path`},
		"bad interface":       {"action: \"off\"", "interface: serial", `f.yaml:11: unknown BMC interface "serial": use lanplus, lan`},
		"bad action":          {"action: \"off\"", "action: explode", `f.yaml:11: unknown BMC action "explode": use none, off, reboot, blink`},
		"unknown template":    {"status: $IPMI_EXEC", "stop: $IPMI_EXEC", `f.yaml:24: unknown BMC template action "stop"`},
		"template operator":   {"--host $IPMI_HOST status", "--host $IPMI_HOST; reboot", `f.yaml:24: split status template: unquoted ';'`},
		"template variable":   {"--host $IPMI_HOST status", "--host $IPMI_HOSTNAME", `f.yaml:24: status template: unknown variable $IPMI_HOSTNAME`},
	} {
		t.Run(what, func(t *testing.T) {
			s := newStore(t)
			_, err := applyFile(t, s, name, []byte(strings.Replace(bmcFile, c.old, c.new, 1)))
			if !errs.IsRefused(err) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("apply = %v; want a refusal containing %q", err, c.want)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the refusal shows the password: %v", err)
			}
			if out := export(t, s); string(out) != "zones: []\n" {
				t.Errorf("a refused file changed the state:\n%s", out)
			}
		})
	}
}

// Removing a host or a cluster removes its BMC settings: a new host of the same name does not
// inherit the old one's BMC password.
func TestRemoveDeletesBMC(t *testing.T) {
	dir := t.TempDir()
	writePassword(t, dir, "secrets/c1.pw", "pw", 0o600)
	s := newStore(t)
	if _, err := applyFile(t, s, filepath.Join(dir, "f.yaml"), []byte(bmcFile)); err != nil {
		t.Fatal(err)
	}
	err := s.Update(func(tx state.Tx) error {
		for _, h := range []string{"h1", "h2"} {
			if err := RemoveHost(tx, h); err != nil {
				return err
			}
		}
		return RemoveCluster(tx, "c1")
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.View(func(tx state.Tx) error {
		if all, err := state.ListBMC(tx); err != nil || len(all) != 0 {
			t.Errorf("BMC settings left: %v, %v", all, err)
		}
		return nil
	})
}

func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	writePassword(t, dir, "crlf", "pw\r\n", 0o600)
	writePassword(t, dir, "two", "pw\n\n", 0o600)
	writePassword(t, dir, "big", strings.Repeat("x", 5000), 0o600)
	writePassword(t, dir, "group", "pw", 0o620)
	// A FIFO is refused at once, not waited on for a writer.
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPasswordFile(filepath.Join(dir, "fifo")); err == nil || !strings.Contains(err.Error(), "is not a regular file") {
		t.Errorf("fifo: %v", err)
	}
	if pw, err := ReadPasswordFile(filepath.Join(dir, "crlf")); pw != "pw" || err != nil {
		t.Errorf("crlf: %q, %v", pw, err)
	}
	for name, want := range map[string]string{"two": "control character U+000A at byte 2", "big": "holds more than 4096 bytes", "group": "has mode 0620"} {
		if _, err := ReadPasswordFile(filepath.Join(dir, name)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want %q", name, err, want)
		}
	}
}
