package api

import (
	"fmt"
	"net/netip"
	"strings"
)

// A live migration's destination is the only libvirt URI kvmctl sends an agent, and libvirt
// connects to it as root with the host's own credentials: a URI may name a program to run
// (qemu+ext, command=), a socket (socket=), key files (keyfile=, pkipath=), another user or
// port. So the URI has exactly one form, built by kvmctl from its inventory and checked by the
// agent: qemu+tls://HOST/system.
const (
	migrationScheme = "qemu+tls://"
	migrationPath   = "/system"
)

// MigrationURI is the libvirt URI of a live migration to host: qemu+tls://HOST/system, where
// host is a DNS name or an IP address (an IPv6 one is written in brackets).
func MigrationURI(host string) (string, error) {
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return "", fmt.Errorf("migration host %q: an IPv6 zone is not allowed", host)
		}
		if ip.Is6() {
			return migrationScheme + "[" + ip.String() + "]" + migrationPath, nil
		}
		return migrationScheme + ip.String() + migrationPath, nil
	}
	if err := checkDNSName(host); err != nil {
		return "", fmt.Errorf("migration host %q: %w", host, err)
	}
	return migrationScheme + host + migrationPath, nil
}

// CheckMigrationURI refuses a destination URI that MigrationURI would not have built: another
// scheme or path, a user, a port, a query, a fragment, a host that is neither a DNS name nor an
// IP address.
func CheckMigrationURI(uri string) error {
	host, ok := strings.CutPrefix(uri, migrationScheme)
	if ok {
		host, ok = strings.CutSuffix(host, migrationPath)
	}
	if !ok {
		return fmt.Errorf("want qemu+tls://HOST/system, the only form kvmctl sends")
	}
	if inner, ok := strings.CutPrefix(host, "["); ok {
		host, _ = strings.CutSuffix(inner, "]")
	}
	built, err := MigrationURI(host)
	if err != nil {
		return err
	}
	if built != uri {
		return fmt.Errorf("want qemu+tls://HOST/system with HOST a plain DNS name or IP address (as %s)", built)
	}
	return nil
}

// checkDNSName accepts a host name of letters, digits and hyphens in dot-separated labels. A name
// whose last label is all digits is refused: the resolver reads 127.1 or 10.1.2 as an IPv4
// address that netip does not.
func checkDNSName(name string) error {
	if name == "" || len(name) > 253 {
		return fmt.Errorf("want a DNS name of 1 to 253 characters or an IP address")
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("want a DNS name (labels of 1 to 63 letters, digits and inner hyphens) or an IP address")
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("want a DNS name (letters, digits, hyphens and dots) or an IP address, not %q", r)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("not an IP address, and a DNS name does not end in a number")
	}
	return nil
}
