package inventory

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

func newStore(t *testing.T) *state.Store {
	t.Helper()
	s := state.New(filepath.Join(t.TempDir(), "state.db"))
	if _, err := s.Create(); err != nil {
		t.Fatal(err)
	}
	return s
}

func applyFile(t *testing.T, s *state.Store, name string, data []byte) (Summary, error) {
	t.Helper()
	p, err := Parse(name, data)
	if err != nil {
		return Summary{}, err
	}
	var sum Summary
	err = s.Update(func(tx state.Tx) (err error) {
		sum, err = Apply(tx, p)
		return err
	})
	return sum, err
}

func export(t *testing.T, s *state.Store) []byte {
	t.Helper()
	var out []byte
	if err := s.View(func(tx state.Tx) error {
		doc, err := Export(tx)
		if err != nil {
			return err
		}
		out, err = Marshal(doc)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExampleRoundTrip(t *testing.T) {
	data, err := os.ReadFile("../../testdata/inventory/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a := newStore(t)
	sum, err := applyFile(t, a, "example.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"zones": 2, "pods": 3, "clusters": 4, "hosts": 12}
	if d := cmp.Diff(want, sum.Created); d != "" {
		t.Errorf("created (-want +got):\n%s", d)
	}
	// Idempotent: a second apply changes nothing.
	sum, err = applyFile(t, a, "example.yaml", data)
	if err != nil || len(sum.Created)+len(sum.Updated) != 0 {
		t.Errorf("second apply = %+v, %v; want nothing created or updated", sum, err)
	}
	exported := export(t, a)
	b := newStore(t)
	if _, err := applyFile(t, b, "exported.yaml", exported); err != nil {
		t.Fatalf("apply of export: %v\n%s", err, exported)
	}
	if d := cmp.Diff(string(exported), string(export(t, b))); d != "" {
		t.Errorf("export of re-applied export differs (-a +b):\n%s", d)
	}
	_ = b.View(func(tx state.Tx) error {
		h, err := state.GetHost(tx, "kvm-ams1-07")
		if err != nil {
			return err
		}
		want := state.Host{Name: "kvm-ams1-07", Zone: "ams1", Pod: "ams1-row-b", Cluster: "ams1-db", Address: "10.10.2.11:9250",
			Tags: []string{"nvme"}, SSH: state.SSH{User: "kvmops", Port: 2222, KeyFile: "/etc/kvmctl/ssh/id_ed25519", KnownHostsFile: "/etc/kvmctl/ssh/known_hosts"},
			ResourceState: state.Enabled}
		if d := cmp.Diff(want, h); d != "" {
			t.Errorf("host after round trip (-want +got):\n%s", d)
		}
		return nil
	})
}

// A host's lab mark is kept by apply, and neither exported nor accepted in a file: only
// `kvmctl lab up` sets it.
func TestApplyKeepsLabMark(t *testing.T) {
	s := newStore(t)
	base := "zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            hosts:\n              - {name: h1, address: 'a:1'}\n"
	if _, err := applyFile(t, s, "f.yaml", []byte(base)); err != nil {
		t.Fatal(err)
	}
	lab := func() bool {
		var h state.Host
		_ = s.View(func(tx state.Tx) (err error) { h, err = state.GetHost(tx, "h1"); return err })
		return h.Lab
	}
	_ = s.Update(func(tx state.Tx) error {
		h, _ := state.GetHost(tx, "h1")
		h.Lab = true
		return state.PutHost(tx, h)
	})
	if _, err := applyFile(t, s, "f.yaml", []byte(strings.Replace(base, "'a:1'}", "'a:1', tags: [x]}", 1))); err != nil || !lab() {
		t.Errorf("apply changing h1's tags: %v, lab %v; want the lab mark kept", err, lab())
	}
	if out := export(t, s); strings.Contains(string(out), "lab") {
		t.Errorf("export shows the lab mark:\n%s", out)
	}
	if _, err := Parse("f.yaml", []byte(strings.Replace(base, "'a:1'}", "'a:1', lab: true}", 1))); err == nil {
		t.Error("a file may set the lab mark")
	}
}

func TestParseRefusals(t *testing.T) {
	cases := map[string]struct{ yaml, want string }{
		"unknown field": {"zones:\n  - name: z1\n    colour: red\n", "f.yaml:3:"},
		"bad address": {"zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            hosts:\n              - name: h1\n                address: nope\n",
			"f.yaml:8: invalid address \"nope\""},
		"duplicate host": {"zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            hosts:\n              - {name: h1, address: 'a:1'}\n              - {name: h1, address: 'a:2'}\n",
			"f.yaml:9: host \"h1\" appears twice (first at line 8)"},
		"bad name":   {"zones:\n  - name: 'z 1'\n", "f.yaml:2: invalid zone name"},
		"bad port":   {"zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            hosts:\n              - {name: h1, address: 'a:1', ssh: {port: 70000}}\n", "f.yaml:8: invalid ssh port 70000"},
		"not yaml":   {"zones: [\n", "f.yaml:"},
		"no zones":   {"hosts: []\n", "f.yaml:1:"},
		"wrong type": {"zones:\n  - name: z1\n    pods: 3\n", "f.yaml:3:"},
		// go-yaml v1.19.2 panics decoding this (goccy/go-yaml#735).
		"tag on a sequence":   {"zones:\n  ! 000000000", `f.yaml:2: cannot parse: YAML tag "!": an inventory file uses none; remove it`},
		"standard tag":        {"zones:\n  - name: !!str z1\n", `f.yaml:2: cannot parse: YAML tag "!!str"`},
		"two documents":       {"zones:\n  - name: z1\n---\nzones:\n  - name: z2\n", "f.yaml:4: cannot parse: a second YAML document"},
		"not utf-8":           {"zones:\n  - name: z\xff\n", "f.yaml:2: cannot parse: invalid UTF-8 byte 0xff at byte 18: save the file as UTF-8 text"},
		"raw NUL":             {"zones:\n  - name: z1\x00\n", "f.yaml:2: cannot parse: NUL at byte 19"},
		"raw escape":          {"zones:\n  - name: z1\n\x1b[2J", "f.yaml:3: cannot parse: control character U+001B at byte 20"},
		"raw C1":              {"zones:\n  - name: z1\u0085\n", "f.yaml:2: cannot parse: C1 control character U+0085 at byte 19"},
		"escaped NUL":         {"zones:\n  - name: \"z1\\0\"\n", `f.yaml:2: invalid zone name "z1\x00": NUL at byte 2: use printable text`},
		"escaped in a key":    {"zones:\n  - name: z1\n    \"a\\e[2J\": 1\n", "f.yaml:3: unknown field \"a\x1b[2J\""}, // kvmctl's stderr escapes it (termtext)
		"NUL in ssh user":     {host(`ssh: {user: "root\0"}`), `f.yaml:8: invalid ssh user "root\x00": NUL at byte 4`},
		"newline in key file": {host(`ssh: {key_file: "/k\n"}`), `f.yaml:8: invalid ssh key file "/k\n": control character U+000A at byte 2`},
		"C1 in restart command": {host(`restart_command: "systemctl\x85restart kvmagent"`),
			`f.yaml:8: invalid restart command "systemctl\u0085restart kvmagent": C1 control character U+0085 at byte 9`},
		"tab in restart command": {host(`restart_command: "systemctl\trestart"`), `control character U+0009 at byte 9`},
		"DEL in address":         {strings.Replace(host(""), `"a:1"`, `"a\x7f:1"`, 1), `f.yaml:8: invalid address "a\x7f:1": DEL at byte 1`},
		"tab in a tag":           {host(`tags: ["ssd\t"]`), `f.yaml:8: invalid tag name "ssd\t": control character U+0009 at byte 3`},
		"C1 in a tag":            {host(`tags: ["ssd\u0085"]`), `f.yaml:8: invalid tag name "ssd\u0085"`},
		"NUL in a cluster name": {"zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: \"c1\\0\"\n",
			`f.yaml:6: invalid cluster name "c1\x00": NUL at byte 2`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(c.yaml))
			if err == nil || !strings.Contains(err.Error(), c.want) || !errs.IsRefused(err) {
				t.Errorf("Parse = %v; want a refusal containing %q", err, c.want)
			}
		})
	}
}

// host is a file of one host h1 at a:1, with extra (one flow-map entry) added to it.
func host(extra string) string {
	return "zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            hosts:\n              - {name: h1, address: \"a:1\", " + extra + "}\n"
}

// A panic of go-yaml becomes a refusal naming the file; checkNodes keeps the known one (#735)
// from reaching the decoder, but the recovery stands behind every call.
func TestYAMLPanicsAreRefusals(t *testing.T) {
	var doc Document
	err := yamlSafe(func() error { return yaml.Unmarshal([]byte("zones:\n  ! 000000000"), &doc) })
	if _, ok := err.(*yamlPanic); !ok {
		t.Logf("go-yaml no longer panics on goccy/go-yaml#735 (%v): the recovery stays for the next one", err)
	}
	err = refuseYAML("f.yaml", yamlSafe(func() error { panic("boom") }))
	if !errs.IsRefused(err) || err.Error() != "f.yaml: cannot parse: the YAML library failed on this file (boom); compare it with the output of `kvmctl inventory export`" {
		t.Errorf("refusal of a panic = %v", err)
	}
	p := &Parsed{name: "f.yaml"} // no file: the line lookup panics inside go-yaml or finds nothing
	if l := p.line("$.zones[0]"); l != 0 {
		t.Errorf("line without a file = %d", l)
	}
}

// A byte order mark is not part of the first key.
func TestParseSkipsByteOrderMark(t *testing.T) {
	p, err := Parse("f.yaml", []byte("\ufeffzones:\n  - name: z1\n"))
	if err != nil || p.Doc.Zones[0].Name != "z1" {
		t.Errorf("Parse with a BOM: %v", err)
	}
}

// Aliases repeat their anchor: multiplied, a few kilobytes would decode into millions of hosts
// and as many "appears twice" lines. Such a file is refused before decoding, and no file gets
// more than maxProblems lines of problems.
func TestAliasesAndProblemsBounded(t *testing.T) {
	bomb := func(n int) []byte {
		var b strings.Builder
		b.WriteString("zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - &c {name: c1, hosts: [&h {name: h1, address: \"a:1\"}")
		b.WriteString(strings.Repeat(", *h", n) + "]}\n")
		b.WriteString(strings.Repeat("          - *c\n", n))
		return []byte(b.String())
	}
	_, err := Parse("f.yaml", bomb(1000))
	if !errs.IsRefused(err) || !strings.Contains(err.Error(), "f.yaml: cannot parse: with its aliases expanded, the file has more than 1000000 YAML nodes") {
		t.Errorf("alias bomb: %v", err)
	}
	_, err = Parse("f.yaml", bomb(20))
	if msg := errString(err); strings.Contains(msg, "line 0") {
		t.Errorf("a line that cannot be found is shown as 0: %s", msg)
	}
	if msg := errString(err); strings.Count(msg, "\n") != maxProblems || !strings.HasSuffix(msg, "f.yaml: and 850 more problems") {
		t.Errorf("problems of a small bomb: %d lines, ending %q", strings.Count(msg, "\n"), msg[max(0, len(msg)-60):])
	}
	// Aliases as people use them are fine: shared ssh settings.
	shared := "zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            hosts:\n" +
		"              - {name: h1, address: \"a:1\", ssh: &ssh {user: ops, port: 2222}}\n" +
		"              - {name: h2, address: \"a:2\", ssh: *ssh}\n"
	p, err := Parse("f.yaml", []byte(shared))
	if err != nil || p.Doc.Zones[0].Pods[0].Clusters[0].Hosts[1].SSH.Port != 2222 {
		t.Errorf("shared ssh settings: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestApplyRefusesMovesAndKeepsStateUnchanged(t *testing.T) {
	s := newStore(t)
	base := "zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            hosts:\n              - {name: h1, address: 'a:1'}\n          - name: c2\n"
	if _, err := applyFile(t, s, "f.yaml", []byte(base)); err != nil {
		t.Fatal(err)
	}
	before := export(t, s)
	moved := "zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c2\n            hosts:\n              - {name: h1, address: 'a:1'}\n              - {name: h9, address: 'a:9'}\n"
	_, err := applyFile(t, s, "f.yaml", []byte(moved))
	if err == nil || !strings.Contains(err.Error(), "f.yaml:8: host h1 is in cluster c1, not c2") {
		t.Fatalf("apply moving h1 = %v; want a refusal naming line 8", err)
	}
	if d := cmp.Diff(string(before), string(export(t, s))); d != "" {
		t.Errorf("a refused apply changed the state (h9 must not exist):\n%s", d)
	}
}

func TestRemoveClusterWithHostsNamesThem(t *testing.T) {
	s := newStore(t)
	err := s.Update(func(tx state.Tx) error {
		if _, err := AddZone(tx, "z1"); err != nil {
			return err
		}
		if _, err := AddPod(tx, "p1", "z1"); err != nil {
			return err
		}
		if _, err := AddCluster(tx, "c1", "p1"); err != nil {
			return err
		}
		for _, h := range []string{"h1", "h2"} {
			if _, err := AddHost(tx, state.Host{Name: h, Cluster: "c1", Address: h + ":9250"}); err != nil {
				return err
			}
		}
		if _, err := AddHost(tx, state.Host{Name: "h3", Cluster: "c1", Address: "h1:9250"}); err == nil || !strings.Contains(err.Error(), "already host h1's") {
			t.Errorf("duplicate address = %v", err)
		}
		err := RemoveCluster(tx, "c1")
		if !errs.IsRefused(err) || !strings.Contains(err.Error(), "hosts h1, h2") {
			t.Errorf("RemoveCluster = %v; want a refusal naming h1, h2", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Applying a file over an existing host keeps what the file does not say: its state, its lab
// mark, and fields a newer kvmctl wrote.
func TestApplyKeepsWhatTheFileDoesNotSay(t *testing.T) {
	db := state.NewMemory()
	raw := `{"name":"h1","zone":"z1","pod":"p1","cluster":"c1","address":"127.0.0.1:9001","tags":[],"ssh":{},"resource_state":"Maintenance","future":{"x":1}}`
	_ = db.Update(func(tx state.Tx) error {
		_, _ = AddZone(tx, "z1")
		_, _ = AddPod(tx, "p1", "z1")
		_, _ = AddCluster(tx, "c1", "p1")
		return tx.Put(state.BucketHosts, "h1", []byte(raw))
	})
	p, err := Parse("f.yaml", []byte("zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            hosts:\n              - name: h1\n                address: 127.0.0.1:9001\n                tags: [ssd]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx state.Tx) error { _, err := Apply(tx, p); return err }); err != nil {
		t.Fatal(err)
	}
	_ = db.View(func(tx state.Tx) error {
		b, _ := tx.Get(state.BucketHosts, "h1")
		if s := string(b); !strings.Contains(s, `"future":{"x":1}`) || !strings.Contains(s, `"resource_state":"Maintenance"`) || !strings.Contains(s, `"ssd"`) {
			t.Errorf("after apply: %s", s)
		}
		return nil
	})
}
