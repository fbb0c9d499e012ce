package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const minimalConfig = `host.name=kvm1
tls.cert=/etc/kvmagent/agent.crt
tls.key=/etc/kvmagent/agent.key
tls.ca=/etc/kvmagent/ca.crt
`

func TestParseConfigDefaults(t *testing.T) {
	c, warns, err := ParseConfig(strings.NewReader(minimalConfig))
	if err != nil || len(warns) != 0 {
		t.Fatalf("ParseConfig = %v, %v", warns, err)
	}
	want := Config{
		HostName: "kvm1", Listen: ":9250",
		TLSCert: "/etc/kvmagent/agent.crt", TLSKey: "/etc/kvmagent/agent.key", TLSCA: "/etc/kvmagent/ca.crt",
		LibvirtURI: "qemu:///system", StateDir: "/var/lib/kvmagent", HooksDir: "/etc/kvmagent/hooks",
		HeartbeatInterval: time.Second, BootIDFile: "/proc/sys/kernel/random/boot_id",
		VMDiskDirs: []string{"/var/lib/libvirt/images"},
	}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
}

func TestParseConfigEveryKey(t *testing.T) {
	in := "\ufeff# a comment\n\n   \t\n" + `  host.name = kvm1  
listen=10.0.0.1:9999
tls.cert=/c
tls.key=/k
tls.ca=/ca
libvirt.uri=test:///default
state.dir=/s
rolling.maintenance.hooks.dir=/h
rolling.maintenance.service.executor.disabled=TRUE
rolling.maintenance.stage.runner=/opt/kvmctl/bin//kvmagent-stage
heartbeat.dir=/nfs/hb/
heartbeat.interval=2
boot.id.file=/lab/boot_id
vm.disk.dirs=/srv/images, /mnt/nfs/
  # indented comment
url=http://x/?a=b#c
`
	c, warns, err := ParseConfig(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{HostName: "kvm1", Listen: "10.0.0.1:9999", TLSCert: "/c", TLSKey: "/k", TLSCA: "/ca",
		LibvirtURI: "test:///default", StateDir: "/s", HooksDir: "/h", ServiceExecutorDisabled: true,
		StageRunner: "/opt/kvmctl/bin/kvmagent-stage", HeartbeatDir: "/nfs/hb", HeartbeatInterval: 2 * time.Second, BootIDFile: "/lab/boot_id",
		VMDiskDirs: []string{"/srv/images", "/mnt/nfs"}}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	if len(warns) != 1 || warns[0].Key != "url" || warns[0].Line != 19 {
		t.Errorf("warnings = %v", warns)
	}
	if got := c.HeartbeatFile(); got != "/nfs/hb/hb-kvm1" {
		t.Errorf("HeartbeatFile() = %q, want /nfs/hb/hb-kvm1", got)
	}
	if got := (Config{HostName: "kvm1"}).HeartbeatFile(); got != "" {
		t.Errorf("HeartbeatFile() without heartbeat.dir = %q, want none", got)
	}
}

// heartbeat.file named the heartbeat file before the name was fixed to hb-<host>: a value is
// refused with the heartbeat.dir to set instead (the agent would otherwise write no heartbeat
// where its operator expects one), an empty one (the old default) is only a warning.
func TestParseConfigRetiredHeartbeatFile(t *testing.T) {
	_, warns, err := ParseConfig(strings.NewReader(minimalConfig + "heartbeat.file=/nfs/heartbeat-kvm1\nheartbeat.dir=relative\n"))
	var ce *ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 2 || len(warns) != 0 {
		t.Fatalf("err = %v, warnings %v; want 2 problems", err, warns)
	}
	mustContain(t, ce.Problems[0].String(), `line 5: heartbeat.file: "/nfs/heartbeat-kvm1": the key is retired: set heartbeat.dir=/nfs instead`,
		"/nfs/hb-<host.name>")
	mustContain(t, ce.Problems[1].String(), `line 6: heartbeat.dir: "relative": want the absolute path of a directory`)

	c, warns, err := ParseConfig(strings.NewReader(minimalConfig + "heartbeat.file=\n"))
	if err != nil || len(warns) != 1 {
		t.Fatalf("empty heartbeat.file: %v %v, want one warning", warns, err)
	}
	mustContain(t, warns[0].String(), "line 5: heartbeat.file: ignored: the key is retired (heartbeat.dir replaces it): remove the line")
	if c.HeartbeatDir != "" {
		t.Errorf("heartbeat dir = %q, want none", c.HeartbeatDir)
	}
}

func TestParseConfigReportsEveryProblem(t *testing.T) {
	in := `# kvm1
listen=9250
tls.cert=/c
tls.key=
this line has no equals sign
rolling.maintenance.service.executor.disabled=maybe
heartbeat.interval=0
heartbeat.interval=abc
libvirt.uri=not a uri
=orphan
host.name=bad name
rolling.maintenance.stage.runner=kvmagent-stage
`
	_, _, err := ParseConfig(strings.NewReader(in))
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *ConfigError", err)
	}
	var got []string
	for _, p := range ce.Problems {
		got = append(got, p.String())
	}
	want := []string{
		`line 2: listen: "9250": want HOST:PORT or :PORT`,
		`line 5: "this line has no equals sign" is not key=value`,
		`line 6: rolling.maintenance.service.executor.disabled: "maybe": want true or false`,
		`line 7: heartbeat.interval: "0": want a whole number of seconds from 1 to 3600`,
		`line 8: heartbeat.interval: set again (first set on line 7)`,
		`line 9: libvirt.uri: "not a uri": want a libvirt URI`,
		`line 10: empty key before '='`,
		`line 11: host.name: "bad name": must not contain spaces`,
		`line 12: rolling.maintenance.stage.runner: "kvmagent-stage": want the absolute path of kvmagent-stage`,
		`line 4: tls.key: required, but empty`,
		`tls.ca: required, but missing`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
	mustContain(t, err.Error(), "has 11 problems", "line 2: listen")
}

func TestParseConfigUnknownKeyNamesClosest(t *testing.T) {
	in := minimalConfig + "heartbeat.intervall=3\nlisten.port=1\nrolling.maintenance.hook.dir=/x\n"
	c, warns, err := ParseConfig(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Warning{
		{Line: 5, Key: "heartbeat.intervall", Closest: KeyHeartbeatInterval},
		{Line: 6, Key: "listen.port", Closest: KeyListen},
		{Line: 7, Key: "rolling.maintenance.hook.dir", Closest: KeyHooksDir},
	}
	if diff := cmp.Diff(want, warns); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
	mustContain(t, warns[0].String(), "line 5", `"heartbeat.intervall"`, `did you mean "heartbeat.interval"`)
	if c.HeartbeatInterval != DefaultHeartbeatInterval {
		t.Errorf("unknown key changed the config: %v", c.HeartbeatInterval)
	}
}

func TestLoadConfigChecksFiles(t *testing.T) {
	f := newFleet(t)
	good := f.testConfig("kvm1", "boot")
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.properties")

	writeFile(t, path, []byte(good.Format()))
	c, warns, err := LoadConfig(path)
	if err != nil || len(warns) != 0 {
		t.Fatalf("LoadConfig(good) = %v, %v", warns, err)
	}
	if diff := cmp.Diff(good, c); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}

	// Another host's certificate, a missing CA, a missing boot id file and a syntax error, all
	// reported together.
	bad := good
	bad.HostName = "kvm2"
	bad.TLSCA = filepath.Join(dir, "nope.crt")
	bad.BootIDFile = filepath.Join(dir, "no_boot_id")
	writeFile(t, path, []byte(bad.Format()+"garbage\n"))
	_, _, err = LoadConfig(path)
	var ce *ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 3 {
		t.Fatalf("err = %v, want 3 problems", err)
	}
	mustContain(t, err.Error(), path, "line 16: \"garbage\"", "line 5: tls.ca: cannot read", "line 13: boot.id.file: cannot read")

	bad.TLSCA = good.TLSCA
	bad.BootIDFile = good.BootIDFile
	writeFile(t, path, []byte(bad.Format()))
	_, _, err = LoadConfig(path)
	mustContain(t, errString(err), "line 3: tls.cert", "is not for host.name=kvm2", "kvmctl pki issue-agent kvm2")

	// A key that is not the certificate's.
	bad = good
	_, otherKey, _ := f.agentFiles("kvm1")
	bad.TLSKey = otherKey
	if err := bad.Check(); err == nil {
		t.Error("Check accepted a key that does not match the certificate")
	}

	// The stage runner must be there, executable and changeable only by root or the agent's user.
	runner := filepath.Join(dir, "kvmagent-stage")
	bad = good
	bad.StageRunner = runner
	writeFile(t, path, []byte(bad.Format()))
	_, _, err = LoadConfig(path)
	mustContain(t, errString(err), "line 10: rolling.maintenance.stage.runner: stage runner: stat "+runner+": no such file",
		"or leave it empty for the kvmagent-stage beside kvmagent")
	writeFile(t, runner, []byte("#!/bin/sh\n"))
	for mode, want := range map[os.FileMode]string{0o600: "is not executable", 0o775: "is writable by group", 0o755: ""} {
		if err := os.Chmod(runner, mode); err != nil {
			t.Fatal(err)
		}
		c, _, err := LoadConfig(path)
		if want == "" && (err != nil || c.StageRunner != runner) {
			t.Errorf("runner mode %04o: LoadConfig = %+v, %v", mode, c, err)
		}
		if want != "" {
			mustContain(t, errString(err), "line 10: rolling.maintenance.stage.runner: ", want)
		}
	}

	if _, _, err := LoadConfig(filepath.Join(dir, "missing.properties")); err == nil || !strings.Contains(err.Error(), "cannot open") {
		t.Errorf("missing file: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func TestFormatRoundTrip(t *testing.T) {
	c := DefaultConfig()
	c.HostName, c.TLSCert, c.TLSKey, c.TLSCA = "h", "/a b/c", "/k#x", "/ca=1"
	c.ServiceExecutorDisabled = true
	c.HeartbeatDir = "/nfs/h"
	c.HeartbeatInterval = 17 * time.Second
	c.LabStorageStallFile = "/lab/hosts/h1/storage.stall"
	got, warns, err := ParseConfig(strings.NewReader(c.Format()))
	if err != nil || len(warns) != 0 {
		t.Fatal(warns, err)
	}
	if diff := cmp.Diff(c, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if len(KnownKeys()) != 15 {
		t.Errorf("KnownKeys = %v", KnownKeys())
	}
}

func TestLevenshtein(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "", 3}, {"kitten", "sitting", 3}, {"listen", "listne", 2}, {"héllo", "hello", 1}} {
		if d := levenshtein(tc.a, tc.b); d != tc.d {
			t.Errorf("levenshtein(%q, %q) = %d, want %d", tc.a, tc.b, d, tc.d)
		}
	}
}

// FuzzParseConfig: ParseConfig never panics, and what it accepts round-trips through Format.
func FuzzParseConfig(f *testing.F) {
	f.Add(minimalConfig)
	f.Add(minimalConfig + "listen=[::1]:9250\nheartbeat.interval=+7\nrolling.maintenance.service.executor.disabled=1\n")
	f.Add(minimalConfig + "state.dir=  \u00a0/x\u00a0 \nboot.id.file=#\n")
	f.Add("\ufeffhost.name=a\r\ntls.cert=b\r\ntls.key=c\r\ntls.ca=d\r\n")
	f.Add("=\n==\nhost.name\n#x=y\nlisten=:99999\n")
	f.Add(minimalConfig + "host.name=dup\n")
	f.Add(strings.Repeat("x", maxLine+10))
	f.Fuzz(func(t *testing.T, in string) {
		c, _, err := ParseConfig(strings.NewReader(in))
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error without problems: %v", err)
			}
			return
		}
		out := c.Format()
		c2, warns, err := ParseConfig(strings.NewReader(out))
		if err != nil || len(warns) != 0 {
			t.Fatalf("Format output does not parse: %v %v\n%s", warns, err, out)
		}
		if diff := cmp.Diff(c, c2); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

// The shipped example must name every key, parse without warnings and hold the defaults of the
// optional keys.
func TestContribAgentProperties(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "..", "contrib", "agent.properties"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, lines, warns, probs := parseConfig(f)
	if len(warns) != 0 || len(probs) != 0 {
		t.Fatalf("contrib/agent.properties: %v %v", warns, probs)
	}
	for _, k := range KnownKeys() {
		if _, ok := lines[k]; !ok {
			t.Errorf("contrib/agent.properties lacks %s", k)
		}
	}
	want := DefaultConfig()
	want.HostName, want.TLSCert, want.TLSKey, want.TLSCA = c.HostName, c.TLSCert, c.TLSKey, c.TLSCA
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("contrib/agent.properties differs from the defaults (-want +got):\n%s", diff)
	}
}
