package inventory

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// FuzzParseApply: no file makes Parse or Apply panic, every failure is a refusal whose message
// can be printed, and a file that applies to an empty store round-trips: each of its hosts is in
// the store as the file says, and the store's export, applied to another empty store, exports
// the same. The seed corpus is testdata/fuzz/FuzzParseApply (go-yaml#735's panic among it).
func FuzzParseApply(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		first, p, err := parseApplyExport(data)
		if err != nil {
			if !errs.IsRefused(err) {
				t.Fatalf("%q: %v is not a refusal", data, err)
			}
			_ = err.Error()
			return
		}
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
		second, _, err := parseApplyExport(out)
		if err != nil {
			t.Fatalf("%q: the export does not apply to an empty store: %v\n%s", data, err, out)
		}
		if d := cmp.Diff(first, second); d != "" {
			t.Fatalf("%q: export of the re-applied export differs (-first +second):\n%s", data, d)
		}
	})
}

// parseApplyExport parses data, applies it to an empty in-memory store and exports the store.
func parseApplyExport(data []byte) (Document, *Parsed, error) {
	p, err := Parse("f.yaml", data)
	if err != nil {
		return Document{}, nil, err
	}
	s := state.NewMemory()
	if err := s.Update(func(tx state.Tx) error {
		_, err := Apply(tx, p)
		return err
	}); err != nil {
		return Document{}, nil, err
	}
	var doc Document
	err = s.View(func(tx state.Tx) (err error) {
		doc, err = Export(tx)
		return err
	})
	return doc, p, err
}
