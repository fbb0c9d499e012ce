package virt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// ErrDomainRefused marks a domain definition that the VM policy refuses.
var ErrDomainRefused = errors.New("domain xml refused")

// CheckDomain checks a VM definition (libvirt domain XML) sent to a host against the VM
// policy: an allowlist of what a normal VM needs (see rules.go), nothing that reaches the host
// around it, and every file the guest gets from the host (disks, backing stores, kernel,
// firmware, nvram) inside diskDirs (vm.disk.dirs), symbolic links resolved on this machine.
// With no diskDirs every file is refused. A refusal wraps ErrDomainRefused and names what was
// refused and why.
//
// The XML is read with the rules libvirt's own parser follows (libxml2): any DOCTYPE (whose
// attribute defaults libvirt applies), entity or processing instruction is refused, and so is
// every namespaced element or attribute (libvirt reads attributes by local name, ignoring their
// namespace) but kvmctl's placement metadata.
func CheckDomain(domain string, diskDirs []string) error {
	if len(diskDirs) == 0 {
		return refuse("no vm.disk.dirs is set on this host, so no VM file can be accepted: set vm.disk.dirs in agent.properties")
	}
	return checkDomain(domain, newHostPaths(diskDirs))
}

// CheckDomainShape checks everything CheckDomain checks but where the VM's files lie, which
// only the host that receives the definition can tell (its vm.disk.dirs, its symbolic links):
// every path must still be absolute and clean. kvmctl runs it on a definition before it sends
// it to a host.
func CheckDomainShape(domain string) error {
	return checkDomain(domain, nil)
}

func refuse(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrDomainRefused, fmt.Sprintf(format, a...))
}

func checkDomain(domain string, paths *hostPaths) error {
	root, err := parseStrict(domain)
	if err != nil {
		return err
	}
	if root.space != "" || root.local != "domain" {
		return refuse("the root element is <%s>, not <domain>", root.tag())
	}
	c := &checker{paths: paths}
	return c.element(domainRule, root, "<domain>")
}

// node is one element of a parsed definition.
type node struct {
	space, local string
	attrs        []xml.Attr // without namespace declarations
	decls        []xml.Attr // namespace declarations (xmlns:prefix)
	kids         []*node
	text         strings.Builder // the element's own character data, joined
}

func (n *node) tag() string {
	if n.space != "" {
		return "{" + n.space + "}" + n.local
	}
	return n.local
}

// parseStrict reads a definition into a tree, refusing what libxml2 would read differently
// from Go's decoder or what reaches the host by itself: a DOCTYPE and its entities and
// attribute defaults, processing instructions, default namespaces, duplicate attributes,
// several roots and NUL bytes (libvirt gets the XML as a C string).
func parseStrict(domain string) (*node, error) {
	if strings.IndexByte(domain, 0) >= 0 {
		return nil, refuse("the XML holds a NUL byte")
	}
	dec := xml.NewDecoder(strings.NewReader(domain))
	var (
		root  *node
		stack []*node
		first = true
	)
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, refuse("not well-formed XML: %v", err)
		}
		isFirst := first
		first = false
		switch t := tok.(type) {
		case xml.ProcInst:
			if t.Target != "xml" || !isFirst {
				return nil, refuse("the processing instruction <?%s?> is not allowed: send only the <domain> element", t.Target)
			}
		case xml.Directive:
			what := strings.Fields(string(t))
			if len(what) > 0 && strings.EqualFold(what[0], "DOCTYPE") {
				return nil, refuse("a DOCTYPE is not allowed: libvirt would apply its entities and attribute defaults; send the <domain> element alone")
			}
			return nil, refuse("the declaration <!%s> is not allowed", firstWord(string(t)))
		case xml.Comment:
		case xml.CharData:
			if len(stack) == 0 {
				if strings.TrimSpace(string(t)) != "" {
					return nil, refuse("text outside <domain> is not allowed")
				}
				continue
			}
			stack[len(stack)-1].text.Write(t)
		case xml.StartElement:
			if len(stack) == 0 && root != nil {
				return nil, refuse("a second root element <%s> is not allowed", t.Name.Local)
			}
			n := &node{space: t.Name.Space, local: t.Name.Local}
			seen := map[xml.Name]bool{}
			for _, a := range t.Attr {
				if seen[a.Name] {
					return nil, refuse("<%s> has attribute %s twice", n.local, a.Name.Local)
				}
				seen[a.Name] = true
				switch {
				case a.Name.Space == "xmlns":
					n.decls = append(n.decls, a)
				case a.Name.Space == "" && a.Name.Local == "xmlns":
					return nil, refuse("<%s>: a default namespace (xmlns=%q) is not allowed", n.local, a.Value)
				default:
					n.attrs = append(n.attrs, a)
				}
			}
			if len(stack) == 0 {
				root = n
			} else {
				p := stack[len(stack)-1]
				p.kids = append(p.kids, n)
			}
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		}
	}
	if root == nil {
		return nil, refuse("no <domain> element")
	}
	return root, nil
}

