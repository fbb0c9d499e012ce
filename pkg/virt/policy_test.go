package virt

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDomainPolicyDiskDirs(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "vm1.img")
	if err := os.WriteFile(img, []byte("disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok, err := RenderDomainXML(VMSpec{Name: "vm1", VCPUs: 1, MemoryMiB: 512, Disks: []string{img}})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckDomainPolicy(ok, dir); err != nil {
		t.Errorf("a disk inside the storage dir was refused: %v", err)
	}
	for name, c := range map[string]struct{ xml, want string }{
		"host file as disk": {strings.Replace(ok, img, "/etc/shadow", 1), "outside the VM storage directories"},
		"dot-dot escape":    {strings.Replace(ok, img, dir+"/../../etc/shadow", 1), "outside the VM storage directories"},
		"kernel":            {strings.Replace(ok, "<os>", "<os><kernel>/boot/vmlinuz</kernel>", 1), "<kernel> /boot/vmlinuz is outside"},
		"emulator":          {strings.Replace(ok, "<devices>", "<devices><emulator>/bin/sh</emulator>", 1), "is not a qemu binary"},
	} {
		err := CheckDomainPolicy(c.xml, dir)
		if !errors.Is(err, ErrDomainRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want a refusal containing %q", name, err, c.want)
		}
	}
	qemu := strings.Replace(ok, "<devices>", "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>", 1)
	if err := CheckDomainPolicy(qemu, dir); err != nil {
		t.Errorf("the qemu emulator was refused: %v", err)
	}
}
