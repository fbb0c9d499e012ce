package notify

import (
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/pki"
)

// mailSink is an SMTP server (go-smtp) that keeps what it is sent. With a login set it offers
// AUTH PLAIN and refuses mail from a session that did not log in.
type mailSink struct {
	Addr string
	user string
	pass string

	mu    sync.Mutex
	mails []sunkMail
	auths []string // every AUTH attempt: "user ok" or "user refused"
}

type sunkMail struct {
	From  string
	To    []string
	Data  []byte
	Login string // who logged in, "" for nobody
	TLS   bool   // whether the session ran over STARTTLS
}

// startMailSink serves SMTP on listen (host:port, port 0 for any). With tlsConfig it offers
// STARTTLS and allows a login only over TLS; without, it allows a login in clear.
func startMailSink(t *testing.T, listen string, tlsConfig *tls.Config, user, pass string) *mailSink {
	t.Helper()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	s := &mailSink{Addr: l.Addr().String(), user: user, pass: pass}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &mailSession{sink: s, conn: c}, nil
	}))
	srv.Domain = "localhost"
	srv.TLSConfig = tlsConfig
	srv.AllowInsecureAuth = tlsConfig == nil
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

func (s *mailSink) Mails() []sunkMail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sunkMail(nil), s.mails...)
}

func (s *mailSink) Auths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auths...)
}

type mailSession struct {
	sink  *mailSink
	conn  *smtp.Conn
	login string
	mail  sunkMail
}

func (m *mailSession) AuthMechanisms() []string {
	if m.sink.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (m *mailSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		m.sink.mu.Lock()
		defer m.sink.mu.Unlock()
		if user != m.sink.user || pass != m.sink.pass {
			m.sink.auths = append(m.sink.auths, user+" refused")
			return smtp.ErrAuthFailed
		}
		m.sink.auths = append(m.sink.auths, user+" ok")
		m.login = user
		return nil
	}), nil
}

func (m *mailSession) Mail(from string, _ *smtp.MailOptions) error {
	if m.sink.user != "" && m.login == "" {
		return smtp.ErrAuthRequired
	}
	_, isTLS := m.conn.TLSConnectionState()
	m.mail = sunkMail{From: from, Login: m.login, TLS: isTLS}
	return nil
}

func (m *mailSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	m.mail.To = append(m.mail.To, to)
	return nil
}

func (m *mailSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m.mail.Data = b
	m.sink.mu.Lock()
	m.sink.mails = append(m.sink.mails, m.mail)
	m.sink.mu.Unlock()
	return nil
}

func (m *mailSession) Reset()        { m.mail = sunkMail{} }
func (m *mailSession) Logout() error { return nil }

// testTLS returns a server certificate for 127.0.0.1 and localhost, and the file of the CA that
// signed it (for a channel's CA file).
func testTLS(t *testing.T) (*tls.Config, string) {
	t.Helper()
	now := time.Now()
	caPair, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.ParseCA(caPair.CertPEM, caPair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.NewAgent("localhost", []string{"127.0.0.1"}, now)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, caPair.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, caFile
}

// silentListener accepts connections and never says a word: a mail server or webhook that hangs.
func silentListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String()
}

// closedAddr returns a 127.0.0.1 address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// advanceUntil fires the fake clock's timers, one after the other, until done is closed, and
// returns how long each wait was: the waits between retries, taken in fake time.
func advanceUntil(f *clock.Fake, done <-chan struct{}) []time.Duration {
	var waits []time.Duration
	for {
		select {
		case <-done:
			return waits
		default:
		}
		if at, ok := f.NextDeadline(); ok {
			waits = append(waits, at.Sub(f.Now()))
			f.AdvanceToNext()
			continue
		}
		time.Sleep(time.Millisecond)
	}
}
