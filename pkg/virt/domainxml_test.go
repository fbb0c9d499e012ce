package virt

import (
	"reflect"
	"regexp"
	"testing"
)

func TestParseDomainXML(t *testing.T) {
	const dom = `<domain type='kvm' id='3'>
  <name>db1</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <metadata>
    <other:thing xmlns:other="https://example.com/x"><other:tag>nope</other:tag></other:thing>
    <kvmctl:placement xmlns:kvmctl="https://kvmctl.dev/xmlns/placement/1">
      <kvmctl:tag>ssd</kvmctl:tag>
      <kvmctl:group name="web" type="host-anti-affinity"/>
    </kvmctl:placement>
  </metadata>
  <memory unit='GiB'>2</memory>
  <vcpu placement='static' current='2'>4</vcpu>
  <devices>
    <disk type='file' device='disk'><source file='/nfs/db1.qcow2'/><target dev='vda'/></disk>
    <disk type='block' device='disk'><source dev='/dev/vg/db1'/><target dev='vdb'/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/db1'/><target dev='vdc'/></disk>
    <disk type='file' device='cdrom'><target dev='hdc'/></disk>
  </devices>
</domain>`
	got, err := ParseDomainXML(dom)
	if err != nil {
		t.Fatal(err)
	}
	want := VM{Name: "db1", UUID: "c7a5fdbd-edaf-9455-926a-d65c16db1809", VCPUs: 2, MemoryMiB: 2048,
		Disks: []string{"/nfs/db1.qcow2", "/dev/vg/db1"}, RequiredTags: []string{"ssd"},
		AffinityGroups: []AffinityGroup{{Name: "web", Type: GroupHostAntiAffinity}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	for _, bad := range []string{"", "<domain>", "<domain><vcpu>x</vcpu><name>a</name></domain>",
		"<domain><name>a</name><memory unit='parsecs'>1</memory></domain>"} {
		if _, err := ParseDomainXML(bad); err == nil {
			t.Errorf("ParseDomainXML(%q) succeeded", bad)
		}
	}
}

func TestRenderDomainXMLRoundTrip(t *testing.T) {
	spec := VMSpec{Name: `a<&"b`, VCPUs: 3, MemoryMiB: 768, Disks: []string{"/d/1", "/d/2"},
		Tags: []string{"x&y"}, Groups: []AffinityGroup{{Name: "g", Type: GroupHostAffinity}}}
	x, err := RenderDomainXML(spec)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseDomainXML(x)
	if err != nil {
		t.Fatalf("%v\n%s", err, x)
	}
	want := VM{Name: spec.Name, UUID: NameUUID(spec.Name), VCPUs: 3, MemoryMiB: 768, Disks: spec.Disks,
		RequiredTags: spec.Tags, AffinityGroups: spec.Groups}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}

	for _, bad := range []VMSpec{
		{VCPUs: 1, MemoryMiB: 1},
		{Name: "a", MemoryMiB: 1},
		{Name: "a", VCPUs: 1, MemoryMiB: 1, Groups: []AffinityGroup{{Name: "g", Type: "affinity"}}},
		{Name: "a", VCPUs: 1, MemoryMiB: 1, Groups: []AffinityGroup{{Type: GroupHostAffinity}}},
		{Name: "a", VCPUs: 1, MemoryMiB: 1, Tags: []string{" "}},
		{Name: "a", VCPUs: 1, MemoryMiB: 1, Disks: []string{""}},
	} {
		if _, err := RenderDomainXML(bad); err == nil {
			t.Errorf("RenderDomainXML(%+v) succeeded", bad)
		}
	}
}

func TestNameUUID(t *testing.T) {
	u := NameUUID("web1")
	if u != NameUUID("web1") || u == NameUUID("web2") {
		t.Fatal("NameUUID is not a stable function of the name")
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(u) {
		t.Errorf("NameUUID = %q, not a version 5 UUID", u)
	}
}

func TestDiskTarget(t *testing.T) {
	for i, want := range map[int]string{0: "vda", 25: "vdz", 26: "vdaa", 27: "vdab", 52: "vdba"} {
		if got := diskTarget(i); got != want {
			t.Errorf("diskTarget(%d) = %s, want %s", i, got, want)
		}
	}
}

func TestNodeXMLRejects(t *testing.T) {
	for _, spec := range []NodeSpec{
		{HostName: "h", MemoryMiB: 1},
		{HostName: "h", CPUs: 1},
		{HostName: "h", CPUs: 1, MemoryMiB: 1, VMs: []VMSpec{{Name: "a", VCPUs: 1, MemoryMiB: 1}, {Name: "a", VCPUs: 1, MemoryMiB: 1}}},
	} {
		if _, err := NodeXML(spec); err == nil {
			t.Errorf("NodeXML(%+v) succeeded", spec)
		}
	}
}

func TestAllocationCountsActiveVMs(t *testing.T) {
	vms := []VM{
		{State: StateRunning, VCPUs: 2, MemoryMiB: 1024},
		{State: StatePaused, VCPUs: 1, MemoryMiB: 512},
		{State: StateShutoff, VCPUs: 8, MemoryMiB: 8192},
	}
	if got := Allocation(vms); got != (Capacity{CPUs: 3, MemoryMiB: 1536}) {
		t.Errorf("Allocation = %+v", got)
	}
}
