package agent

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/pki"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// fleet is a fleet CA with its PEM files written in a temp dir, like `kvmctl init` leaves them.
type fleet struct {
	t   *testing.T
	dir string
	ca  *pki.CA
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	now := time.Now()
	kp, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCA(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	op, err := ca.NewOperator("alice", now)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, pki.CACertFile), kp.CertPEM)
	writeFile(t, filepath.Join(dir, pki.OperatorCertFile), op.CertPEM)
	writeFile(t, filepath.Join(dir, pki.OperatorKeyFile), op.KeyPEM)
	return &fleet{t: t, dir: dir, ca: ca}
}

// agentFiles issues an agent certificate for host into a new dir and returns the three paths.
func (f *fleet) agentFiles(host string) (cert, key, ca string) {
	f.t.Helper()
	kp, err := f.ca.NewAgent(host, []string{"127.0.0.1"}, time.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	dir := f.t.TempDir()
	cert, key, ca = filepath.Join(dir, "agent.crt"), filepath.Join(dir, "agent.key"), filepath.Join(dir, "ca.crt")
	writeFile(f.t, cert, kp.CertPEM)
	writeFile(f.t, key, kp.KeyPEM)
	writeFile(f.t, ca, f.ca.CertPEM)
	return cert, key, ca
}

// client returns an api.Client with the operator certificate, expecting the agent of host.
func (f *fleet) client(host, addr string, opts ...api.Option) *api.Client {
	f.t.Helper()
	c, err := api.ClientForHost(f.dir, host, addr, opts...)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(c.Close)
	return c
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// testConfig is a valid Config for host with its files in temp dirs and the boot id bootID.
func (f *fleet) testConfig(host, bootID string) Config {
	f.t.Helper()
	cert, key, ca := f.agentFiles(host)
	dir := f.t.TempDir()
	bootFile := filepath.Join(dir, "boot_id")
	writeFile(f.t, bootFile, []byte(bootID+"\n"))
	cfg := DefaultConfig()
	cfg.HostName = host
	cfg.Listen = "127.0.0.1:0"
	cfg.TLSCert, cfg.TLSKey, cfg.TLSCA = cert, key, ca
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.HooksDir = filepath.Join(dir, "hooks")
	cfg.BootIDFile = bootFile
	// Test VMs keep their disks in t.TempDir()s.
	cfg.VMDiskDirs = []string{os.TempDir()}
	return cfg
}

// serve starts a real agent on 127.0.0.1:0 and returns its address. It stops with the test and
// fails the test if Serve does not return nil.
func serve(t *testing.T, cfg Config, hv virt.Hypervisor, opts ...Option) string {
	t.Helper()
	addr, _ := serveStoppable(t, cfg, hv, opts...)
	return addr
}

// operatorTLS is the operator's client TLS config for host, built from the fleet's files.
func (f *fleet) operatorTLS(host string) *tls.Config {
	f.t.Helper()
	c, err := pki.ClientConfig(filepath.Join(f.dir, pki.CACertFile), filepath.Join(f.dir, pki.OperatorCertFile),
		filepath.Join(f.dir, pki.OperatorKeyFile), host)
	if err != nil {
		f.t.Fatal(err)
	}
	return c
}

func mustContain(t *testing.T, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%q does not contain %q", s, sub)
		}
	}
}
