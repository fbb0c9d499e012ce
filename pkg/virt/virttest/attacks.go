// Package virttest holds domain definitions for tests of the VM policy: definitions a normal VM
// has, and definitions that reach the host through libvirt, which every layer that checks a
// definition (the policy, the agent's API, kvmctl's lab transfer) must refuse. It is imported by
// tests only.
package virttest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/virt"
)

// Definition is one domain XML and what a refusal of it must say.
type Definition struct {
	Name string
	XML  string
	// Want is a substring of the refusal; empty for a definition that must be accepted.
	Want string
	// Shape: virt.CheckDomainShape refuses it too; the others are refused only on the host,
	// where the files are.
	Shape bool
}

// Lab returns a lab VM's definition, as virt.RenderDomainXML writes it, with its disk in dir.
func Lab(name, dir string) string {
	x, err := virt.RenderDomainXML(virt.VMSpec{Name: name, VCPUs: 1, MemoryMiB: 128, Disks: []string{filepath.Join(dir, name+".img")}})
	if err != nil {
		panic(err) // a fixed, valid spec
	}
	return x
}

// devices inserts extra at the end of the <devices> of a lab definition.
func devices(base, extra string) string {
	return strings.Replace(base, "  </devices>", "    "+extra+"\n  </devices>", 1)
}

// top inserts extra at the end of the <domain> of a lab definition.
func top(base, extra string) string {
	return strings.Replace(base, "</domain>", "  "+extra+"\n</domain>", 1)
}

