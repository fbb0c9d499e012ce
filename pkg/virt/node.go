package virt

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The test driver reads a domain's run state from its own namespace in the
// node file: <test:runstate> holds a virDomainState number and defaults to
// running; <test:transient/> marks a domain with no persistent definition.
const (
	testNamespace    = "http://libvirt.org/schemas/domain/test/1.0"
	testStateShutoff = 5 // VIR_DOMAIN_SHUTOFF
)

// LabNamespace is the XML namespace of the lab's own annotations in a node
// file (the host name), which the test driver ignores.
const LabNamespace = "https://kvmctl.dev/xmlns/lab/1"

// NodeSpec describes one simulated lab host.
type NodeSpec struct {
	HostName  string
	CPUs      int
	MemoryMiB uint64
	VMs       []VMSpec
}

// NodeXML renders a libvirt test-driver node file: opened with
// test:///abs/path, NodeInfo reports exactly CPUs and MemoryMiB, and each VM
// is a domain of type "test", running when its Running is set.
func NodeXML(spec NodeSpec) ([]byte, error) {
	if spec.CPUs <= 0 || spec.MemoryMiB == 0 {
		return nil, fmt.Errorf("node xml %q: cpus and memory must be positive", spec.HostName)
	}
	var b bytes.Buffer
	b.WriteString("<?xml version=\"1.0\"?>\n<node>\n")
	b.WriteString("  <!-- libvirt test-driver node of the kvmctl lab; the agent rewrites it on every change -->\n")
	if spec.HostName != "" {
		fmt.Fprintf(&b, "  <lab:host xmlns:lab=\"%s\" name=\"%s\"/>\n", LabNamespace, esc(spec.HostName))
	}
	// The test driver computes CPUs as nodes*sockets*cores*threads.
	fmt.Fprintf(&b, "  <cpu>\n    <nodes>1</nodes>\n    <sockets>1</sockets>\n    <cores>%d</cores>\n    <threads>1</threads>\n    <mhz>2000</mhz>\n    <model>kvmctl-lab</model>\n  </cpu>\n", spec.CPUs)
	fmt.Fprintf(&b, "  <memory>%d</memory>\n", spec.MemoryMiB*1024) // KiB
	seen := map[string]bool{}
	for _, vm := range spec.VMs {
		if seen[vm.Name] {
			return nil, fmt.Errorf("node xml %q: vm %q listed twice", spec.HostName, vm.Name)
		}
		seen[vm.Name] = true
		state := testStateShutoff
		if vm.Running {
			state = 1 // VIR_DOMAIN_RUNNING
		}
		dom, err := renderDomain(vm, "")
		if err != nil {
			return nil, fmt.Errorf("node xml %q: %w", spec.HostName, err)
		}
		dom, err = WithTestState(dom, state, false)
		if err != nil {
			return nil, fmt.Errorf("node xml %q: %w", spec.HostName, err)
		}
		b.WriteString(indent(dom))
	}
	b.WriteString("</node>\n")
	return b.Bytes(), nil
}

// WithTestState adds the test driver's run-state elements to a domain XML so
// that loading the node file restores the domain in that state: state is a
// virDomainState number (1 running, 5 shut off), transient marks a domain
// without a persistent definition.
func WithTestState(dom string, state int, transient bool) (string, error) {
	open := strings.Index(dom, "<domain")
	end := strings.LastIndex(dom, "</domain>")
	if open < 0 || end < open {
		return "", fmt.Errorf("domain xml has no <domain> element")
	}
	if strings.Contains(dom, "<test:") {
		// libvirt does not format the test namespace today; if a future
		// version does, our elements would be duplicates.
		return "", fmt.Errorf("domain xml already carries test-driver elements")
	}
	extra := fmt.Sprintf("  <test:runstate>%d</test:runstate>\n", state)
	if transient {
		extra += "  <test:transient/>\n"
	}
	at := open + len("<domain")
	return dom[:at] + ` xmlns:test="` + testNamespace + `"` + dom[at:end] + extra + dom[end:], nil
}

func indent(s string) string {
	lines := strings.SplitAfter(strings.TrimRight(s, "\n"), "\n")
	return "  " + strings.Join(lines, "  ") + "\n"
}

// NodeDescription returns the children of a node file's <node> other than
// <domain> (cpu, memory, networks, pools, lab annotations, comments) as raw
// XML, so that a rewrite with RenderNodeFile keeps them as they were.
func NodeDescription(data []byte) ([][]byte, error) {
	children, err := nodeChildren(data)
	if err != nil {
		return nil, err
	}
	var parts [][]byte
	for _, c := range children {
		if !c.domain {
			parts = append(parts, c.raw)
		}
	}
	return parts, nil
}

// nodeChild is one child of a node file's <node> as written: an element or a comment.
type nodeChild struct {
	raw    []byte
	domain bool // a <domain> element
}

