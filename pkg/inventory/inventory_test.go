package inventory

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
