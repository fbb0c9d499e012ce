// Package sshx runs one command on a KVM host over SSH, the way `kvmctl maintenance cancel`
// restarts a kvmagent that lost its connection.
//
// It authenticates with an unencrypted private key file only and always verifies the host key
// against a known_hosts file: a host kvmctl cannot verify is refused, never trusted on first use.
package sshx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// DefaultRestartCommand is the command that restarts kvmagent when a host sets none.
const DefaultRestartCommand = "systemctl restart kvmagent"

// DefaultTimeout bounds dialing and the SSH handshake when Client.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// DefaultUser is the login used when Target.User is empty.
const DefaultUser = "root"

// MaxOutput is how much of a command's combined output is kept; older output is dropped.
const MaxOutput = 64 << 10

// Errors that Run wraps, so that callers can tell a refusal to connect from a failed command.
var (
	// ErrNotConfigured means the target lacks a key file or a known_hosts file.
	ErrNotConfigured = errors.New("ssh is not configured")
	// ErrEncryptedKey means the private key file needs a passphrase, which kvmctl cannot supply.
	ErrEncryptedKey = errors.New("ssh key is encrypted")
	// ErrUnknownHost means the known_hosts file holds no key for the host.
	ErrUnknownHost = errors.New("host is not in known_hosts")
	// ErrHostKeyMismatch means the host presented a key other than the one in known_hosts.
	ErrHostKeyMismatch = errors.New("host key mismatch")
	// ErrHostKeyRevoked means the host presented a key marked @revoked in known_hosts.
	ErrHostKeyRevoked = errors.New("host key revoked")
	// ErrAuthFailed means the host rejected the client key.
	ErrAuthFailed = errors.New("ssh authentication failed")
)

// Target says where and as whom to log in.
type Target struct {
	// Host is the host's name, used in messages (Addr when empty).
	Host string
	// Addr is host or host:port; the port defaults to 22 and Addr to Host.
	Addr string
	// User defaults to DefaultUser.
	User string
	// KeyFile is an unencrypted private key file (OpenSSH, PKCS#1, PKCS#8 or SEC1 PEM).
	KeyFile string
	// KnownHostsFile is an OpenSSH known_hosts file that must list the host's key.
	KnownHostsFile string
}

// Runner runs a command on a target and returns its combined output; Client implements it,
// and engines take it as a collaborator so tests can substitute a fake.
type Runner interface {
	Run(ctx context.Context, t Target, command string) (string, error)
}

// Client runs commands over SSH; the zero value is ready to use and safe for concurrent use.
type Client struct {
	// Timeout bounds dialing and the handshake (DefaultTimeout when zero); ctx may end it sooner.
	Timeout time.Duration
}

var _ Runner = (*Client)(nil)

// Run runs command on t with a zero Client.
func Run(ctx context.Context, t Target, command string) (string, error) {
	return (&Client{}).Run(ctx, t, command)
}

// ExitError reports a command that ran and exited with a non-zero status or was killed.
type ExitError struct {
	// Host and Command are the Target's name and the command that ran.
	Host    string
	Command string
	// Status is the exit status, -1 when the command was killed by a signal.
	Status int
	// Signal names the signal that killed the command, if one did (e.g. "KILL").
	Signal string
	// Output is the tail of the combined output, at most MaxOutput bytes.
	Output string
}

// errorOutputTail is how much output an ExitError message quotes; Output keeps the rest.
const errorOutputTail = 1 << 10

// Error quotes the last KiB of output, where the reason for a failed restart usually is.
func (e *ExitError) Error() string {
	how := fmt.Sprintf("exit status %d", e.Status)
	if e.Signal != "" {
		how = "killed by signal " + e.Signal
	}
	out := strings.TrimSpace(e.Output)
	if out == "" {
		return fmt.Sprintf("run %q on %s: %s (no output)", e.Command, e.Host, how)
	}
	if len(out) > errorOutputTail {
		out = "..." + validTail(out[len(out)-errorOutputTail:])
	}
	return fmt.Sprintf("run %q on %s: %s: %s", e.Command, e.Host, how, out)
}

