package sshx_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"

	"github.com/kvmctl/kvmctl/internal/testnet"
	"github.com/kvmctl/kvmctl/pkg/sshx"
	"github.com/kvmctl/kvmctl/pkg/sshx/sshtest"
)

// fixture is a server plus a target whose key and known_hosts file let it in.
type fixture struct {
	srv    *sshtest.Server
	target sshx.Target
	dir    string
}

func newFixture(t *testing.T, handler sshtest.Handler) *fixture {
	t.Helper()
	dir := t.TempDir()
	keyFile, pub := sshtest.WriteClientKey(t, dir)
	srv := sshtest.NewServer(t, pub, handler)
	knownHosts := filepath.Join(dir, "known_hosts")
	srv.WriteKnownHosts(knownHosts, srv.Addr)
	return &fixture{
		srv: srv,
		dir: dir,
		target: sshx.Target{
			Host:           "kvm1",
			Addr:           srv.Addr,
			User:           "root",
			KeyFile:        keyFile,
			KnownHostsFile: knownHosts,
		},
	}
}

func ok(output string) sshtest.Handler {
	return func(string) (string, int) { return output, 0 }
}

func publicKey(t *testing.T, key any) ssh.PublicKey {
	t.Helper()
	pub, err := ssh.NewPublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func newED25519(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return publicKey(t, pub)
}

func assertContains(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\ndoes not contain %q", err, w)
		}
	}
}

func TestRunSuccess(t *testing.T) {
	var mu sync.Mutex
	var got []string
	f := newFixture(t, func(cmd string) (string, int) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, cmd)
		return "kvmagent restarted\n", 0
	})
	const command = `systemctl restart kvmagent && echo "done; 'quoted' $HOME"`

	out, err := sshx.Run(context.Background(), f.target, command)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out != "kvmagent restarted\n" {
		t.Errorf("output = %q, want %q", out, "kvmagent restarted\n")
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]string{command}, got); diff != "" {
		t.Errorf("commands the server ran (-want +got):\n%s", diff)
	}
}

func TestRunDefaultCommandThroughRunner(t *testing.T) {
	f := newFixture(t, ok(""))
	var r sshx.Runner = &sshx.Client{Timeout: 5 * time.Second}
	t1 := f.target
	t1.User = "" // defaults to root; the test server accepts any user with the key

	if _, err := r.Run(context.Background(), t1, sshx.DefaultRestartCommand); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if diff := cmp.Diff([]string{"systemctl restart kvmagent"}, f.srv.Commands()); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
}

