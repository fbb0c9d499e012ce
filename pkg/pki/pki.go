// Package pki is the fleet's public key infrastructure: one fleet CA that signs an operator
// certificate for kvmctl and a server certificate for each kvmagent, and the TLS configurations
// that make the two sides accept only each other.
//
// All keys are ECDSA P-256. The role of a certificate (operator or agent) travels in the Subject's
// OrganizationalUnit and in its extended key usage, so a stolen agent certificate can never act as
// an operator, and an operator certificate can never pose as an agent.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Roles are stored as the certificate's OrganizationalUnit. Both kinds of certificate chain to
// the same fleet CA, so the role is what lets an agent tell the operator from another agent.
const (
	RoleOperator = "kvmctl:operator"
	RoleAgent    = "kvmctl:agent"
)

// File names inside a PKI directory, declared once so that the CLI flags' defaults, kvmagent and
// these functions agree.
const (
	CACertFile       = "ca.crt"
	CAKeyFile        = "ca.key"
	OperatorCertFile = "operator.crt"
	OperatorKeyFile  = "operator.key"
	AgentCertFile    = "agent.crt"
	AgentKeyFile     = "agent.key"
)

// Validity periods in years. The CA outlives the certificates it signs; the leaves are short
// enough that a lost one expires within a maintenance cycle or two.
const (
	caYears       = 10
	operatorYears = 2
	agentYears    = 2
)

// clockSkew backdates NotBefore so that a host whose clock runs behind the operator's machine
// still accepts a certificate issued a minute ago.
const clockSkew = time.Hour

// ErrNoCA reports that a directory holds no fleet CA at all; callers test for it with errors.Is
// to tell "never initialised" from a damaged CA.
var ErrNoCA = errors.New("no fleet CA")

// KeyPair is a certificate and its private key, PEM-encoded exactly as written to disk.
type KeyPair struct {
	CertPEM []byte
	KeyPEM  []byte
}

// CA is a loaded fleet CA, ready to sign operator and agent certificates in memory (tests and the
// lab use it directly; the CLI goes through InitCA, IssueAgent and IssueOperator).
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
}

// GenerateCA creates a new self-signed fleet CA valid from now. It may only sign leaves
// (MaxPathLen 0): nobody needs an intermediate in one fleet, and forbidding one keeps the trust
// graph a star.
func GenerateCA(now time.Time) (KeyPair, error) {
	key, err := newKey()
	if err != nil {
		return KeyPair{}, err
	}
	serial, err := newSerial()
	if err != nil {
		return KeyPair{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "kvmctl fleet CA", Organization: []string{"kvmctl"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.AddDate(caYears, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("create CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return KeyPair{}, err
	}
	return KeyPair{CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// ParseCA turns a PEM CA certificate and key into a CA, refusing a pair that does not belong
// together or a certificate that cannot sign, so a mix-up surfaces at load time and not as a
// handshake failure on every host.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("parse CA certificate: not a CA certificate")
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("parse CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("CA key does not match CA certificate")
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM}, nil
}

// NewOperator issues an operator (client) certificate with a fresh key. name becomes the Common
// Name, which agents can log to say which operator acted.
func (ca *CA) NewOperator(name string, now time.Time) (KeyPair, error) {
	key, err := newKey()
	if err != nil {
		return KeyPair{}, err
	}
	return ca.operatorFor(name, key, now)
}

// operatorFor signs an operator certificate for an existing key, which InitCA needs when only
// operator.crt was lost.
func (ca *CA) operatorFor(name string, key *ecdsa.PrivateKey, now time.Time) (KeyPair, error) {
	if name == "" {
		return KeyPair{}, errors.New("issue operator certificate: empty name")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, OrganizationalUnit: []string{RoleOperator}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	kp, err := ca.sign(tmpl, key, now, operatorYears)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue operator certificate: %w", err)
	}
	return kp, nil
}

// NewAgent issues a server certificate for the agent on host. Its SANs are host plus sans, each
// an IP SAN when it is an IP literal and a DNS SAN otherwise ("host:port" is accepted and the
// port dropped), so kvmctl can verify the agent by inventory name whatever address it dials.
func (ca *CA) NewAgent(host string, sans []string, now time.Time) (KeyPair, error) {
	if strings.TrimSpace(host) == "" {
		return KeyPair{}, errors.New("issue agent certificate: empty host name")
	}
	dns, ips := subjectAltNames(append([]string{host}, sans...))
	key, err := newKey()
	if err != nil {
		return KeyPair{}, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: host, OrganizationalUnit: []string{RoleAgent}},
		DNSNames:    dns,
		IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	kp, err := ca.sign(tmpl, key, now, agentYears)
	if err != nil {
		return KeyPair{}, fmt.Errorf("issue agent certificate for %s: %w", host, err)
	}
	return kp, nil
}

// sign fills in the serial and validity of tmpl and signs it. NotAfter never passes the CA's own,
// since a leaf would be rejected from then on anyway and an honest date helps whoever renews.
func (ca *CA) sign(tmpl *x509.Certificate, key *ecdsa.PrivateKey, now time.Time, years int) (KeyPair, error) {
	serial, err := newSerial()
	if err != nil {
		return KeyPair{}, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-clockSkew)
	tmpl.NotAfter = now.AddDate(years, 0, 0)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return KeyPair{}, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return KeyPair{}, err
	}
	return KeyPair{CertPEM: encodeCert(der), KeyPEM: keyPEM}, nil
}

// subjectAltNames splits names into DNS names and IP addresses, dropping ports, blanks and
// duplicates while keeping the first spelling of each.
func subjectAltNames(names []string) ([]string, []net.IP) {
	var dns []string
	var ips []net.IP
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if h, _, err := net.SplitHostPort(n); err == nil {
			n = h
		}
		if n == "" {
			continue
		}
		if addr, err := netip.ParseAddr(n); err == nil {
			addr = addr.WithZone("") // a zone names a local interface; it means nothing to a peer
			if k := addr.String(); !seen[k] {
				seen[k] = true
				ips = append(ips, net.IP(addr.AsSlice()))
			}
			continue
		}
		if k := strings.ToLower(n); !seen[k] {
			seen[k] = true
			dns = append(dns, n)
		}
	}
	return dns, ips
}

func newKey() (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

// newSerial returns a random 128-bit serial: unique without keeping a counter anywhere.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n, nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// parseKey accepts PKCS#8 (what we write) and SEC 1 "EC PRIVATE KEY" (what openssl writes), so
// a CA made by hand still loads.
func parseKey(keyPEM []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, errors.New("no PEM key")
	}
	switch block.Type {
	case "EC PRIVATE KEY":
		return x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, err
		}
		ec, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("key is %T, want ECDSA", k)
		}
		return ec, nil
	}
	return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
}
