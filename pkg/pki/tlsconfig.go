package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// ServerConfig is kvmagent's TLS configuration: TLS 1.3 only, and a client must present a
// certificate from the fleet CA that carries the operator role. Files are read once; restart the
// agent after renewing its certificate.
func ServerConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	b, err := readFiles(certFile, keyFile, caFile)
	if err != nil {
		return nil, fmt.Errorf("agent tls config: %w", err)
	}
	return ServerConfigPEM(b[0], b[1], b[2])
}

// ServerConfigPEM is ServerConfig from PEM in memory, for tests and the lab.
func ServerConfigPEM(certPEM, keyPEM, caPEM []byte) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("agent tls config: load agent certificate: %w", err)
	}
	pool, err := certPool(caPEM)
	if err != nil {
		return nil, fmt.Errorf("agent tls config: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// Go's verification against ClientCAs also demands the ClientAuth extended key usage,
		// which agent certificates lack; the role check below is the second, explicit lock.
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        pool,
		VerifyConnection: requireRole(RoleOperator, "client certificate lacks the kvmctl operator role"),
	}, nil
}

// ClientConfig is kvmctl's TLS configuration for talking to one agent: TLS 1.3, the operator
// certificate, the fleet CA as the only root, and serverName (the inventory host name) as the
// name the agent's certificate must carry, even when the dialled address is an IP. So an agent
// answering on another host's address is refused ("certificate is valid for h2, not h1").
func ClientConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	b, err := readFiles(caFile, certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("operator tls config: %w", err)
	}
	return ClientConfigPEM(b[0], b[1], b[2], serverName)
}

// ClientConfigPEM is ClientConfig from PEM in memory, for tests and the lab.
func ClientConfigPEM(caPEM, certPEM, keyPEM []byte, serverName string) (*tls.Config, error) {
	if serverName == "" {
		// An empty name would make Go take it from the dialled address, or refuse to dial.
		return nil, errors.New("operator tls config: empty agent host name")
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("operator tls config: load operator certificate: %w", err)
	}
	pool, err := certPool(caPEM)
	if err != nil {
		return nil, fmt.Errorf("operator tls config: %w", err)
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		RootCAs:          pool,
		ServerName:       serverName,
		VerifyConnection: requireRole(RoleAgent, "agent certificate for "+serverName+" lacks the kvmctl agent role"),
	}, nil
}

// requireRole refuses a peer whose verified leaf certificate does not carry role. It runs after
// Go has verified the chain, key usage and (on the client) the host name.
func requireRole(role, refusal string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
			return errors.New("peer certificate was not verified against the fleet CA")
		}
		if !slices.Contains(cs.VerifiedChains[0][0].Subject.OrganizationalUnit, role) {
			return errors.New(refusal)
		}
		return nil
	}
}

func certPool(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no certificate in fleet CA file")
	}
	return pool, nil
}
