package cli

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/virt"
)

// TestMaintenanceE2ENoUncheckedTransfer: kvmctl carries a VM definition from one host to another
// (the lab's transfer) only between lab hosts of its inventory, and only once it has checked it.
// h1 runs the test driver, as a lab host does, and a VM whose definition reaches host files.
//   - h1 is not a lab host in the inventory (removed and added again with `host add`), though
//     its agent reports hypervisor "test": enable moves nothing and says why.
//   - h1 is a lab host: kvmctl refuses the definition before sending it.
//
// Either way no peer defines the VM, which stays on h1, and h1 is left ErrorInMaintenance.
func TestMaintenanceE2ENoUncheckedTransfer(t *testing.T) {
	t.Parallel()
	// A serial port writing to a host file: the test driver keeps it in the definition.
	const serial = `<serial type="file"><source path="/etc/cron.d/kvmctl-e2e"/></serial>`
	for _, tc := range []struct {
		name   string
		notLab bool
		want   string // in enable's error
	}{
		{"not a lab host", true, "h1 reports libvirt's test driver, which cannot migrate, but h1 is not a lab host in kvmctl's inventory"},
		{"a lab host", false, "the definition h1 sent for evil was refused, the VM stays there: domain xml refused: serial 1: type='file' is not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := e2eBuild(t, 3, 1, 0)
			h1 := e2eLabHost(t, m, "h1")
			node, err := virt.NodeXML(virt.NodeSpec{HostName: "h1", CPUs: h1.CPUs, MemoryMiB: h1.MemMiB,
				VMs: []virt.VMSpec{e2eGroupVM(t, m, "evil", false)}})
			if err != nil {
				t.Fatal(err)
			}
			crafted := strings.Replace(string(node), "    </devices>", "      "+serial+"\n    </devices>", 1)
			if err := os.WriteFile(filepath.Join(h1.Dir, "node.xml"), []byte(crafted), 0o600); err != nil {
				t.Fatal(err)
			}
			e2eStart(t, m, e2eAllHosts(m)...)
			if tc.notLab {
				e2eKvmctl(t, m, 0, "host", "rm", "h1")
				e2eKvmctl(t, m, 0, "host", "add", "h1", "--cluster", "c1", "--address", h1.Address)
				if out, _ := e2eKvmctl(t, m, 0, "--json", "host", "show", "h1"); strings.Contains(out, `"lab"`) {
					t.Fatalf("h1 is still a lab host:\n%s", out)
				}
			}
			if got := e2eStatus(t, m)["h1"].running(); !slices.Equal(got, []string{"evil"}) {
				t.Fatalf("h1 runs %v, want [evil]", got)
			}

			_, errOut := e2eKvmctl(t, m, 1, "maintenance", "enable", "h1")
			if !strings.Contains(errOut, tc.want) {
				t.Errorf("enable: stderr %q, want it to say %q", errOut, tc.want)
			}
			after := e2eStatus(t, m)
			for _, peer := range []string{"h2", "h3"} {
				for _, vm := range after[peer].VMs {
					t.Errorf("%s has VM %s (%s): the crafted definition was carried to a peer", peer, vm.Name, vm.State)
				}
			}
			if got := after["h1"].running(); !slices.Equal(got, []string{"evil"}) {
				t.Errorf("h1 runs %v after enable, want [evil]", got)
			}
			e2eWant(t, after, "h1", "ErrorInMaintenance", "Up", "hostInMaintenance")
		})
	}
}