// Run opens an SSH connection to t, runs command through the exec request as-is and returns
// the tail of its combined stdout and stderr. A non-zero exit yields an *ExitError together
// with the output. When ctx ends, the connection is closed and Run returns ctx's error.
func (c *Client) Run(ctx context.Context, t Target, command string) (string, error) {
	name := t.Host
	if name == "" {
		name = t.Addr
	}
	if err := ValidCommand(command); err != nil {
		return "", fmt.Errorf("ssh to %s: %w", name, err)
	}
	cfg, addr, err := clientConfig(t, name)
	if err != nil {
		return "", err
	}

	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dialCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dialCtx, "tcp", addr)
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("ssh to %s: %w", name, context.Cause(ctx))
		}
		return "", fmt.Errorf("ssh to %s: dial %s: %w", name, addr, err)
	}
	// Closing the connection is what ends a handshake or a session still running when ctx ends.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	if dl, ok := dialCtx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}

	hk := newHostKeyChecker(cfg.hostKeys, cfg.knownHostsFile, name, addr)
	cfg.ssh.HostKeyCallback = hk.check
	cfg.ssh.HostKeyAlgorithms = hk.algorithms(addr, conn.RemoteAddr())
	sc, chans, reqs, err := ssh.NewClientConn(conn, addr, &cfg.ssh)
	if err != nil {
		if hkErr := hk.err(); hkErr != nil {
			return "", hkErr
		}
		if hkErr := hk.handshakeErr(err); hkErr != nil {
			return "", hkErr
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("ssh to %s: %w", name, context.Cause(ctx))
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return "", fmt.Errorf("ssh to %s as %s: the host rejected key %s (is its public key in %s's authorized_keys on %s?): %w: %w",
				name, cfg.ssh.User, cfg.keyFile, cfg.ssh.User, name, ErrAuthFailed, err)
		}
		if dialCtx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return "", fmt.Errorf("ssh to %s: handshake with %s did not finish within %s: %w", name, addr, timeout, err)
		}
		return "", fmt.Errorf("ssh to %s: %w", name, err)
	}
	_ = conn.SetDeadline(time.Time{})
	client := ssh.NewClient(sc, chans, reqs)
	defer client.Close()

	sess, err := client.NewSession()
	if err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("ssh to %s: %w", name, context.Cause(ctx))
		}
		return "", fmt.Errorf("ssh to %s: open session: %w", name, err)
	}
	defer sess.Close()
	out := &tailBuffer{max: MaxOutput}
	sess.Stdout = out
	sess.Stderr = out
	err = sess.Run(command)
	output := out.String()
	if err != nil && ctx.Err() != nil {
		return output, fmt.Errorf("run %q on %s: %w", command, name, context.Cause(ctx))
	}
	var exitErr *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return output, nil
	case errors.As(err, &exitErr):
		return output, &ExitError{Host: name, Command: command, Status: exitErr.ExitStatus(), Signal: exitErr.Signal(), Output: output}
	case errors.As(err, &missing):
		return output, fmt.Errorf("run %q on %s: the connection ended without an exit status, so whether it worked is unknown: %w", command, name, err)
	default:
		return output, fmt.Errorf("run %q on %s: %w", command, name, err)
	}
}

// ValidCommand checks a remote command: not blank and a single line, since it is sent as one
// exec request and a newline would smuggle a second command past the operator's reading.
func ValidCommand(command string) error {
	if strings.TrimSpace(command) == "" {
		return fmt.Errorf("empty remote command: set one or leave it unset for the default %q", DefaultRestartCommand)
	}
	if strings.ContainsAny(command, "\n\r\x00") {
		return fmt.Errorf("remote command %q must be a single line without newlines or NUL bytes", command)
	}
	return nil
}

// config is what Run needs before dialing.
type config struct {
	ssh            ssh.ClientConfig
	hostKeys       ssh.HostKeyCallback
	keyFile        string
	knownHostsFile string
}

// clientConfig reads the key and known_hosts files of t and resolves its address.
func clientConfig(t Target, name string) (*config, string, error) {
	addr := t.Addr
	if addr == "" {
		addr = t.Host
	}
	if addr == "" {
		return nil, "", fmt.Errorf("ssh: target has neither an address nor a host name: %w", ErrNotConfigured)
	}
	addr = withDefaultPort(addr)
	user := t.User
	if user == "" {
		user = DefaultUser
	}
	if t.KeyFile == "" {
		return nil, "", fmt.Errorf("ssh to %s: no ssh key file is set; set them with `kvmctl host set %s --ssh-key FILE --ssh-known-hosts FILE` (or the inventory's `ssh: {key_file, known_hosts_file}`): %w",
			name, name, ErrNotConfigured)
	}
	if t.KnownHostsFile == "" {
		return nil, "", fmt.Errorf("ssh to %s: no known_hosts file is set, and kvmctl never connects to a host whose key it cannot verify; set them with `kvmctl host set %s --ssh-key FILE --ssh-known-hosts FILE` (or the inventory's `ssh: {key_file, known_hosts_file}`): %w",
			name, name, ErrNotConfigured)
	}
	signer, err := readKey(t.KeyFile, name)
	if err != nil {
		return nil, "", err
	}
	hostKeys, err := knownhosts.New(t.KnownHostsFile)
	if err != nil {
		return nil, "", fmt.Errorf("ssh to %s: read known_hosts file %s: %w", name, t.KnownHostsFile, err)
	}
	return &config{
		ssh: ssh.ClientConfig{
			User: user,
			Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		},
		hostKeys:       hostKeys,
		keyFile:        t.KeyFile,
		knownHostsFile: t.KnownHostsFile,
	}, addr, nil
}

// readKey parses a private key file; errors name the file but never quote its contents.
func readKey(path, name string) (ssh.Signer, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ssh to %s: read key: %w", name, err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	var pp *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &pp):
		return nil, fmt.Errorf("ssh to %s: key %s is protected by a passphrase; kvmctl needs an unencrypted key file (ssh-agent is not supported): %w",
			name, path, ErrEncryptedKey)
	case err != nil:
		return nil, fmt.Errorf("ssh to %s: parse key %s: %w", name, path, err)
	}
	return signer, nil
}

// withDefaultPort returns addr as host:port, adding port 22 when it has none.
func withDefaultPort(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	host := strings.TrimSuffix(strings.TrimPrefix(addr, "["), "]")
	return net.JoinHostPort(host, "22")
}
