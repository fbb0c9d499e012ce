package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// A fence of h1 (a live holder: this process) holds it: nothing may change the BMC settings it
// reads, neither h1's own nor the defaults of its cluster, by command or by inventory file; a
// host of another cluster is free. Each refusal names the holder, and changes nothing.
func TestBMCChangesConsultHolds(t *testing.T) {
	dir := t.TempDir()
	st := filepath.Join(dir, "state", "state.db")
	kvmctl := func(want int, args ...string) string {
		t.Helper()
		code, out, errOut := runKvmctl(t, st, args...)
		if code != want {
			t.Fatalf("kvmctl %q = %d, want %d\n%s%s", args, code, want, out, errOut)
		}
		return out + errOut
	}
	kvmctl(0, "init")
	for _, args := range [][]string{{"zone", "add", "z1"}, {"pod", "add", "p1", "--zone", "z1"}, {"cluster", "add", "c1", "--pod", "p1"},
		{"cluster", "add", "c2", "--pod", "p1"}, {"host", "add", "h1", "--cluster", "c1", "--address", "10.0.0.1:9250"},
		{"host", "add", "h2", "--cluster", "c2", "--address", "10.0.0.2:9250"}} {
		kvmctl(0, args...)
	}
	err := state.New(st).Update(func(tx state.Tx) error {
		_, err := holds.Local().Take(tx, holds.Hold{Kind: holds.Fencing, ID: "f1", What: "fence of h1"}, []holds.Subject{holds.Host("h1")})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"bmc", "set", "--host", "h1", "--address", "10.0.1.1"},
		{"bmc", "set", "--cluster", "c1", "--username", "admin"},
		{"bmc", "unset", "--host", "h1"},
		{"bmc", "unset", "--cluster", "c1", "port"},
	} {
		if out := kvmctl(2, args...); !strings.Contains(out, "host h1 is held by fence of h1") {
			t.Errorf("kvmctl %q: %s; want a refusal naming the fence", args, out)
		}
	}
	yaml := filepath.Join(dir, "fleet.yaml")
	file := "zones:\n  - name: z1\n    pods:\n      - name: p1\n        clusters:\n          - name: c1\n            bmc: {username: admin}\n"
	if err := os.WriteFile(yaml, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := kvmctl(2, "inventory", "apply", "-f", yaml); !strings.Contains(out, "changes the BMC settings of cluster c1: host h1 is held by fence of h1") {
		t.Errorf("inventory apply: %s", out)
	}
	if out := kvmctl(0, "bmc", "list"); out != "" {
		t.Errorf("refusals changed the settings:\n%s", out)
	}
	kvmctl(0, "bmc", "set", "--cluster", "c2", "--username", "admin")
}