func firstWord(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return ""
}

// checker walks a parsed definition along the rules.
type checker struct {
	paths  *hostPaths // nil: paths are checked for shape only
	device string     // the device or top-level element being checked ("disk 2", "<os>"), for path messages
}

// element checks n and its subtree against r; where names n in messages.
func (c *checker) element(r *rule, n *node, where string) error {
	for _, d := range n.decls {
		if d.Value != PlacementNamespace || r != placementRule {
			return refuse("%s: the namespace declaration xmlns:%s=%q is not allowed: only kvmctl's placement metadata (<%s:placement xmlns:%s=%q>) may use a namespace",
				where, d.Name.Local, d.Value, PlacementPrefix, PlacementPrefix, PlacementNamespace)
		}
	}
	for _, a := range n.attrs {
		if a.Name.Space != "" {
			return refuse("%s: the attribute %s in namespace %s is not allowed: libvirt reads attributes by their local name, whatever their namespace",
				where, a.Name.Local, a.Name.Space)
		}
		if strings.Contains(a.Name.Local, ":") {
			return refuse("%s: the attribute name %q is not allowed", where, a.Name.Local)
		}
		ar, ok := r.attrs[a.Name.Local]
		if !ok {
			if r.free && !hostRefAttrs[a.Name.Local] {
				continue
			}
			return refuse("%s: the attribute %s='%s' is not allowed%s", where, a.Name.Local, a.Value, reason(a.Name.Local))
		}
		if err := c.attr(ar, where, a); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(r.attrs)) {
		if ar := r.attrs[name]; ar.required && attrOf(n, name) == "" {
			return refuse("%s: the attribute %s is missing (allowed: %s)", where, name, strings.Join(r.attrs[name].values, ", "))
		}
	}
	text := n.text.String()
	switch {
	case r.text != nil:
		if err := r.text(c, where, text); err != nil {
			return err
		}
	case r.free:
	case strings.TrimSpace(text) != "":
		return refuse("%s: <%s> may not hold text", where, n.local)
	}
	count := map[string]int{}
	for _, k := range n.kids {
		key := k.local
		if k.space != "" {
			key = k.space + " " + k.local
		}
		count[key]++
		kr, ok := r.kids[key]
		if !ok && r.free && k.space == "" {
			kr, ok = freeRule, true
		}
		if !ok {
			if k.space != "" {
				return refuse("%s: the element <%s> in namespace %s is not allowed: only kvmctl's placement metadata may use a namespace", where, k.local, k.space)
			}
			return refuse("%s: <%s> is not allowed%s: a VM defined through kvmctl may use only what a normal VM needs", where, k.local, reason(k.local))
		}
		kwhere := where + " <" + k.local + ">"
		switch r {
		case devicesRule:
			// Devices are named by kind and position: "disk 2".
			kwhere = fmt.Sprintf("%s %d", k.local, count[key])
			c.device = kwhere
		case domainRule:
			kwhere = "<" + k.local + ">"
			c.device = kwhere
		}
		if err := c.element(kr, k, kwhere); err != nil {
			return err
		}
	}
	if r.check != nil {
		return r.check(c, n, where)
	}
	return nil
}

func (c *checker) attr(ar attrRule, where string, a xml.Attr) error {
	if len(ar.values) > 0 && !slices.Contains(ar.values, a.Value) {
		return refuse("%s: %s='%s' is not allowed (allowed: %s)%s", where, a.Name.Local, a.Value, strings.Join(ar.values, ", "), reason(a.Name.Local+"="+a.Value))
	}
	if ar.check != nil {
		return ar.check(c, where, a.Value)
	}
	return nil
}

func attrOf(n *node, name string) string {
	for _, a := range n.attrs {
		if a.Name.Space == "" && a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// reason explains a refusal of an element, an attribute or a value, when there is more to say
// than "not a normal VM's".
func reason(what string) string {
	if r, ok := reasons[what]; ok {
		return " (" + r + ")"
	}
	return ""
}
