package inventory

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// FuzzParseApply: no file makes Parse or Apply panic, every failure is a refusal whose message
// can be printed, and a file that applies to an empty store round-trips: each of its hosts, and
// each bmc block (with the password of its password_file), is in the store as the file says,
// and the store's export, applied to another empty store, exports the same. The seed corpus is
// testdata/fuzz/FuzzParseApply (go-yaml#735's panic among it). The file is read as if it lay in
// a directory of its own beside a password file "pw".
func FuzzParseApply(f *testing.F) {
	dir := f.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pw"), []byte("s3cret\n"), 0o600); err != nil {
		f.Fatal(err)
	}
	name := filepath.Join(dir, "f.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		first, p, store, err := parseApplyExport(name, data)
		if err != nil {
			if !errs.IsRefused(err) {
				t.Fatalf("%q: %v is not a refusal", data, err)
			}
			_ = err.Error()
			return
		}
		checkBMC(t, data, store, p)
		hosts := map[string]state.Host{}
		for _, z := range first.Zones {
			for _, pd := range z.Pods {
				for _, c := range pd.Clusters {
					for _, h := range c.Hosts {
						hosts[h.Name] = h.host()
					}
				}
			}
		}
		for _, z := range p.Doc.Zones {
			for _, pd := range z.Pods {
				for _, c := range pd.Clusters {
					for _, h := range c.Hosts {
						if d := cmp.Diff(h.host(), hosts[h.Name]); d != "" {
							t.Fatalf("%q: host %s in the store differs from the file (-file +store):\n%s", data, h.Name, d)
						}
					}
				}
			}
		}
		out, err := Marshal(first)
		if err != nil {
			t.Fatalf("%q: marshal the export: %v", data, err)
		}
		second, _, _, err := parseApplyExport(name, out)
		if err != nil {
			t.Fatalf("%q: the export does not apply to an empty store: %v\n%s", data, err, out)
		}
		if d := cmp.Diff(first, second, cmpopts.IgnoreUnexported(BMCDoc{})); d != "" {
			t.Fatalf("%q: export of the re-applied export differs (-first +second):\n%s", data, d)
		}
	})
}

// checkBMC fails t unless every bmc block of p's document is in store as the block says.
func checkBMC(t *testing.T, data []byte, store *state.Memory, p *Parsed) {
	t.Helper()
	check := func(kind, name string, d *BMCDoc) {
		if d == nil {
			return
		}
		var got state.BMC
		_ = store.View(func(tx state.Tx) (err error) { got, err = state.GetBMC(tx, kind, name); return err })
		if diff := cmp.Diff(d.settings(), got, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("%q: %s %s's BMC in the store differs from the file (-file +store):\n%s", data, kind, name, diff)
		}
	}
	for _, z := range p.Doc.Zones {
		for _, pd := range z.Pods {
			for _, c := range pd.Clusters {
				check("cluster", c.Name, c.BMC)
				for _, h := range c.Hosts {
					check("host", h.Name, h.BMC)
				}
			}
		}
	}
}

// parseApplyExport parses data as file name, applies it to an empty in-memory store and
// exports the store.
func parseApplyExport(name string, data []byte) (Document, *Parsed, *state.Memory, error) {
	p, err := Parse(name, data)
	if err != nil {
		return Document{}, nil, nil, err
	}
	s := state.NewMemory()
	if err := s.Update(func(tx state.Tx) error {
		_, err := Apply(tx, p)
		return err
	}); err != nil {
		return Document{}, nil, nil, err
	}
	var doc Document
	err = s.View(func(tx state.Tx) (err error) {
		doc, err = Export(tx)
		return err
	})
	return doc, p, s, err
}
