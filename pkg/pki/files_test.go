package pki

import (
	"bytes"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// readAll snapshots every regular file in dir, so a test can prove that nothing changed.
func readAll(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = b
	}
	return m
}

func sameFiles(t *testing.T, before, after map[string][]byte) {
	t.Helper()
	if len(before) != len(after) {
		t.Errorf("files before %d, after %d", len(before), len(after))
	}
	for name, b := range before {
		if !bytes.Equal(b, after[name]) {
			t.Errorf("%s changed", name)
		}
	}
}

func actions(r Result) map[string]Action {
	m := map[string]Action{}
	for _, f := range r.Files {
		m[filepath.Base(f.Path)] = f.Action
	}
	return m
}

func wantActions(t *testing.T, r Result, want map[string]Action) {
	t.Helper()
	got := actions(r)
	if len(got) != len(want) {
		t.Errorf("result lists %v, want %v", got, want)
	}
	for name, a := range want {
		if got[name] != a {
			t.Errorf("%s: %q, want %q", name, got[name], a)
		}
	}
}

func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s mode %v, want %v", filepath.Base(path), got, want)
	}
}

func loadCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func initCA(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := InitCA(dir, time.Now()); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestInitCATwice(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	now := time.Now()
	r1, err := InitCA(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, r1, map[string]Action{
		CACertFile: Created, CAKeyFile: Created, OperatorCertFile: Created, OperatorKeyFile: Created,
	})
	before := readAll(t, dir)

	r2, err := InitCA(dir, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, r2, map[string]Action{
		CACertFile: Kept, CAKeyFile: Kept, OperatorCertFile: Kept, OperatorKeyFile: Kept,
	})
	sameFiles(t, before, readAll(t, dir))

	wantMode(t, dir, 0o700)
	wantMode(t, filepath.Join(dir, CAKeyFile), 0o600)
	wantMode(t, filepath.Join(dir, OperatorKeyFile), 0o600)
	wantMode(t, filepath.Join(dir, CACertFile), 0o644)
	wantMode(t, filepath.Join(dir, OperatorCertFile), 0o644)

	ca := loadCert(t, filepath.Join(dir, CACertFile))
	if !ca.IsCA || ca.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("CA: IsCA %v, key usage %v", ca.IsCA, ca.KeyUsage)
	}
	if years := ca.NotAfter.Sub(now).Hours() / 24 / 365; years < 9.9 || years > 10.1 {
		t.Errorf("CA valid for %.1f years, want 10", years)
	}
	op := loadCert(t, filepath.Join(dir, OperatorCertFile))
	if !slices.Equal(op.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) {
		t.Errorf("operator ext key usage %v, want client auth only", op.ExtKeyUsage)
	}
	if !slices.Equal(op.Subject.OrganizationalUnit, []string{RoleOperator}) {
		t.Errorf("operator OU %v", op.Subject.OrganizationalUnit)
	}
	if err := op.CheckSignatureFrom(ca); err != nil {
		t.Errorf("operator not signed by CA: %v", err)
	}
	if years := op.NotAfter.Sub(now).Hours() / 24 / 365; years < 1.9 || years > 2.1 {
		t.Errorf("operator valid for %.1f years, want 2", years)
	}
}

