package virt

import (
	"bytes"
	"crypto/sha1"
	"encoding/xml"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// PlacementNamespace is the XML namespace of kvmctl's placement metadata in a
// domain's <metadata>; PlacementPrefix is the prefix kvmctl writes.
const (
	PlacementNamespace = "https://kvmctl.dev/xmlns/placement/1"
	PlacementPrefix    = "kvmctl"
)

// domainXML is the part of a libvirt domain definition kvmctl reads.
type domainXML struct {
	XMLName xml.Name `xml:"domain"`
	Name    string   `xml:"name"`
	UUID    string   `xml:"uuid"`
	Memory  struct {
		Unit  string `xml:"unit,attr"`
		Value string `xml:",chardata"`
	} `xml:"memory"`
	VCPU struct {
		Current string `xml:"current,attr"`
		Value   string `xml:",chardata"`
	} `xml:"vcpu"`
	Metadata struct {
		Placement *placementXML `xml:"https://kvmctl.dev/xmlns/placement/1 placement"`
	} `xml:"metadata"`
	Disks []diskXML `xml:"devices>disk"`
}

// diskXML is a domain's <disk> as kvmctl reads it: its source.
type diskXML struct {
	Source struct {
		File string `xml:"file,attr"`
		Dev  string `xml:"dev,attr"`
	} `xml:"source"`
}

// diskSources returns the source paths of the file and block disks among disks.
func diskSources(disks []diskXML) []string {
	var out []string
	for _, disk := range disks {
		switch {
		case disk.Source.File != "":
			out = append(out, disk.Source.File)
		case disk.Source.Dev != "":
			out = append(out, disk.Source.Dev)
		}
	}
	return out
}

type placementXML struct {
	Tags   []string `xml:"https://kvmctl.dev/xmlns/placement/1 tag"`
	Groups []struct {
		Name string `xml:"name,attr"`
		Type string `xml:"type,attr"`
	} `xml:"https://kvmctl.dev/xmlns/placement/1 group"`
}

// ParseDomainXML reads a libvirt domain definition: name, UUID, vCPUs, memory,
// disk source paths and the kvmctl placement metadata. State is left empty:
// it is not part of a definition. Unknown group types are kept as written.
func ParseDomainXML(domain string) (VM, error) {
	var d domainXML
	if err := xml.Unmarshal([]byte(domain), &d); err != nil {
		return VM{}, fmt.Errorf("parse domain xml: %w", err)
	}
	vm := VM{Name: strings.TrimSpace(d.Name), UUID: strings.TrimSpace(d.UUID)}
	if vm.Name == "" {
		return VM{}, fmt.Errorf("parse domain xml: no <name>")
	}
	vcpus := strings.TrimSpace(d.VCPU.Current)
	if vcpus == "" {
		vcpus = strings.TrimSpace(d.VCPU.Value)
	}
	if vcpus != "" {
		n, err := strconv.Atoi(vcpus)
		if err != nil {
			return VM{}, fmt.Errorf("parse domain xml %q: vcpu %q: %w", vm.Name, vcpus, err)
		}
		vm.VCPUs = n
	}
	if v := strings.TrimSpace(d.Memory.Value); v != "" {
		kib, err := toKiB(v, d.Memory.Unit)
		if err != nil {
			return VM{}, fmt.Errorf("parse domain xml %q: memory: %w", vm.Name, err)
		}
		vm.MemoryMiB = kib / 1024
	}
	vm.Disks = diskSources(d.Disks)
	if p := d.Metadata.Placement; p != nil {
		for _, t := range p.Tags {
			if t = strings.TrimSpace(t); t != "" {
				vm.RequiredTags = append(vm.RequiredTags, t)
			}
		}
		for _, g := range p.Groups {
			vm.AffinityGroups = append(vm.AffinityGroups, AffinityGroup{Name: g.Name, Type: g.Type})
		}
	}
	return vm, nil
}

// toKiB converts a libvirt scaled integer (default unit KiB) to KiB.
func toKiB(value, unit string) (uint64, error) {
	n, err := strconv.ParseUint(value, 10, 64)
	if err != nil {
		return 0, err
	}
	var mul, div uint64 = 1, 1
	switch unit {
	case "b", "bytes":
		div = 1024
	case "KB":
		mul, div = 1000, 1024
	case "", "k", "KiB":
	case "MB":
		mul, div = 1000*1000, 1024
	case "M", "MiB":
		mul = 1024
	case "GB":
		mul, div = 1000*1000*1000, 1024
	case "G", "GiB":
		mul = 1024 * 1024
	case "TB":
		mul, div = 1000*1000*1000*1000, 1024
	case "T", "TiB":
		mul = 1024 * 1024 * 1024
	default:
		return 0, fmt.Errorf("unknown unit %q", unit)
	}
	return n * mul / div, nil
}

// RenderPlacement renders the <kvmctl:placement> element that goes inside a
// domain's <metadata>. It refuses empty names and unknown group types.
func RenderPlacement(tags []string, groups []AffinityGroup) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "<%s:placement xmlns:%s=\"%s\">", PlacementPrefix, PlacementPrefix, PlacementNamespace)
	for _, t := range tags {
		if strings.TrimSpace(t) == "" {
			return "", fmt.Errorf("render placement: empty tag")
		}
		fmt.Fprintf(&b, "<%s:tag>%s</%s:tag>", PlacementPrefix, esc(t), PlacementPrefix)
	}
	for _, g := range groups {
		if g.Name == "" {
			return "", fmt.Errorf("render placement: affinity group without a name")
		}
		if g.Type != GroupHostAffinity && g.Type != GroupHostAntiAffinity {
			return "", fmt.Errorf("render placement: group %q: type %q is not %s or %s",
				g.Name, g.Type, GroupHostAffinity, GroupHostAntiAffinity)
		}
		fmt.Fprintf(&b, "<%s:group name=\"%s\" type=\"%s\"/>", PlacementPrefix, esc(g.Name), esc(g.Type))
	}
	fmt.Fprintf(&b, "</%s:placement>", PlacementPrefix)
	return b.String(), nil
}