func TestRunHostKeyMismatch(t *testing.T) {
	f := newFixture(t, ok("should not run"))
	sshtest.WriteKnownHostsKey(t, f.target.KnownHostsFile, f.srv.Addr, newED25519(t))

	_, err := sshx.Run(context.Background(), f.target, sshx.DefaultRestartCommand)
	if !errors.Is(err, sshx.ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
	assertContains(t, err, "host key of kvm1", "does not match the known_hosts file", "man-in-the-middle",
		"refused to connect", ssh.FingerprintSHA256(f.srv.HostKey.PublicKey()), "ssh-keygen -R")
	if cmds := f.srv.Commands(); len(cmds) != 0 {
		t.Errorf("server ran %q for a client that should have refused it", cmds)
	}
}

// A known_hosts file that lists only a key of another type for the address makes the client
// ask for that type, which the server lacks: still a mismatch, not an algorithm puzzle.
func TestRunHostKeyMismatchOtherKeyType(t *testing.T) {
	f := newFixture(t, ok("should not run"))
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshtest.WriteKnownHostsKey(t, f.target.KnownHostsFile, f.srv.Addr, publicKey(t, &ec.PublicKey))

	_, err = sshx.Run(context.Background(), f.target, sshx.DefaultRestartCommand)
	if !errors.Is(err, sshx.ErrHostKeyMismatch) {
		t.Fatalf("err = %v, want ErrHostKeyMismatch", err)
	}
	assertContains(t, err, "host key of kvm1", "does not match", "man-in-the-middle", "refused to connect", "ecdsa-sha2-nistp256")
	if cmds := f.srv.Commands(); len(cmds) != 0 {
		t.Errorf("server ran %q", cmds)
	}
}

func TestRunUnknownHost(t *testing.T) {
	f := newFixture(t, ok("should not run"))
	// The file lists the right key, but for another address.
	f.srv.WriteKnownHosts(f.target.KnownHostsFile, "192.0.2.1:22")

	_, err := sshx.Run(context.Background(), f.target, sshx.DefaultRestartCommand)
	if !errors.Is(err, sshx.ErrUnknownHost) {
		t.Fatalf("err = %v, want ErrUnknownHost", err)
	}
	_, port, _ := net.SplitHostPort(f.srv.Addr)
	assertContains(t, err, "host kvm1", "is not in the known_hosts file "+f.target.KnownHostsFile,
		"refused to connect", ssh.FingerprintSHA256(f.srv.HostKey.PublicKey()),
		"ssh-keyscan -t ed25519 -p "+port+" 127.0.0.1 >> "+f.target.KnownHostsFile)
	if cmds := f.srv.Commands(); len(cmds) != 0 {
		t.Errorf("server ran %q", cmds)
	}
}

func TestRunEmptyKnownHosts(t *testing.T) {
	f := newFixture(t, ok("should not run"))
	if err := os.WriteFile(f.target.KnownHostsFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := sshx.Run(context.Background(), f.target, sshx.DefaultRestartCommand)
	if !errors.Is(err, sshx.ErrUnknownHost) {
		t.Fatalf("err = %v, want ErrUnknownHost", err)
	}
}

func TestRunWrongClientKey(t *testing.T) {
	f := newFixture(t, ok("should not run"))
	other, _ := sshtest.WriteClientKey(t, t.TempDir())
	f.target.KeyFile = other

	_, err := sshx.Run(context.Background(), f.target, sshx.DefaultRestartCommand)
	if !errors.Is(err, sshx.ErrAuthFailed) {
		t.Fatalf("err = %v, want ErrAuthFailed", err)
	}
	assertContains(t, err, "kvm1", "rejected key "+other, "authorized_keys")
	if cmds := f.srv.Commands(); len(cmds) != 0 {
		t.Errorf("server ran %q", cmds)
	}
}

func TestRunExitStatus(t *testing.T) {
	f := newFixture(t, func(string) (string, int) {
		return "Failed to restart kvmagent.service: Unit kvmagent.service not found.\n", 5
	})

	out, err := sshx.Run(context.Background(), f.target, sshx.DefaultRestartCommand)
	var exitErr *sshx.ExitError
	if !errors.As(err, &exitErr) {
		t.Fatalf("err = %v, want *ExitError", err)
	}
	if exitErr.Status != 5 || exitErr.Host != "kvm1" || exitErr.Command != sshx.DefaultRestartCommand {
		t.Errorf("ExitError = %+v", exitErr)
	}
	assertContains(t, err, "exit status 5", "Unit kvmagent.service not found", "kvm1", sshx.DefaultRestartCommand)
	if !strings.Contains(out, "Unit kvmagent.service not found") {
		t.Errorf("output = %q, want the command's output alongside the error", out)
	}
}

func TestRunOutputKeepsTail(t *testing.T) {
	big := strings.Repeat("x", 100<<10) + "the end\n"
	f := newFixture(t, ok(big))

	out, err := sshx.Run(context.Background(), f.target, "journalctl -u kvmagent")
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(out) != sshx.MaxOutput {
		t.Errorf("len(output) = %d, want %d", len(out), sshx.MaxOutput)
	}
	if !strings.HasSuffix(out, "x\nthe end\n") && !strings.HasSuffix(out, "xthe end\n") {
		t.Errorf("output does not end with the command's last line: %q", out[len(out)-20:])
	}
}

func TestRunContextTimeoutWhileCommandRuns(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	f := newFixture(t, func(string) (string, int) {
		started <- struct{}{}
		<-release
		return "", 0
	})
	// Registered after NewServer, so it runs before the server's cleanup.
	t.Cleanup(func() { close(release) })

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := sshx.Run(ctx, f.target, sshx.DefaultRestartCommand)
	elapsed := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if elapsed > 3*time.Second {
		t.Errorf("Run returned after %s, want soon after the 300ms deadline", elapsed)
	}
	select {
	case <-started:
	default:
		t.Error("the handler never started: the test did not exercise a running command")
	}
}

// A peer that accepts TCP but never speaks SSH must not hold Run past its timeout.
func TestRunHandshakeTimeout(t *testing.T) {
	f := newFixture(t, ok(""))
	f.target.Addr = testnet.Silent(t)

	for _, tc := range []struct {
		name    string
		client  *sshx.Client
		timeout time.Duration // of ctx; none when zero
	}{
		{"client timeout", &sshx.Client{Timeout: 200 * time.Millisecond}, 0},
		{"ctx deadline", &sshx.Client{}, 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			_, err := tc.client.Run(ctx, f.target, sshx.DefaultRestartCommand)
			if err == nil {
				t.Fatal("Run succeeded against a silent peer")
			}
			if elapsed := time.Since(start); elapsed > 3*time.Second {
				t.Errorf("Run returned after %s: %v", elapsed, err)
			}
		})
	}
}

func TestRunRefusesBadConfig(t *testing.T) {
	f := newFixture(t, ok("should not run"))
	garbage := filepath.Join(f.dir, "garbage")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	encrypted, _ := sshtest.WriteEncryptedClientKey(t, f.dir, "s3cret")
	missing := filepath.Join(f.dir, "missing")

	for _, tc := range []struct {
		name   string
		edit   func(*sshx.Target)
		is     error
		substr []string
	}{
		{"no key file", func(t *sshx.Target) { t.KeyFile = "" }, sshx.ErrNotConfigured,
			[]string{"kvm1", "no ssh key file", "key_file", "kvmctl host set kvm1 --ssh-key"}},
		{"no known_hosts file", func(t *sshx.Target) { t.KnownHostsFile = "" }, sshx.ErrNotConfigured,
			[]string{"kvm1", "no known_hosts file", "known_hosts_file", "never connects"}},
		{"no address", func(t *sshx.Target) { t.Host, t.Addr = "", "" }, sshx.ErrNotConfigured, nil},
		{"key file missing", func(t *sshx.Target) { t.KeyFile = missing }, fs.ErrNotExist,
			[]string{"kvm1", missing}},
		{"known_hosts file missing", func(t *sshx.Target) { t.KnownHostsFile = missing }, fs.ErrNotExist,
			[]string{"kvm1", "known_hosts", missing}},
		{"key file not a key", func(t *sshx.Target) { t.KeyFile = garbage }, nil,
			[]string{"kvm1", "parse key " + garbage}},
		{"encrypted key", func(t *sshx.Target) { t.KeyFile = encrypted }, sshx.ErrEncryptedKey,
			[]string{"kvm1", encrypted, "unencrypted key", "ssh-agent is not supported"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := f.target
			tc.edit(&target)
			_, err := sshx.Run(context.Background(), target, sshx.DefaultRestartCommand)
			if err == nil {
				t.Fatal("Run succeeded")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want one wrapping %v", err, tc.is)
			}
			assertContains(t, err, tc.substr...)
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("error quotes the key file: %v", err)
			}
		})
	}
	if cmds := f.srv.Commands(); len(cmds) != 0 {
		t.Errorf("server ran %q", cmds)
	}
}

func TestRunRefusesBadCommand(t *testing.T) {
	f := newFixture(t, ok("should not run"))
	for _, cmd := range []string{"", "  \t", "systemctl restart kvmagent\nrm -rf /", "a\rb", "a\x00b"} {
		if _, err := sshx.Run(context.Background(), f.target, cmd); err == nil {
			t.Errorf("Run(%q) succeeded", cmd)
		} else {
			assertContains(t, err, "kvm1")
		}
	}
	if cmds := f.srv.Commands(); len(cmds) != 0 {
		t.Errorf("server ran %q", cmds)
	}
}

func TestValidCommand(t *testing.T) {
	for cmd, valid := range map[string]bool{
		sshx.DefaultRestartCommand:                          true,
		"systemctl restart kvmagent; systemctl is-active x": true,
		"":        false,
		" ":       false,
		"a\nb":    false,
		"a\r\n":   false,
		"a\x00":   false,
		"\tfoo\t": true,
	} {
		if err := sshx.ValidCommand(cmd); (err == nil) != valid {
			t.Errorf("ValidCommand(%q) = %v, want valid %v", cmd, err, valid)
		}
	}
}
