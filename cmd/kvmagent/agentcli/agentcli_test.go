package agentcli

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/pki"
)

// syncBuffer is a bytes.Buffer the agent's logger and the test may use at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

func run(t *testing.T, ctx context.Context, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb syncBuffer
	code = RunContext(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, context.Background(), "version")
	if code != ExitOK || !strings.HasPrefix(out, "kvmagent ") {
		t.Errorf("version = %d %q", code, out)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"bogus"}, {"run", "--nope"}, {"run", "extra"}, {"version", "x"},
		{"run", "--config", "/dev/null", "--log-format", "xml"}} {
		if code, _, errOut := run(t, context.Background(), args...); code != ExitRefused || errOut == "" {
			t.Errorf("kvmagent %q = %d %q, want %d with a message", args, code, errOut, ExitRefused)
		}
	}
}

func TestRunBadConfigReportsEverything(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.properties")
	writeFile(t, path, "listen=9250\nheartbeat.intervl=3\ntls.cert=/nonexistent/agent.crt\n")
	code, _, errOut := run(t, context.Background(), "run", "--config", path)
	if code != ExitRefused {
		t.Errorf("exit = %d, want %d", code, ExitRefused)
	}
	for _, want := range []string{
		`warning: ` + path + `: line 2: unknown key "heartbeat.intervl" ignored (did you mean "heartbeat.interval"?)`,
		"line 1: listen:", "host.name: required, but missing", "tls.key: required", "tls.ca: required",
		"line 3: tls.cert: cannot read", "fix " + path,
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

func TestRunServesUntilCanceled(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	kp, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCA(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := ca.NewAgent("kvm1", nil, now)
	if err != nil {
		t.Fatal(err)
	}
	op, err := ca.NewOperator("alice", now)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"ca.crt": kp.CertPEM, "agent.crt": ag.CertPEM, "agent.key": ag.KeyPEM,
		"operator.crt": op.CertPEM, "operator.key": op.KeyPEM, "boot_id": []byte("boot-1\n"),
	} {
		writeFile(t, filepath.Join(dir, name), string(data))
	}
	addr := freeAddr(t)
	conf := filepath.Join(dir, "agent.properties")
	writeFile(t, conf, strings.Join([]string{
		"host.name=kvm1",
		"listen=" + addr,
		"tls.cert=" + filepath.Join(dir, "agent.crt"),
		"tls.key=" + filepath.Join(dir, "agent.key"),
		"tls.ca=" + filepath.Join(dir, "ca.crt"),
		"libvirt.uri=test:///default",
		"state.dir=" + filepath.Join(dir, "state"),
		"rolling.maintenance.hooks.dir=" + filepath.Join(dir, "hooks"),
		"boot.id.file=" + filepath.Join(dir, "boot_id"),
		"heartbeat.dir=" + dir,
		"heartbeat.interval=1",
	}, "\n")+"\n")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- RunContext(ctx, []string{"run", "--config", conf, "--log-format", "json"}, &bytes.Buffer{}, &errb)
	}()

	c, err := api.ClientForHost(dir, "kvm1", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var st api.Status
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err = c.Status(context.Background())
		if err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case code := <-done:
			t.Fatalf("agent exited with %d:\n%s", code, errb.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("Status: %v\n%s", err, errb.String())
	}
	// test:///default holds one running domain called "test".
	if st.HostName != "kvm1" || st.BootID != "boot-1" || len(st.VMs) == 0 || st.Capacity.CPUs == 0 {
		t.Errorf("status = %+v", st)
	}
	// The heartbeat goroutine starts beside the server: give its first beat a moment.
	var hbErr error
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if _, hbErr = os.Stat(filepath.Join(dir, "hb-kvm1")); hbErr == nil {
			break
		}
	}
	if hbErr != nil {
		t.Errorf("no heartbeat: %v", hbErr)
	}
	cancel()
	select {
	case code := <-done:
		if code != ExitOK {
			t.Errorf("exit = %d after shutdown:\n%s", code, errb.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not stop")
	}
	logs := errb.String()
	for _, want := range []string{`"msg":"kvmagent serving"`, `"msg":"request"`, `"operator":"alice"`, `"msg":"kvmagent shutting down"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %s:\n%s", want, logs)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