// Normal returns definitions of normal VMs with their files in dir, which the policy must
// accept with vm.disk.dirs = dir: a lab VM, and a VM with every kind of device a normal VM has.
func Normal(dir string) []Definition {
	lab := Lab("normal", dir)
	full := fmt.Sprintf(`<domain type='kvm'>
  <name>full</name>
  <uuid>2f6d1d0e-8f0a-4a4e-9a57-2f1d0c6c8a11</uuid>
  <title>a full VM</title>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/full_VARS.fd</nvram>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/><vmport state='off'/></features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/><timer name='hpet' present='no'/></clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='%[1]s/full.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='%[1]s/base.qcow2'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='%[1]s/install.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'/>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'><model name='pcie-root-port'/><target chassis='1' port='0x10'/></controller>
    <controller type='sata' index='0'/>
    <controller type='virtio-serial' index='0'/>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:6b:3c:59'/>
      <source bridge='br0'/>
      <target dev='vm-full-1'/>
      <model type='virtio'/>
      <driver name='vhost' queues='2'/>
    </interface>
    <serial type='pty'><target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
    <input type='tablet' bus='usb'/>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <graphics type='vnc' port='-1' autoport='yes'><listen type='address'/></graphics>
    <graphics type='spice' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/><image compression='off'/></graphics>
    <sound model='ich9'/>
    <audio id='1' type='spice'/>
    <video><model type='virtio' heads='1' primary='yes'/></video>
    <redirdev bus='usb' type='spicevmc'/>
    <watchdog model='i6300esb' action='reset'/>
    <memballoon model='virtio'><stats period='10'/></memballoon>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
  </devices>
</domain>
`, dir)
	return []Definition{
		{Name: "lab vm", XML: lab},
		{Name: "lab vm with placement", XML: strings.Replace(lab, "<kvmctl:placement xmlns:kvmctl=\"https://kvmctl.dev/xmlns/placement/1\">",
			"<kvmctl:placement xmlns:kvmctl=\"https://kvmctl.dev/xmlns/placement/1\"><kvmctl:tag>ssd</kvmctl:tag><kvmctl:group name=\"web\" type=\"host-anti-affinity\"/>", 1)},
		{Name: "xml declaration and comments", XML: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- a VM -->\n" + lab},
		{Name: "full vm", XML: full},
	}
}

// Attacks returns definitions that libvirt defines and that give a guest, or whoever sends the
// definition, a part of the host. dir stands for vm.disk.dirs: Attacks writes the files some of
// them need into it (a disk image, a symbolic link to /etc).
func Attacks(dir string) ([]Definition, error) {
	if err := os.WriteFile(filepath.Join(dir, "evil.img"), []byte("disk"), 0o600); err != nil {
		return nil, err
	}
	if err := os.Symlink("/etc", filepath.Join(dir, "etc")); err != nil && !os.IsExist(err) {
		return nil, err
	}
	base := Lab("evil", dir)
	img := filepath.Join(dir, "evil.img")
	loader := "<loader readonly='yes' type='pflash'>" + filepath.Join(dir, "evil_CODE.fd") + "</loader>"
	return []Definition{
		{"namespaced attributes", devices(base, `<disk xmlns:x='urn:x' x:type='block' device='disk'><source x:dev='/dev/sda'/><target dev='vdz' bus='virtio'/></disk>`),
			"namespace", true},
		{"DOCTYPE attribute defaults", "<!DOCTYPE domain [\n<!ATTLIST disk type CDATA 'block'>\n<!ATTLIST source dev CDATA '/dev/sda'>\n]>\n" +
			devices(base, `<disk device='disk'><source/><target dev='vdz' bus='virtio'/></disk>`), "DOCTYPE", true},
		{"backingStore on /etc/shadow", devices(base, fmt.Sprintf(`<disk type='file' device='disk'><source file='%s'/><backingStore type='file'><format type='raw'/><source file='/etc/shadow'/></backingStore><target dev='vdz' bus='virtio'/></disk>`, img)),
			"source /etc/shadow is outside vm.disk.dirs", false},
		{"nested backingStore", devices(base, fmt.Sprintf(`<disk type='file' device='disk'><source file='%[1]s'/><backingStore type='file'><format type='qcow2'/><source file='%[1]s'/><backingStore type='file'><format type='raw'/><source file='/root/.ssh/id_ed25519'/></backingStore></backingStore><target dev='vdz' bus='virtio'/></disk>`, img)),
			"source /root/.ssh/id_ed25519 is outside vm.disk.dirs", false},
		{"qcow2 data file", devices(base, fmt.Sprintf(`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'><dataStore type='file'><format type='raw'/><source file='/etc/shadow'/></dataStore></source><target dev='vdz' bus='virtio'/></disk>`, img)),
			"<dataStore>", true},
		{"serial to a host file", devices(base, `<serial type='file'><source path='/etc/cron.d/evil'/><target port='1'/></serial>`), "type='file'", true},
		{"serial on a host device", devices(base, `<serial type='dev'><source path='/dev/ttyS0'/><target port='1'/></serial>`), "type='dev'", true},
		{"serial on a host socket", devices(base, `<serial type='unix'><source mode='bind' path='/run/evil.sock'/><target port='1'/></serial>`), "type='unix'", true},
		{"serial log to a host file", devices(base, `<serial type='pty'><log file='/etc/cron.d/evil' append='on'/><target port='1'/></serial>`), "<log>", true},
		{"console to a host file", devices(base, `<console type='file'><source path='/etc/cron.d/evil'/><target type='virtio' port='1'/></console>`), "type='file'", true},
		{"channel to a host file", devices(base, `<channel type='file'><source path='/root/.ssh/authorized_keys'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`), "type='file'", true},
		{"channel to libvirtd's socket", devices(base, `<channel type='unix'><source mode='connect' path='/run/libvirt/libvirt-sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`), "mode='connect'", true},
		{"ethernet interface script", devices(base, `<interface type='ethernet'><script path='/tmp/evil.sh'/></interface>`), "type='ethernet'", true},
		{"bridge interface script", devices(base, `<interface type='bridge'><source bridge='br0'/><script path='/tmp/evil.sh'/></interface>`), "<script>", true},
		{"interface option rom from a host file", devices(base, `<interface type='network'><source network='default'/><rom file='/etc/shadow'/></interface>`), "file", true},
		{"direct interface", devices(base, `<interface type='direct'><source dev='eth0' mode='passthrough'/></interface>`), "type='direct'", true},
		{"no security label", top(base, `<seclabel type='none'/>`), "seclabel", true},
		{"static DAC label root", top(base, `<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>`), "seclabel", true},
		{"per-disk label", devices(base, fmt.Sprintf(`<disk type='file' device='disk'><source file='%s'><seclabel model='dac' relabel='no'/></source><target dev='vdz' bus='virtio'/></disk>`, img)), "<seclabel>", true},
		{"TPM passthrough", devices(base, `<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>`), "type='passthrough'", true},
		{"evdev input", devices(base, `<input type='evdev'><source dev='/dev/input/event0'/></input>`), "type='evdev'", true},
		{"volume disk", devices(base, `<disk type='volume' device='disk'><source pool='default' volume='other-vm.qcow2'/><target dev='vdz' bus='virtio'/></disk>`), "type='volume'", true},
		{"network disk on a host socket", devices(base, `<disk type='network' device='disk'><source protocol='nbd' name='x'><host transport='unix' socket='/run/evil.sock'/></source><target dev='vdz' bus='virtio'/></disk>`), "type='network'", true},
		{"vnc on every address", devices(base, `<graphics type='vnc' port='-1' autoport='yes' listen='0.0.0.0'><listen type='address' address='0.0.0.0'/></graphics>`), "loopback", true},
		{"rng from a host device", devices(base, `<rng model='virtio'><backend model='random'>/dev/sda</backend></rng>`), "/dev/urandom", true},
		{"nvram template from a host file", strings.Replace(base, "<os>", "<os>\n    "+loader+"\n    <nvram template='/etc/shadow'>"+dir+"/evil_VARS.fd</nvram>", 1), "template", false},
		{"nvram through a symbolic link", strings.Replace(base, "<os>", "<os>\n    "+loader+"\n    <nvram>"+dir+"/etc/evil_VARS.fd</nvram>", 1), "outside vm.disk.dirs", false},
		{"ACPI table from a host file", strings.Replace(base, "<os>", "<os>\n    <acpi><table type='slic'>/etc/shadow</table></acpi>", 1), "<acpi>", true},
		{"firmware config from a host file", top(base, `<sysinfo type='fwcfg'><entry name='opt/com.example/x' file='/etc/shadow'/></sysinfo>`), "sysinfo", true},
		{"emulator", devices(base, `<emulator>/bin/sh</emulator>`), "emulator", true},
		{"host device", devices(base, `<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0' bus='1' slot='0' function='0'/></source></hostdev>`), "<hostdev>", true},
		{"host share", devices(base, `<filesystem type='mount'><source dir='/'/><target dir='root'/></filesystem>`), "<filesystem>", true},
		{"qemu command line", strings.Replace(top(base, `<qemu:commandline><qemu:arg value='-x'/></qemu:commandline>`), "<domain type=\"test\">", `<domain type="test" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">`, 1), "namespace", true},
		{"test driver state", top(base, `<test:runstate xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>1</test:runstate>`), "namespace", true},
		{"symlinked disk", devices(base, `<disk type='file' device='disk'><source file='`+dir+`/etc/shadow'/><target dev='vdz' bus='virtio'/></disk>`), "outside vm.disk.dirs", false},
	}, nil
}
