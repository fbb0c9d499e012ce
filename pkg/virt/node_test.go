package virt

import (
	"reflect"
	"strings"
	"testing"
)

func TestNodeDomainsAndPowerOff(t *testing.T) {
	data, err := NodeXML(NodeSpec{HostName: "h1", CPUs: 4, MemoryMiB: 4096, VMs: []VMSpec{
		{Name: "a", VCPUs: 1, MemoryMiB: 512, Disks: []string{"/lab/shared/a.img"}, Running: true},
		{Name: "b", VCPUs: 1, MemoryMiB: 512, Disks: []string{"/lab/shared/b.img", "/lab/shared/b2.img"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// A transient domain, as libvirt's persist writes one, and one with no run state (running).
	tr, err := WithTestState(`<domain type="test"><name>t</name><devices><disk><source file="/lab/shared/t.img"/></disk></devices></domain>`, 1, true)
	if err != nil {
		t.Fatal(err)
	}
	data = []byte(strings.Replace(string(data), "</node>", indent(tr)+"  <domain type=\"test\">\n    <name>n</name>\n  </domain>\n</node>", 1))

	got, err := NodeDomains(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []NodeDomain{
		{Name: "a", State: StateRunning, Disks: []string{"/lab/shared/a.img"}},
		{Name: "b", State: StateShutoff, Disks: []string{"/lab/shared/b.img", "/lab/shared/b2.img"}},
		{Name: "t", State: StateRunning, Transient: true, Disks: []string{"/lab/shared/t.img"}},
		{Name: "n", State: StateRunning},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("NodeDomains = %+v\nwant %+v", got, want)
	}

	off, err := PowerOffNode(data)
	if err != nil {
		t.Fatal(err)
	}
	got, err = NodeDomains(off)
	if err != nil {
		t.Fatalf("NodeDomains(powered off): %v\n%s", err, off)
	}
	want = []NodeDomain{
		{Name: "a", State: StateShutoff, Disks: []string{"/lab/shared/a.img"}},
		{Name: "b", State: StateShutoff, Disks: []string{"/lab/shared/b.img", "/lab/shared/b2.img"}},
		{Name: "n", State: StateShutoff},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after PowerOffNode: %+v\nwant %+v\n%s", got, want, off)
	}
	if !strings.Contains(string(off), `<lab:host xmlns:lab="`+LabNamespace+`" name="h1"/>`) || !strings.Contains(string(off), "<cores>4</cores>") {
		t.Errorf("PowerOffNode lost the node description:\n%s", off)
	}
	// A second power loss changes nothing, indentation included.
	again, err := PowerOffNode(off)
	if err != nil || string(again) != string(off) {
		t.Errorf("PowerOffNode is not idempotent: %v\n%s\n---\n%s", err, off, again)
	}
}

func TestNodeDomainsRefusesUnknownRunState(t *testing.T) {
	data := `<node><domain xmlns:test="` + testNamespace + `"><name>x</name><test:runstate>42</test:runstate></domain></node>`
	if _, err := NodeDomains([]byte(data)); err == nil || !strings.Contains(err.Error(), `run state "42"`) {
		t.Errorf("NodeDomains = %v, want a refusal of run state 42", err)
	}
	if _, err := PowerOffNode([]byte("<nodes/>")); err == nil {
		t.Errorf("PowerOffNode of a file that is not a node file: no error")
	}
}
