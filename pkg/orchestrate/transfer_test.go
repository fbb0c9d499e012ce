package orchestrate

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// setLab marks or unmarks hosts as lab hosts in the inventory.
func setLab(t *testing.T, st Store, lab bool, hosts ...string) {
	t.Helper()
	err := st.Update(func(tx state.Tx) error {
		for _, name := range hosts {
			h, err := state.GetHost(tx, name)
			if err != nil {
				return err
			}
			h.Lab = lab
			if err := state.PutHost(tx, h); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// crafted is a definition whose backing store is the host's /etc/shadow: it has the shape of a
// normal VM, so only the target agent, which knows its vm.disk.dirs, could refuse it.
const crafted = `<domain type='test'><name>evil</name><uuid>evil</uuid><memory unit='MiB'>1024</memory><vcpu>1</vcpu>
<os><type>hvm</type></os><devices><disk type='file' device='disk'><source file='/srv/shared/evil.img'/>
<backingStore type='file'><format type='raw'/><source file='/etc/shadow'/></backingStore><target dev='vda' bus='virtio'/></disk></devices></domain>`

// A host that says it runs the test driver but is not a lab host in kvmctl's inventory gets no
// transfer: its definitions are never carried to a peer. Its VMs stay, and the host is left
// ErrorInMaintenance saying why.
func TestNoTransferFromAHostThatIsNotALabHost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStoreWithCluster(t, "h1", "h2")
		setLab(t, st, false, "h1")
		f := newFleet()
		f.add("h1", "evil").xml["evil"] = crafted
		f.add("h2")
		m := newMaint(st, f, nil)
		_, err := m.Enable(context.Background(), "h1", EnableOptions{})
		if err == nil || !strings.Contains(err.Error(), "h1 is not a lab host") {
			t.Fatalf("enable = %v, want a refusal saying h1 is not a lab host", err)
		}
		if n := f.agents["h2"].defined; n != 0 {
			t.Errorf("h2 was sent %d definitions", n)
		}
		if _, ok := f.agents["h1"].vms["evil"]; !ok {
			t.Errorf("evil left h1")
		}
		if got := hostState(t, st, "h1"); got != state.ErrorInMaintenance {
			t.Errorf("h1 = %s, want ErrorInMaintenance", got)
		}
	})
}

// Between two lab hosts kvmctl checks a definition before it carries it: a serial port on a
// host file, a definition of another VM and a non-lab target are refused, the VM stays on its
// source, and a normal VM still moves.
func TestTransferChecksTheDefinition(t *testing.T) {
	serial := strings.Replace(crafted, "</devices>", "<serial type='file'><source path='/etc/cron.d/x'/></serial></devices>", 1)
	for _, c := range []struct {
		name, xml, want string
		targetNotLab    bool
	}{
		{"serial on a host file", serial, "serial 1: type='file' is not allowed", false},
		{"another vm's name", strings.Replace(crafted, "<name>evil</name>", "<name>a</name>", 1), `is the definition of "a"`, false},
		{"a target that is not a lab host", crafted, "h2 is not a lab host", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := newStoreWithCluster(t, "h1", "h2")
				if c.targetNotLab {
					setLab(t, st, false, "h2")
				}
				f := newFleet()
				src := f.add("h1", "a", "evil")
				src.xml["evil"] = c.xml
				f.add("h2")
				m := newMaint(st, f, nil)
				_, err := m.Enable(context.Background(), "h1", EnableOptions{})
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("enable = %v, want a failure saying %q", err, c.want)
				}
				if _, ok := f.agents["h2"].vms["evil"]; ok {
					t.Errorf("evil was defined on h2")
				}
				if _, ok := src.vms["evil"]; !ok {
					t.Errorf("evil left h1")
				}
				if _, ok := f.agents["h2"].vms["a"]; !ok && !c.targetNotLab {
					t.Errorf("a, a normal VM, did not move")
				}
			})
		})
	}
}

// A host that is not a lab host and reports qemu is live-migrated to, with the URI kvmctl
// builds from its inventory; nothing is defined by kvmctl.
func TestNonLabHostsMigrate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStoreWithCluster(t, "h1", "h2")
		setLab(t, st, false, "h1", "h2")
		f := newFleet()
		f.add("h1", "a").hypervisor = api.HypervisorQEMU
		f.add("h2").hypervisor = api.HypervisorQEMU
		m := newMaint(st, f, nil)
		if _, err := m.Enable(context.Background(), "h1", EnableOptions{}); err == nil {
			t.Fatal("enable succeeded, but the fake cannot migrate")
		}
		if got := f.agents["h1"].migrations; len(got) != 1 || got[0].DestURI != "qemu+tls://127.0.0.1/system" {
			t.Errorf("migrations asked of h1: %+v, want one to qemu+tls://127.0.0.1/system", got)
		}
		if n := f.agents["h2"].defined; n != 0 {
			t.Errorf("h2 was sent %d definitions", n)
		}
	})
}

// A half-done transfer is finished only between lab hosts: a VM that a host which is not a lab
// host reports with the same UUID is not taken as a copy of the source's.
func TestHalfDoneTransferOnlyFromLabHosts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st := newStoreWithCluster(t, "h1", "h2", "h3")
		setLab(t, st, false, "h2")
		f := newFleet()
		f.add("h1", "a")
		f.add("h2", "a") // claims h1's VM
		f.add("h3")
		m := newMaint(st, f, nil)
		if _, err := m.Enable(context.Background(), "h1", EnableOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, ok := f.agents["h3"].vms["a"]; !ok {
			t.Errorf("h1's VM a was removed as a copy of h2's instead of moving to h3: h1 %v, h3 %v", f.agents["h1"].vms, f.agents["h3"].vms)
		}
	})
}
