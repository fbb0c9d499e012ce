package sshx

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// hostKeyChecker verifies the host key with a knownhosts callback and keeps the explained
// error, because the handshake error that reaches Run only carries it as text.
type hostKeyChecker struct {
	known          ssh.HostKeyCallback
	knownHostsFile string
	name           string
	addr           string
	// restricted lists the key types known_hosts has for the host, when Run asked only for those.
	restricted []string

	mu      sync.Mutex
	checked error
}

func newHostKeyChecker(known ssh.HostKeyCallback, knownHostsFile, name, addr string) *hostKeyChecker {
	return &hostKeyChecker{known: known, knownHostsFile: knownHostsFile, name: name, addr: addr}
}

// check is the ssh.HostKeyCallback.
func (h *hostKeyChecker) check(hostname string, remote net.Addr, key ssh.PublicKey) error {
	err := h.known(hostname, remote, key)
	if err == nil {
		return nil
	}
	err = h.explain(key, err)
	h.mu.Lock()
	h.checked = err
	h.mu.Unlock()
	return err
}

// err returns the explained host key error, if the handshake failed on the host key.
func (h *hostKeyChecker) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.checked
}

// handshakeErr turns a handshake that found no common host key algorithm, after Run asked
// only for the types in known_hosts, into the mismatch it is.
func (h *hostKeyChecker) handshakeErr(err error) error {
	if len(h.restricted) == 0 || !strings.Contains(err.Error(), "no common algorithm for host key") {
		return nil
	}
	return fmt.Errorf("the host key of %s (%s) does not match the known_hosts file %s (possible man-in-the-middle attack); kvmctl refused to connect. "+
		"The file lists only %s keys for it and the host offers none of those. If the host was reinstalled, "+
		"check its new key, remove the old one with `ssh-keygen -R '%s' -f %s` and add the new one: %w: %w",
		h.name, h.addr, h.knownHostsFile, strings.Join(h.restricted, ", "),
		knownhosts.Normalize(h.addr), h.knownHostsFile, ErrHostKeyMismatch, err)
}

// algorithms returns the host key algorithms to ask for: those of the keys known_hosts lists
// for addr, so that a host with several keys presents the one kvmctl can verify. It returns
// nil (the library's defaults) when the host is not listed.
func (h *hostKeyChecker) algorithms(addr string, remote net.Addr) []string {
	var ke *knownhosts.KeyError
	if err := h.known(addr, remote, probeKey{}); !errors.As(err, &ke) || len(ke.Want) == 0 {
		return nil
	}
	var algos []string
	for _, k := range ke.Want {
		t := k.Key.Type()
		if !slices.Contains(h.restricted, t) {
			h.restricted = append(h.restricted, t)
		}
		for _, a := range algorithmsFor(t) {
			if !slices.Contains(algos, a) {
				algos = append(algos, a)
			}
		}
	}
	return algos
}

// algorithmsFor maps a key type to the signature algorithms a host may use with it.
func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// explain turns a knownhosts error into one that says what happened and what to do.
func (h *hostKeyChecker) explain(key ssh.PublicKey, err error) error {
	offered := key.Type() + " " + ssh.FingerprintSHA256(key)
	var revoked *knownhosts.RevokedError
	var ke *knownhosts.KeyError
	switch {
	case errors.As(err, &revoked):
		return fmt.Errorf("the host key of %s (%s), %s, is marked @revoked in %s:%d; kvmctl refused to connect: %w",
			h.name, h.addr, offered, revoked.Revoked.Filename, revoked.Revoked.Line, ErrHostKeyRevoked)
	case errors.As(err, &ke) && len(ke.Want) == 0:
		return fmt.Errorf("host %s (%s) is not in the known_hosts file %s, so kvmctl refused to connect. "+
			"It offered %s; check that fingerprint on the host (`ssh-keygen -lf /etc/ssh/ssh_host_%s_key.pub`), then add it with `%s >> %s`: %w",
			h.name, h.addr, h.knownHostsFile, offered, hostKeyFileType(key), keyscan(h.addr, key), h.knownHostsFile, ErrUnknownHost)
	case errors.As(err, &ke):
		var want []string
		for _, k := range ke.Want {
			want = append(want, fmt.Sprintf("%s:%d has %s %s", k.Filename, k.Line, k.Key.Type(), ssh.FingerprintSHA256(k.Key)))
		}
		return fmt.Errorf("the host key of %s (%s) does not match the known_hosts file %s (possible man-in-the-middle attack); kvmctl refused to connect. "+
			"The host offered %s, but %s. If the host was reinstalled, check its new key, remove the old one with `ssh-keygen -R '%s' -f %s` and add the new one: %w",
			h.name, h.addr, h.knownHostsFile, offered, strings.Join(want, "; "),
			knownhosts.Normalize(h.addr), h.knownHostsFile, ErrHostKeyMismatch)
	default:
		return fmt.Errorf("check the host key of %s against %s: %w", h.name, h.knownHostsFile, err)
	}
}

// keyscan returns the ssh-keyscan command that fetches key's type of host key from addr.
func keyscan(addr string, key ssh.PublicKey) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		host, port = addr, "22"
	}
	cmd := "ssh-keyscan -t " + hostKeyFileType(key)
	if port != "22" {
		cmd += " -p " + port
	}
	return cmd + " " + host
}

// hostKeyFileType names a key type the way ssh-keyscan -t and /etc/ssh/ssh_host_*_key do.
func hostKeyFileType(key ssh.PublicKey) string {
	switch t := key.Type(); {
	case t == ssh.KeyAlgoED25519:
		return "ed25519"
	case t == ssh.KeyAlgoRSA:
		return "rsa"
	case strings.HasPrefix(t, "ecdsa-"):
		return "ecdsa"
	default:
		return t
	}
}

// probeKey matches no known_hosts line, so checking it lists every key known for a host.
type probeKey struct{}

func (probeKey) Type() string                        { return "kvmctl-probe" }
func (probeKey) Marshal() []byte                     { return []byte("\x00\x00\x00\x0ckvmctl-probe") }
func (probeKey) Verify([]byte, *ssh.Signature) error { return errors.New("probe key verifies nothing") }
