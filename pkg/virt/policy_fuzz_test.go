package virt_test

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/virt"
	"github.com/kvmctl/kvmctl/pkg/virt/virttest"
)

// FuzzCheckDomain: the policy never panics, and a definition it accepts, read again by a
// decoder of its own, has every disk and backing store source inside vm.disk.dirs and no
// namespaced attribute. The seeds are the normal and attack definitions.
func FuzzCheckDomain(f *testing.F) {
	dir := f.TempDir()
	attacks, err := virttest.Attacks(dir)
	if err != nil {
		f.Fatal(err)
	}
	for _, d := range append(virttest.Normal(dir), attacks...) {
		f.Add(d.XML)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, domain string) {
		if virt.CheckDomain(domain, []string{dir}) != nil {
			return
		}
		if err := acceptedIsSafe(domain, realDir); err != nil {
			t.Fatalf("accepted, but %v:\n%s", err, domain)
		}
		if err := virt.CheckDomainShape(domain); err != nil {
			t.Fatalf("accepted on the host, refused by the shape check: %v", err)
		}
	})
}

// acceptedIsSafe reads an accepted definition token by token, independently of the policy.
func acceptedIsSafe(domain, dir string) error {
	dec := xml.NewDecoder(strings.NewReader(domain))
	var stack []string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("it does not parse: %w", err)
		}
		switch t := tok.(type) {
		case xml.Directive:
			return fmt.Errorf("it has a directive <!%s>", t)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
		case xml.StartElement:
			parent := ""
			if len(stack) > 0 {
				parent = stack[len(stack)-1]
			}
			stack = append(stack, t.Name.Local)
			for _, a := range t.Attr {
				switch {
				case a.Name.Space == "xmlns" && a.Value == virt.PlacementNamespace:
				case a.Name.Space != "":
					return fmt.Errorf("<%s> has the namespaced attribute %s:%s", t.Name.Local, a.Name.Space, a.Name.Local)
				case t.Name.Local == "disk" && a.Name.Local == "type" && a.Value != "file":
					return fmt.Errorf("a disk has type %q", a.Value)
				case t.Name.Local == "source" && (parent == "disk" || parent == "backingStore"):
					if a.Name.Local != "file" {
						if a.Name.Local == "startupPolicy" || a.Name.Local == "index" {
							continue
						}
						return fmt.Errorf("a %s source has the attribute %s", parent, a.Name.Local)
					}
					real, err := filepath.EvalSymlinks(a.Value)
					if err != nil {
						real = filepath.Clean(a.Value)
					}
					if real != dir && !strings.HasPrefix(real, dir+"/") {
						return fmt.Errorf("a %s source %s (%s) is outside %s", parent, a.Value, real, dir)
					}
				}
			}
		}
	}
}