// nodeChildren splits a node file into the children of its <node>, as written.
func nodeChildren(data []byte) ([]nodeChild, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	var (
		children []nodeChild
		depth    int
		start    int64
		isDomain bool
		sawNode  bool
	)
	for {
		off := d.InputOffset()
		tok, err := d.RawToken()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parse node file: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			switch depth {
			case 1:
				if t.Name.Space != "" || t.Name.Local != "node" {
					return nil, fmt.Errorf("parse node file: root element is <%s>, want <node>", t.Name.Local)
				}
				sawNode = true
			case 2:
				start = off
				isDomain = t.Name.Space == "" && t.Name.Local == "domain"
			}
		case xml.EndElement:
			if depth == 2 {
				children = append(children, nodeChild{raw: data[start:d.InputOffset()], domain: isDomain})
			}
			depth--
		case xml.Comment:
			if depth == 1 {
				children = append(children, nodeChild{raw: data[off:d.InputOffset()]})
			}
		}
	}
	if !sawNode || depth != 0 {
		return nil, fmt.Errorf("parse node file: no complete <node> element")
	}
	return children, nil
}

// RenderNodeFile joins a node description (from NodeDescription) and domain
// XMLs, each already carrying its test state (WithTestState), into a node file.
func RenderNodeFile(desc [][]byte, domains []string) []byte {
	var b bytes.Buffer
	b.WriteString("<?xml version=\"1.0\"?>\n<node>\n")
	for _, p := range desc {
		b.WriteString("  ")
		b.Write(p)
		b.WriteString("\n")
	}
	for _, d := range domains {
		b.WriteString(indent(d))
	}
	b.WriteString("</node>\n")
	return b.Bytes()
}

// NodeDomain is one domain of a test-driver node file as the file records it: what a lab
// machine needs to know about the VMs of its host without asking libvirt.
type NodeDomain struct {
	Name      string
	State     State
	Transient bool
	// Disks are the source paths of the domain's file and block disks.
	Disks []string
}

// nodeFileXML is the part of a node file NodeDomains reads.
type nodeFileXML struct {
	Domains []struct {
		Name     string `xml:"name"`
		RunState *struct {
			Value string `xml:",chardata"`
		} `xml:"http://libvirt.org/schemas/domain/test/1.0 runstate"`
		Transient *struct{} `xml:"http://libvirt.org/schemas/domain/test/1.0 transient"`
		Disks     []diskXML `xml:"devices>disk"`
	} `xml:"domain"`
}

// testStates names the virDomainState numbers of <test:runstate>.
var testStates = map[int]State{0: StateNoState, 1: StateRunning, 2: StateBlocked, 3: StatePaused,
	4: StateShutdown, testStateShutoff: StateShutoff, 6: StateCrashed, 7: StatePMSuspended}

// NodeDomains lists the domains of a test-driver node file with the run state the file gives
// them (running when it gives none, as the test driver reads it).
func NodeDomains(data []byte) ([]NodeDomain, error) {
	var n nodeFileXML
	if err := xml.Unmarshal(data, &n); err != nil {
		return nil, fmt.Errorf("parse node file: %w", err)
	}
	out := make([]NodeDomain, 0, len(n.Domains))
	for _, d := range n.Domains {
		nd := NodeDomain{Name: strings.TrimSpace(d.Name), State: StateRunning, Transient: d.Transient != nil, Disks: diskSources(d.Disks)}
		if d.RunState != nil {
			v, err := strconv.Atoi(strings.TrimSpace(d.RunState.Value))
			st, ok := testStates[v]
			if err != nil || !ok {
				return nil, fmt.Errorf("parse node file: domain %q: run state %q is not a virDomainState", nd.Name, d.RunState.Value)
			}
			nd.State = st
		}
		out = append(out, nd)
	}
	return out, nil
}

// PowerOffNode returns a node file as a host that lost its power leaves it: every persistent
// domain shut off, every transient one gone (it has no definition to come back from). The rest
// of the file is kept as it was.
func PowerOffNode(data []byte) ([]byte, error) {
	desc, err := NodeDescription(data)
	if err != nil {
		return nil, err
	}
	raw, err := rawDomains(data)
	if err != nil {
		return nil, err
	}
	doms, err := NodeDomains(data)
	if err != nil {
		return nil, err
	}
	if len(doms) != len(raw) {
		return nil, fmt.Errorf("parse node file: %d domains, %d read", len(raw), len(doms))
	}
	var kept []string
	for i, d := range raw {
		if doms[i].Transient {
			continue
		}
		off, err := shutOff(d)
		if err != nil {
			return nil, fmt.Errorf("node file: domain %q: %w", doms[i].Name, err)
		}
		kept = append(kept, off)
	}
	return RenderNodeFile(desc, kept), nil
}

// rawDomains returns the <domain> children of a node file's <node> as written, each without the
// indentation RenderNodeFile gives it, so that a rewrite does not indent it further.
func rawDomains(data []byte) ([]string, error) {
	children, err := nodeChildren(data)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range children {
		if c.domain {
			out = append(out, strings.ReplaceAll(string(c.raw), "\n  ", "\n"))
		}
	}
	return out, nil
}

// shutOff sets a domain's <test:runstate> to shut off, adding one when it has none.
func shutOff(dom string) (string, error) {
	const open, end = "<test:runstate>", "</test:runstate>"
	i := strings.Index(dom, open)
	if i < 0 {
		return WithTestState(dom, testStateShutoff, false)
	}
	j := strings.Index(dom[i:], end)
	if j < 0 {
		return "", fmt.Errorf("unterminated %s", open)
	}
	return dom[:i+len(open)] + strconv.Itoa(testStateShutoff) + dom[i+j:], nil
}