func TestInitCAOperatorMissing(t *testing.T) {
	t.Run("both files", func(t *testing.T) {
		dir := initCA(t)
		caBefore := readAll(t, dir)
		for _, f := range []string{OperatorCertFile, OperatorKeyFile} {
			os.Remove(filepath.Join(dir, f))
			delete(caBefore, f)
		}
		r, err := InitCA(dir, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		wantActions(t, r, map[string]Action{
			CACertFile: Kept, CAKeyFile: Kept, OperatorCertFile: Created, OperatorKeyFile: Created,
		})
		after := readAll(t, dir)
		for _, f := range []string{CACertFile, CAKeyFile} {
			if !bytes.Equal(caBefore[f], after[f]) {
				t.Errorf("%s changed", f)
			}
		}
	})
	t.Run("certificate only", func(t *testing.T) {
		dir := initCA(t)
		keyBefore, _ := os.ReadFile(filepath.Join(dir, OperatorKeyFile))
		os.Remove(filepath.Join(dir, OperatorCertFile))
		r, err := InitCA(dir, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		wantActions(t, r, map[string]Action{
			CACertFile: Kept, CAKeyFile: Kept, OperatorCertFile: Created, OperatorKeyFile: Kept,
		})
		keyAfter, _ := os.ReadFile(filepath.Join(dir, OperatorKeyFile))
		if !bytes.Equal(keyBefore, keyAfter) {
			t.Error("operator key changed")
		}
		key, err := parseKey(keyAfter)
		if err != nil {
			t.Fatal(err)
		}
		if !key.PublicKey.Equal(loadCert(t, filepath.Join(dir, OperatorCertFile)).PublicKey) {
			t.Error("new operator certificate is not for the kept key")
		}
	})
}

func TestInitCAHalfPairs(t *testing.T) {
	for _, tc := range []struct {
		remove, mention string
	}{
		{CAKeyFile, "restore the CA key"},
		{CACertFile, "copy any agent's ca.crt back"},
		{OperatorKeyFile, "move operator.crt away"},
	} {
		t.Run(tc.remove, func(t *testing.T) {
			dir := initCA(t)
			os.Remove(filepath.Join(dir, tc.remove))
			before := readAll(t, dir)
			_, err := InitCA(dir, time.Now())
			if err == nil {
				t.Fatal("InitCA succeeded with half a pair")
			}
			if !strings.Contains(err.Error(), filepath.Join(dir, tc.remove)+" is missing") || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not name %s and say %q", err, tc.remove, tc.mention)
			}
			sameFiles(t, before, readAll(t, dir))
		})
	}
}

func TestInitCAForeignOperator(t *testing.T) {
	dir, other := initCA(t), initCA(t)
	for _, f := range []string{OperatorCertFile, OperatorKeyFile} {
		b, _ := os.ReadFile(filepath.Join(other, f))
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := InitCA(dir, time.Now())
	if err == nil || !strings.Contains(err.Error(), "was not issued by the fleet CA") {
		t.Fatalf("InitCA with another CA's operator certificate: %v", err)
	}
}

func TestNoCA(t *testing.T) {
	dir := t.TempDir()
	want := "no fleet CA in " + dir + ": run `kvmctl init` first"
	_, err := LoadCA(dir)
	if !errors.Is(err, ErrNoCA) || err.Error() != want {
		t.Errorf("LoadCA: %v, want %q", err, want)
	}
	_, err = IssueAgent(dir, t.TempDir(), "h1", nil, time.Now())
	if !errors.Is(err, ErrNoCA) || err.Error() != want {
		t.Errorf("IssueAgent: %v, want %q", err, want)
	}
}

func TestIssueAgent(t *testing.T) {
	caDir := initCA(t)
	caBefore := readAll(t, caDir)
	out := filepath.Join(t.TempDir(), "h1")
	sans := []string{"10.0.0.5:8443", "h1", "H1", "10.0.0.5", "h1.example.org", "::1", " "}
	r, err := IssueAgent(caDir, out, "h1", sans, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, r, map[string]Action{AgentCertFile: Created, AgentKeyFile: Created, CACertFile: Created})
	wantMode(t, out, 0o700)
	wantMode(t, filepath.Join(out, AgentKeyFile), 0o600)
	wantMode(t, filepath.Join(out, AgentCertFile), 0o644)
	wantMode(t, filepath.Join(out, CACertFile), 0o644)

	c := loadCert(t, filepath.Join(out, AgentCertFile))
	if c.Subject.CommonName != "h1" || !slices.Equal(c.Subject.OrganizationalUnit, []string{RoleAgent}) {
		t.Errorf("subject %v", c.Subject)
	}
	if !slices.Equal(c.DNSNames, []string{"h1", "h1.example.org"}) {
		t.Errorf("DNS SANs %v", c.DNSNames)
	}
	wantIPs := []net.IP{net.ParseIP("10.0.0.5"), net.ParseIP("::1")}
	if !slices.EqualFunc(c.IPAddresses, wantIPs, net.IP.Equal) {
		t.Errorf("IP SANs %v, want %v", c.IPAddresses, wantIPs)
	}
	if !slices.Equal(c.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("ext key usage %v, want server auth only", c.ExtKeyUsage)
	}
	if err := c.VerifyHostname("10.0.0.5"); err != nil {
		t.Error(err)
	}
	sameFiles(t, caBefore, readAll(t, caDir))
	if !bytes.Equal(caBefore[CACertFile], readAll(t, out)[CACertFile]) {
		t.Error("agent's ca.crt differs from the fleet CA")
	}

	// Renewal replaces the agent's pair and keeps its CA copy.
	first := readAll(t, out)
	r, err = IssueAgent(caDir, out, "h1", sans, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, r, map[string]Action{AgentCertFile: Replaced, AgentKeyFile: Replaced, CACertFile: Kept})
	second := readAll(t, out)
	if bytes.Equal(first[AgentCertFile], second[AgentCertFile]) || bytes.Equal(first[AgentKeyFile], second[AgentKeyFile]) {
		t.Error("renewal did not replace agent.crt and agent.key")
	}
	if !bytes.Equal(first[CACertFile], second[CACertFile]) {
		t.Error("renewal changed ca.crt")
	}
	sameFiles(t, caBefore, readAll(t, caDir))
}

func TestIssueAgentRefusals(t *testing.T) {
	t.Run("into the CA dir", func(t *testing.T) {
		caDir := initCA(t)
		before := readAll(t, caDir)
		_, err := IssueAgent(caDir, caDir, "h1", nil, time.Now())
		if err == nil || !strings.Contains(err.Error(), "is the CA dir") {
			t.Fatalf("IssueAgent into the CA dir: %v", err)
		}
		sameFiles(t, before, readAll(t, caDir))
	})
	t.Run("another CA's copy in the output dir", func(t *testing.T) {
		caDir, other := initCA(t), initCA(t)
		out := t.TempDir()
		foreign, _ := os.ReadFile(filepath.Join(other, CACertFile))
		os.WriteFile(filepath.Join(out, CACertFile), foreign, 0o644)
		before := readAll(t, out)
		_, err := IssueAgent(caDir, out, "h1", nil, time.Now())
		if err == nil || !strings.Contains(err.Error(), "is not the fleet CA") {
			t.Fatalf("IssueAgent over another CA's ca.crt: %v", err)
		}
		sameFiles(t, before, readAll(t, out))
	})
	t.Run("empty host", func(t *testing.T) {
		if _, err := IssueAgent(initCA(t), t.TempDir(), " ", nil, time.Now()); err == nil {
			t.Fatal("IssueAgent with an empty host name succeeded")
		}
	})
}

func TestIssueOperator(t *testing.T) {
	caDir := initCA(t)
	out := filepath.Join(t.TempDir(), "alice")
	r, err := IssueOperator(caDir, out, "alice", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, r, map[string]Action{OperatorCertFile: Created, OperatorKeyFile: Created, CACertFile: Created})
	c := loadCert(t, filepath.Join(out, OperatorCertFile))
	if c.Subject.CommonName != "alice" || !slices.Equal(c.Subject.OrganizationalUnit, []string{RoleOperator}) {
		t.Errorf("subject %v", c.Subject)
	}
	wantMode(t, filepath.Join(out, OperatorKeyFile), 0o600)

	before := readAll(t, out)
	if _, err := IssueOperator(caDir, out, "alice", time.Now()); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second IssueOperator into the same dir: %v", err)
	}
	sameFiles(t, before, readAll(t, out))
}

func TestWriteFileNoReplace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := writeFile(p, []byte("one"), 0o600, false); err != nil {
		t.Fatal(err)
	}
	if err := writeFile(p, []byte("two"), 0o600, false); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second write: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "one" {
		t.Fatalf("file holds %q", b)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}