// VMSpec describes a lab VM for RenderDomainXML and NodeXML.
type VMSpec struct {
	Name string
	// UUID may be empty: a stable UUID is then derived from Name, so the
	// same VM keeps its UUID on every host and across regenerations.
	UUID      string
	VCPUs     int
	MemoryMiB uint64
	Disks     []string // file paths
	Tags      []string
	Groups    []AffinityGroup
	// Running is used by NodeXML only: the VM starts running when the node
	// file is loaded. RenderDomainXML ignores it.
	Running bool
}

// RenderDomainXML renders a libvirt domain of type "test" (the lab's test
// driver) with the spec's vCPUs, memory, file disks and kvmctl placement
// metadata.
func RenderDomainXML(vm VMSpec) (string, error) {
	return renderDomain(vm, "")
}

// renderDomain renders vm; extra is inserted verbatim before </domain>.
func renderDomain(vm VMSpec, extra string) (string, error) {
	if vm.Name == "" {
		return "", fmt.Errorf("render domain: vm without a name")
	}
	if vm.VCPUs <= 0 || vm.MemoryMiB == 0 {
		return "", fmt.Errorf("render domain %q: vcpus and memory must be positive", vm.Name)
	}
	if slices.Contains(vm.Disks, "") {
		return "", fmt.Errorf("render domain %q: empty disk path", vm.Name)
	}
	placement, err := RenderPlacement(vm.Tags, vm.Groups)
	if err != nil {
		return "", fmt.Errorf("render domain %q: %w", vm.Name, err)
	}
	uuid := vm.UUID
	if uuid == "" {
		uuid = NameUUID(vm.Name)
	}
	var b strings.Builder
	b.WriteString("<domain type=\"test\">\n")
	fmt.Fprintf(&b, "  <name>%s</name>\n", esc(vm.Name))
	fmt.Fprintf(&b, "  <uuid>%s</uuid>\n", esc(uuid))
	fmt.Fprintf(&b, "  <metadata>\n    %s\n  </metadata>\n", placement)
	fmt.Fprintf(&b, "  <memory unit=\"MiB\">%d</memory>\n", vm.MemoryMiB)
	fmt.Fprintf(&b, "  <vcpu>%d</vcpu>\n", vm.VCPUs)
	b.WriteString("  <os>\n    <type>hvm</type>\n  </os>\n")
	b.WriteString("  <devices>\n")
	for i, disk := range vm.Disks {
		fmt.Fprintf(&b, "    <disk type=\"file\" device=\"disk\">\n      <source file=\"%s\"/>\n      <target dev=\"%s\" bus=\"virtio\"/>\n    </disk>\n",
			esc(disk), diskTarget(i))
	}
	b.WriteString("  </devices>\n")
	b.WriteString(extra)
	b.WriteString("</domain>\n")
	return b.String(), nil
}

// NameUUID derives a stable UUID (RFC 9562 version 5) from a VM name.
func NameUUID(name string) string {
	// A fixed namespace UUID for kvmctl lab VM names.
	ns := []byte{0x6b, 0x76, 0x6d, 0x63, 0x74, 0x6c, 0x4c, 0x61, 0x62, 0x56, 0x4d, 0x6e, 0x61, 0x6d, 0x65, 0x73}
	h := sha1.Sum(append(ns, name...))
	u := h[:16]
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// diskTarget names the i-th virtio disk: vda … vdz, vdaa, …
func diskTarget(i int) string {
	var s []byte
	for i++; i > 0; i = (i - 1) / 26 {
		s = append([]byte{byte('a' + (i-1)%26)}, s...)
	}
	return "vd" + string(s)
}

// esc escapes s for XML text and attribute values.
func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
