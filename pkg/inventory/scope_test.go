package inventory

import (
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

func TestNaturalLess(t *testing.T) {
	in := []string{"h10", "h2", "h1", "h02", "a", "h1b"}
	want := "a h1 h1b h2 h02 h10"
	got := append([]string(nil), in...)
	for i := range got {
		for j := i + 1; j < len(got); j++ {
			if NaturalLess(got[j], got[i]) {
				got[i], got[j] = got[j], got[i]
			}
		}
	}
	if strings.Join(got, " ") != want {
		t.Errorf("natural order = %v, want %s", got, want)
	}
}

func TestResolveScopes(t *testing.T) {
	db := state.NewMemory()
	err := db.Update(func(tx state.Tx) error {
		_, _ = AddZone(tx, "z1")
		_, _ = AddZone(tx, "z2")
		_, _ = AddPod(tx, "p1", "z1")
		_, _ = AddPod(tx, "p2", "z2")
		_, _ = AddCluster(tx, "c10", "p1")
		_, _ = AddCluster(tx, "c2", "p1")
		_, _ = AddCluster(tx, "c3", "p2")
		for i, h := range [][2]string{{"h10", "c2"}, {"h2", "c2"}, {"h1", "c10"}, {"h3", "c3"}} {
			if _, err := AddHost(tx, state.Host{Name: h[0], Cluster: h[1], Address: "127.0.0.1:" + string(rune('1'+i)) + "000"}); err != nil {
				return err
			}
		}
		_, err := AddCluster(tx, "empty", "p2")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		scope    Scope
		hosts    string
		clusters string
		refused  string
	}{
		{Scope{Zones: []string{"z1"}}, "h2 h10 h1", "c2 c10", ""},
		{Scope{Pods: []string{"p2", "p1"}}, "h2 h10 h3 h1", "c2 c3 c10", ""},
		{Scope{Hosts: []string{"h10", "h3"}}, "h10 h3", "c2 c3", ""},
		{Scope{}, "", "", "exactly one"},
		{Scope{Zones: []string{"z1"}, Hosts: []string{"h1"}}, "", "", "exactly one"},
		{Scope{Clusters: []string{"c2", "c9", "c8"}}, "", "", "unknown cluster c9, c8: `kvmctl cluster list`"},
		{Scope{Clusters: []string{"empty"}}, "", "", "no hosts"},
	} {
		var err error
		var hs []state.Host
		var cs []string
		_ = db.View(func(tx state.Tx) error { hs, cs, err = Resolve(tx, c.scope); return nil })
		if c.refused != "" {
			if !errs.IsRefused(err) || !strings.Contains(err.Error(), c.refused) {
				t.Errorf("%+v: %v, want a refusal with %q", c.scope, err, c.refused)
			}
			continue
		}
		var names []string
		for _, h := range hs {
			names = append(names, h.Name)
		}
		if err != nil || strings.Join(names, " ") != c.hosts || strings.Join(cs, " ") != c.clusters {
			t.Errorf("%+v = %v %v %v; want %s / %s", c.scope, names, cs, err, c.hosts, c.clusters)
		}
	}
}
