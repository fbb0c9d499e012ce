package virt_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/virttest"
)

// Every attack definition is refused, naming what and why; every normal VM is accepted. The
// attacks all passed the denylist this policy replaced, but the six it already caught (emulator,
// hostdev, filesystem, qemu and test namespaces, a symbolic link to /etc/shadow).
func TestDomainPolicy(t *testing.T) {
	dir := t.TempDir()
	attacks, err := virttest.Attacks(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range virttest.Normal(dir) {
		if err := virt.CheckDomain(d.XML, []string{dir}); err != nil {
			t.Errorf("%s: refused: %v", d.Name, err)
		}
		if err := virt.CheckDomainShape(d.XML); err != nil {
			t.Errorf("%s: shape refused: %v", d.Name, err)
		}
	}
	for _, d := range attacks {
		err := virt.CheckDomain(d.XML, []string{dir})
		if !errors.Is(err, virt.ErrDomainRefused) || !strings.Contains(err.Error(), d.Want) {
			t.Errorf("%s: %v; want a refusal containing %q", d.Name, err, d.Want)
		}
		err = virt.CheckDomainShape(d.XML)
		if d.Shape && (!errors.Is(err, virt.ErrDomainRefused) || !strings.Contains(err.Error(), d.Want)) {
			t.Errorf("%s: shape check: %v; want a refusal containing %q", d.Name, err, d.Want)
		}
		if !d.Shape && err != nil {
			t.Errorf("%s: shape check refused what only the host's directories can tell: %v", d.Name, err)
		}
	}
}

// Paths: clean, absolute, inside vm.disk.dirs after every symbolic link, regular files.
func TestDomainPolicyPaths(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vm1.img")
	if err := os.WriteFile(img, []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(dir, "etc")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/kvmctl-does-not-exist", filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(img, filepath.Join(dir, "sub", "link.img")); err != nil {
		t.Fatal(err)
	}
	ok, err := virt.RenderDomainXML(virt.VMSpec{Name: "vm1", VCPUs: 1, MemoryMiB: 512, Disks: []string{img}})
	if err != nil {
		t.Fatal(err)
	}
	disk := func(p string) string { return strings.Replace(ok, img, p, 1) }
	os := func(el string) string { return strings.Replace(ok, "<os>", "<os>"+el, 1) }
	for _, c := range []struct{ name, xml, want string }{
		{"a host file", disk("/etc/shadow"), "disk 1: source /etc/shadow is outside vm.disk.dirs (" + dir + ")"},
		{"dot-dot", disk(dir + "/../../etc/shadow"), "is not a clean absolute path"},
		{"relative", disk("vm1.img"), "is not a clean absolute path"},
		{"a newline", disk(img + "&#10;"), "is not a clean absolute path"},
		{"symbolic link", disk(dir + "/etc/shadow"), "(/etc/shadow) is outside"},
		{"a new file under a link", os("<nvram>" + dir + "/etc/x_VARS.fd</nvram>"), "(/etc/x_VARS.fd) is outside"},
		{"a dangling link", os("<nvram>" + dir + "/dangling</nvram>"), "dangling symbolic link to /etc/kvmctl-does-not-exist"},
		{"a directory", disk(dir + "/sub"), "is not a regular file"},
		{"kernel", os("<kernel>/boot/vmlinuz</kernel>"), "<os>: kernel /boot/vmlinuz is outside"},
		{"kernel split by a comment", os("<kernel>" + dir + "<!-- -->/../../etc/shadow</kernel>"), "is not a clean absolute path"},
		{"kernel with a space", os("<kernel> " + img + "</kernel>"), "is not a clean absolute path"},
		{"loader", os("<loader>/etc/shadow</loader>"), "and the firmware directories"},
		{"emulator", strings.Replace(ok, "<devices>", "<devices><emulator>/bin/sh</emulator>", 1), "is not a qemu binary"},
	} {
		err := virt.CheckDomain(c.xml, []string{dir})
		if !errors.Is(err, virt.ErrDomainRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want a refusal containing %q", c.name, err, c.want)
		}
	}
	for name, x := range map[string]string{
		"a link inside":       disk(dir + "/sub/link.img"),
		"a file not there":    disk(dir + "/new.img"),
		"firmware":            os("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"),
		"qemu":                strings.Replace(ok, "<devices>", "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>", 1),
		"kernel in the dirs":  os("<kernel>" + img + "</kernel><cmdline>console=ttyS0</cmdline>"),
		"nvram in libvirt's":  os("<nvram>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd</nvram>"),
		"empty backing store": strings.Replace(ok, "<target dev=", "<backingStore/><target dev=", 1),
	} {
		if err := virt.CheckDomain(x, []string{dir}); err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
	if err := virt.CheckDomain(ok, nil); !errors.Is(err, virt.ErrDomainRefused) || !strings.Contains(err.Error(), "no vm.disk.dirs") {
		t.Errorf("no vm.disk.dirs: %v, want every file refused", err)
	}
}

// What Go's decoder and libvirt's libxml2 could read differently is refused.
func TestDomainPolicyXML(t *testing.T) {
	dir := t.TempDir()
	ok := virttest.Lab("vm1", dir)
	body := strings.TrimPrefix(ok, `<domain type="test">`)
	for _, c := range []struct{ name, xml, want string }{
		{"entity", "<!DOCTYPE domain [<!ENTITY f SYSTEM 'file:///etc/shadow'>]>" + ok, "DOCTYPE"},
		{"processing instruction", strings.Replace(ok, "<devices>", "<devices><?evil x?>", 1), "processing instruction"},
		{"stylesheet", "<?xml-stylesheet href='x'?>" + ok, "processing instruction"},
		{"late xml declaration", "<!-- x -->\n<?xml version='1.0'?>" + ok, "processing instruction"},
		{"other encoding", "<?xml version='1.0' encoding='ISO-8859-1'?>" + ok, "not well-formed"},
		{"default namespace", `<domain type="test" xmlns="urn:x">` + body, "default namespace"},
		{"two roots", ok + ok, "second root"},
		{"text after the root", ok + "x", "text outside"},
		{"NUL", ok + "\x00", "NUL"},
		{"duplicate attribute", strings.Replace(ok, `<domain type="test">`, `<domain type="test" type="kvm">`, 1), "twice"},
		{"prefixed attribute", strings.Replace(ok, `<disk type="file"`, `<disk xml:type="block" type="file"`, 1), "in namespace"},
		{"undeclared prefix", strings.Replace(ok, `<disk type="file"`, `<disk y:type="block" type="file"`, 1), "in namespace"},
		{"namespaced element", strings.Replace(ok, "<devices>", `<devices><x:disk xmlns:x="urn:x"/>`, 1), "namespace"},
		{"placement namespace elsewhere", strings.Replace(ok, "<devices>", `<devices xmlns:k="`+virt.PlacementNamespace+`">`, 1), "namespace declaration"},
		{"placement element elsewhere", strings.Replace(ok, "<devices>", `<devices><k:tag xmlns:k="`+virt.PlacementNamespace+`">x</k:tag>`, 1), "namespace"},
		{"other metadata", strings.Replace(ok, "<metadata>", `<metadata><o:os xmlns:o="http://libosinfo.org/xmlns/libvirt/domain/1.0"/>`, 1), "namespace"},
		{"unknown group type", strings.Replace(ok, "</kvmctl:placement>", `<kvmctl:group name="g" type="x"/></kvmctl:placement>`, 1), "type='x' is not allowed"},
		{"root", strings.Replace(strings.Replace(ok, "<domain ", "<node ", 1), "</domain>", "</node>", 1), "not <domain>"},
		{"domain type", strings.Replace(ok, `<domain type="test">`, `<domain type="lxc">`, 1), "type='lxc' is not allowed"},
		{"unknown element", strings.Replace(ok, "<devices>", "<devices><gizmo/>", 1), "<gizmo> is not allowed"},
		{"text in an element", strings.Replace(ok, "<devices>", "<devices>x", 1), "may not hold text"},
	} {
		err := virt.CheckDomain(c.xml, []string{dir})
		if !errors.Is(err, virt.ErrDomainRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want a refusal containing %q", c.name, err, c.want)
		}
	}
}
