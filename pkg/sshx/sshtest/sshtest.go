// Package sshtest runs a real SSH server on 127.0.0.1 for tests: it accepts one authorized
// public key, answers "exec" requests by calling a Go handler and sends the exit status, so
// tests exercise the same client code that restarts kvmagent on a real host.
package sshtest

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Handler runs an exec request's command and returns what the client receives on stdout and
// the exit status.
type Handler func(command string) (output string, exitStatus int)

// Server is a running test SSH server; it shuts down at test cleanup.
type Server struct {
	// Addr is the 127.0.0.1:port the server listens on.
	Addr string
	// HostKey signs the server's side of the handshake; HostKey.PublicKey() belongs in known_hosts.
	HostKey ssh.Signer

	t        testing.TB
	ln       net.Listener
	handler  Handler
	config   *ssh.ServerConfig
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	commands []string
}

// NewServer starts a server that lets in only clients holding authorizedKey's private key and
// calls handler for every exec request. A handler still running at cleanup is not waited for.
func NewServer(t testing.TB, authorizedKey ssh.PublicKey, handler Handler) *Server {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshtest: generate host key: %v", err)
	}
	hostKey, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("sshtest: host key signer: %v", err)
	}
	s := &Server{HostKey: hostKey, t: t, handler: handler, conns: map[net.Conn]struct{}{}}
	want := authorizedKey.Marshal()
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), want) {
				return nil, nil
			}
			return nil, errors.New("sshtest: key not authorized")
		},
	}
	s.config.AddHostKey(hostKey)
	s.ln, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sshtest: listen: %v", err)
	}
	s.Addr = s.ln.Addr().String()
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.Close)
	return s
}

// Commands returns the commands of the exec requests the handler was called for, in order.
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.commands...)
}

// Close stops the server and drops its connections; NewServer registers it as test cleanup.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// WriteKnownHosts writes a known_hosts file at path that lists the server's host key for
// addr (host or [host]:port form both work; the server's Addr when empty).
func (s *Server) WriteKnownHosts(path, addr string) {
	s.t.Helper()
	if addr == "" {
		addr = s.Addr
	}
	WriteKnownHostsKey(s.t, path, addr, s.HostKey.PublicKey())
}

// WriteKnownHostsKey writes a known_hosts file at path that lists key for addr, e.g. a key
// other than the server's to stage a host key mismatch.
func WriteKnownHostsKey(t testing.TB, path, addr string, key ssh.PublicKey) {
	t.Helper()
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, key) + "\n"
	if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
		t.Fatalf("sshtest: write known_hosts: %v", err)
	}
}

// WriteClientKey generates an unencrypted ed25519 key in OpenSSH format in dir and returns its
// path and public key, ready for Target.KeyFile and NewServer.
func WriteClientKey(t testing.TB, dir string) (path string, pub ssh.PublicKey) {
	t.Helper()
	return writeClientKey(t, dir, "id_ed25519", nil)
}

// WriteEncryptedClientKey is WriteClientKey with the key protected by passphrase.
func WriteEncryptedClientKey(t testing.TB, dir, passphrase string) (path string, pub ssh.PublicKey) {
	t.Helper()
	return writeClientKey(t, dir, "id_ed25519_encrypted", []byte(passphrase))
}

func writeClientKey(t testing.TB, dir, name string, passphrase []byte) (string, ssh.PublicKey) {
	t.Helper()
	edPub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("sshtest: generate client key: %v", err)
	}
	var block *pem.Block
	if passphrase != nil {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(priv, "", passphrase)
	} else {
		block, err = ssh.MarshalPrivateKey(priv, "")
	}
	if err != nil {
		t.Fatalf("sshtest: marshal client key: %v", err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatalf("sshtest: write client key: %v", err)
	}
	pub, err := ssh.NewPublicKey(edPub)
	if err != nil {
		t.Fatalf("sshtest: client public key: %v", err)
	}
	return path, pub
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			s.serveConn(c)
		}()
	}
}

func (s *Server) serveConn(c net.Conn) {
	sc, chans, reqs, err := ssh.NewServerConn(c, s.config)
	if err != nil {
		return // failed auth or a client that refused our host key
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	defer wg.Wait()
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "sshtest: only session channels")
			continue
		}
		ch, chReqs, err := nc.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveSession(ch, chReqs)
		}()
	}
}

// serveSession answers one session channel: the first exec request runs the handler, every
// other request is refused.
func (s *Server) serveSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	ran := false
	for req := range reqs {
		if req.Type != "exec" || ran {
			_ = req.Reply(false, nil)
			continue
		}
		var payload struct{ Command string }
		if err := ssh.Unmarshal(req.Payload, &payload); err != nil {
			_ = req.Reply(false, nil)
			continue
		}
		ran = true
		_ = req.Reply(true, nil)
		s.mu.Lock()
		s.commands = append(s.commands, payload.Command)
		s.mu.Unlock()
		// The handler runs on its own so that a client that goes away, or a cleanup, is not
		// held up by a handler that blocks.
		go func() {
			out, status := s.handler(payload.Command)
			_, _ = ch.Write([]byte(out))
			_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(status)}))
			_ = ch.Close()
		}()
	}
}

// String describes the server for test logs.
func (s *Server) String() string {
	return fmt.Sprintf("sshtest server %s (%s)", s.Addr, ssh.FingerprintSHA256(s.HostKey.PublicKey()))
}
