package pki

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncBuffer collects the agent's server log, where Go reports why it refused a handshake.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// agent is a running HTTPS server configured like kvmagent.
type agent struct {
	url    string
	served atomic.Int32
	log    syncBuffer
}

// waitLog waits for the server to log want: it logs a refused handshake just after it sends the
// alert, so the client may see its error first.
func (a *agent) waitLog(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(a.log.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("agent log %q lacks %q", a.log.String(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func startAgent(t *testing.T, cfg *tls.Config) *agent {
	t.Helper()
	a := &agent{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.served.Add(1)
		fmt.Fprint(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	srv.TLS = cfg
	srv.Config.ErrorLog = log.New(&a.log, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	a.url = srv.URL
	return a
}

func startAgentFiles(t *testing.T, dir string) *agent {
	t.Helper()
	cfg, err := ServerConfig(filepath.Join(dir, AgentCertFile), filepath.Join(dir, AgentKeyFile), filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	return startAgent(t, cfg)
}

// get makes one request on a fresh connection and returns the body.
func get(t *testing.T, cfg *tls.Config, url string) (string, error) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

func operatorConfig(t *testing.T, caDir, opDir, host string) *tls.Config {
	t.Helper()
	cfg, err := ClientConfig(filepath.Join(caDir, CACertFile), filepath.Join(opDir, OperatorCertFile), filepath.Join(opDir, OperatorKeyFile), host)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// refused asserts that the request failed and never reached the handler.
func refused(t *testing.T, a *agent, cfg *tls.Config) error {
	t.Helper()
	body, err := get(t, cfg, a.url)
	if err == nil {
		t.Fatalf("request succeeded (body %q), want refusal", body)
	}
	if n := a.served.Load(); n != 0 {
		t.Fatalf("handler ran %d times, want 0", n)
	}
	return err
}

func TestAgentTLS(t *testing.T) {
	caDir := initCA(t)
	h1 := filepath.Join(t.TempDir(), "h1")
	if _, err := IssueAgent(caDir, h1, "h1", []string{"127.0.0.1"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := ca.CertPEM

	t.Run("operator accepted", func(t *testing.T) {
		a := startAgentFiles(t, h1)
		body, err := get(t, operatorConfig(t, caDir, caDir, "h1"), a.url)
		if err != nil {
			t.Fatal(err)
		}
		if body != "operator" || a.served.Load() != 1 {
			t.Fatalf("body %q, served %d; want operator, 1", body, a.served.Load())
		}
	})

	t.Run("no client certificate refused", func(t *testing.T) {
		a := startAgentFiles(t, h1)
		cfg := operatorConfig(t, caDir, caDir, "h1")
		cfg.Certificates = nil
		refused(t, a, cfg)
		a.waitLog(t, "client didn't provide a certificate")
	})

	t.Run("certificate from another CA refused", func(t *testing.T) {
		a := startAgentFiles(t, h1)
		otherCA := initCA(t)
		// Trust the real fleet CA so that only the client certificate is foreign.
		refused(t, a, operatorConfig(t, caDir, otherCA, "h1"))
		a.waitLog(t, "certificate signed by unknown authority")
	})

	t.Run("agent certificate as client refused", func(t *testing.T) {
		a := startAgentFiles(t, h1)
		h2 := filepath.Join(t.TempDir(), "h2")
		if _, err := IssueAgent(caDir, h2, "h2", nil, time.Now()); err != nil {
			t.Fatal(err)
		}
		cfg, err := ClientConfig(filepath.Join(caDir, CACertFile), filepath.Join(h2, AgentCertFile), filepath.Join(h2, AgentKeyFile), "h1")
		if err != nil {
			t.Fatal(err)
		}
		refused(t, a, cfg)
		a.waitLog(t, "incompatible key usage")
	})

	t.Run("client certificate without operator role refused", func(t *testing.T) {
		// Has the client-auth usage, so only the role check stands in its way.
		a := startAgentFiles(t, h1)
		key, err := newKey()
		if err != nil {
			t.Fatal(err)
		}
		kp, err := ca.sign(&x509.Certificate{
			Subject:     pkix.Name{CommonName: "intruder", OrganizationalUnit: []string{RoleAgent}},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, key, time.Now(), 1)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := ClientConfigPEM(caPEM, kp.CertPEM, kp.KeyPEM, "h1")
		if err != nil {
			t.Fatal(err)
		}
		refused(t, a, cfg)
		a.waitLog(t, "client certificate lacks the kvmctl operator role")
	})

	t.Run("expired operator certificate refused", func(t *testing.T) {
		a := startAgentFiles(t, h1)
		old := filepath.Join(t.TempDir(), "old")
		if _, err := IssueOperator(caDir, old, "old", time.Now().AddDate(-3, 0, 0)); err != nil {
			t.Fatal(err)
		}
		if c := loadCert(t, filepath.Join(old, OperatorCertFile)); !c.NotAfter.Before(time.Now()) {
			t.Fatalf("test certificate not expired: NotAfter %v", c.NotAfter)
		}
		refused(t, a, operatorConfig(t, caDir, old, "h1"))
		a.waitLog(t, "certificate has expired")
	})

	t.Run("TLS 1.2 client refused", func(t *testing.T) {
		a := startAgentFiles(t, h1)
		cfg := operatorConfig(t, caDir, caDir, "h1")
		cfg.MinVersion = tls.VersionTLS12
		cfg.MaxVersion = tls.VersionTLS12
		refused(t, a, cfg)
		a.waitLog(t, "unsupported versions")
	})

	t.Run("agent naming another host refused", func(t *testing.T) {
		h2 := filepath.Join(t.TempDir(), "h2")
		if _, err := IssueAgent(caDir, h2, "h2", []string{"127.0.0.1"}, time.Now()); err != nil {
			t.Fatal(err)
		}
		a := startAgentFiles(t, h2)
		err := refused(t, a, operatorConfig(t, caDir, caDir, "h1"))
		if !strings.Contains(err.Error(), "h1") || !strings.Contains(err.Error(), "h2") {
			t.Errorf("error %q does not name both h1 and h2", err)
		}
		// The same agent is accepted under its own name, although the URL is an IP address.
		if body, err := get(t, operatorConfig(t, caDir, caDir, "h2"), a.url); err != nil || body != "operator" {
			t.Fatalf("dialing h2 as h2: %q, %v", body, err)
		}
	})

	t.Run("agent certificate without agent role refused", func(t *testing.T) {
		key, err := newKey()
		if err != nil {
			t.Fatal(err)
		}
		kp, err := ca.sign(&x509.Certificate{
			Subject:     pkix.Name{CommonName: "h1"},
			DNSNames:    []string{"h1"},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}, key, time.Now(), 1)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := ServerConfigPEM(kp.CertPEM, kp.KeyPEM, caPEM)
		if err != nil {
			t.Fatal(err)
		}
		a := startAgent(t, srv)
		err = refused(t, a, operatorConfig(t, caDir, caDir, "h1"))
		if !strings.Contains(err.Error(), "lacks the kvmctl agent role") {
			t.Errorf("error %q does not mention the agent role", err)
		}
	})

	t.Run("operator certificate as agent refused", func(t *testing.T) {
		// An operator certificate that even names the host still lacks the server-auth usage.
		key, err := newKey()
		if err != nil {
			t.Fatal(err)
		}
		kp, err := ca.sign(&x509.Certificate{
			Subject:     pkix.Name{CommonName: "h1", OrganizationalUnit: []string{RoleOperator, RoleAgent}},
			DNSNames:    []string{"h1"},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, key, time.Now(), 1)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := ServerConfigPEM(kp.CertPEM, kp.KeyPEM, caPEM)
		if err != nil {
			t.Fatal(err)
		}
		a := startAgent(t, srv)
		err = refused(t, a, operatorConfig(t, caDir, caDir, "h1"))
		if !strings.Contains(err.Error(), "incompatible key usage") {
			t.Errorf("error %q, want an incompatible key usage", err)
		}
	})
}

func TestClientConfigEmptyServerName(t *testing.T) {
	caDir := initCA(t)
	_, err := ClientConfig(filepath.Join(caDir, CACertFile), filepath.Join(caDir, OperatorCertFile), filepath.Join(caDir, OperatorKeyFile), "")
	if err == nil {
		t.Fatal("ClientConfig accepted an empty server name")
	}
}

func TestServerConfigMissingFile(t *testing.T) {
	dir := t.TempDir()
	_, err := ServerConfig(filepath.Join(dir, AgentCertFile), filepath.Join(dir, AgentKeyFile), filepath.Join(dir, CACertFile))
	if err == nil || !strings.Contains(err.Error(), AgentCertFile) {
		t.Fatalf("ServerConfig with no files: %v", err)
	}
}
