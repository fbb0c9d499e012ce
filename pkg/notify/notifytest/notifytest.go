// Package notifytest runs real receivers of kvmctl's notifications for tests, each keeping what
// it received: a mail server (go-smtp, with AUTH PLAIN and STARTTLS when asked), an SNMP trap
// receiver (gosnmp's TrapListener) and a webhook (net/http/httptest). pkg/notify's tests and the
// CLI's scripts use the same ones. It imports nothing of pkg/notify, so that package's own tests
// may use it.
package notifytest

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/gosnmp/gosnmp"

	"github.com/kvmctl/kvmctl/pkg/pki"
)

// T is what the receivers need of a test: *testing.T, or a testscript command's adapter.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Mail is one message a MailServer accepted.
type Mail struct {
	From string
	To   []string
	// Login is who logged in before sending, "" for nobody; TLS whether the session ran over
	// STARTTLS.
	Login string
	TLS   bool
	// Data is the message as received: headers, a blank line, the body.
	Data []byte
}

// MailOptions configure a MailServer.
type MailOptions struct {
	// Listen is host:port to listen on (default 127.0.0.1:0).
	Listen string
	// TLS, when set, offers STARTTLS and allows a login only over it; without it, a login is
	// allowed in clear.
	TLS *tls.Config
	// Username and Password, when set, offer AUTH PLAIN and refuse mail from a session that did
	// not log in with them.
	Username, Password string
	// OnMail is called with each mail before the server answers its DATA (the client hears of
	// success only once OnMail has returned).
	OnMail func(Mail)
}

// MailServer is an SMTP server that keeps what it is sent.
type MailServer struct {
	// Addr is the host:port it listens on.
	Addr string
	opts MailOptions

	mu     sync.Mutex
	mails  []Mail
	logins []string
}

// StartMailServer serves SMTP until the test ends.
func StartMailServer(t T, opts MailOptions) *MailServer {
	t.Helper()
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		t.Fatalf("mail server: %v", err)
	}
	s := &MailServer{Addr: l.Addr().String(), opts: opts}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &mailSession{srv: s, conn: c}, nil
	}))
	srv.Domain = "localhost"
	srv.TLSConfig = opts.TLS
	srv.AllowInsecureAuth = opts.TLS == nil
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return s
}

// Mails returns the mails accepted so far.
func (s *MailServer) Mails() []Mail {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.mails)
}

// Logins returns every AUTH attempt so far: "USER ok" or "USER refused".
func (s *MailServer) Logins() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.logins)
}

type mailSession struct {
	srv   *MailServer
	conn  *smtp.Conn
	login string
	mail  Mail
}

func (m *mailSession) AuthMechanisms() []string {
	if m.srv.opts.Username == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (m *mailSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		m.srv.mu.Lock()
		defer m.srv.mu.Unlock()
		if user != m.srv.opts.Username || pass != m.srv.opts.Password {
			m.srv.logins = append(m.srv.logins, user+" refused")
			return smtp.ErrAuthFailed
		}
		m.srv.logins = append(m.srv.logins, user+" ok")
		m.login = user
		return nil
	}), nil
}

func (m *mailSession) Mail(from string, _ *smtp.MailOptions) error {
	if m.srv.opts.Username != "" && m.login == "" {
		return smtp.ErrAuthRequired
	}
	_, isTLS := m.conn.TLSConnectionState()
	m.mail = Mail{From: from, Login: m.login, TLS: isTLS}
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
	if m.srv.opts.OnMail != nil {
		m.srv.opts.OnMail(m.mail)
	}
	m.srv.mu.Lock()
	m.srv.mails = append(m.srv.mails, m.mail)
	m.srv.mu.Unlock()
	return nil
}

func (m *mailSession) Reset()        { m.mail = Mail{} }
func (m *mailSession) Logout() error { return nil }

// TrapReceiver is gosnmp's TrapListener on a free UDP port of 127.0.0.1.
type TrapReceiver struct {
	// Addr is the host:port it listens on.
	Addr string
	// Traps receives each trap (buffered; OnTrap, when given, is called first).
	Traps <-chan *gosnmp.SnmpPacket
}

// StartTrapReceiver listens for SNMPv2c traps until the test ends; onTrap, when not nil, is
// called with each.
func StartTrapReceiver(t T, onTrap func(*gosnmp.SnmpPacket)) *TrapReceiver {
	t.Helper()
	// TrapListener does not say which port it got: take a free one, then listen on it.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("trap receiver: %v", err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	traps := make(chan *gosnmp.SnmpPacket, 64)
	tl := gosnmp.NewTrapListener()
	tl.Params = &gosnmp.GoSNMP{Version: gosnmp.Version2c, Community: "public", MaxOids: gosnmp.MaxOids}
	tl.OnNewTrap = func(p *gosnmp.SnmpPacket, _ *net.UDPAddr) {
		if onTrap != nil {
			onTrap(p)
		}
		traps <- p
	}
	errc := make(chan error, 1)
	go func() { errc <- tl.Listen(addr) }()
	select {
	case <-tl.Listening():
	case err := <-errc:
		t.Fatalf("trap receiver: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatalf("trap receiver did not start")
	}
	t.Cleanup(tl.Close)
	return &TrapReceiver{Addr: addr, Traps: traps}
}

// HookRequest is one request a Hook received.
type HookRequest struct {
	Method string
	Header http.Header
	Body   []byte
}

// Hook is a webhook receiver that keeps every request and answers the n-th (from 0) with
// Status(n).
type Hook struct {
	// URL is where it listens.
	URL string

	mu   sync.Mutex
	reqs []HookRequest
}

// StartHook serves a webhook until the test ends. status gives the answer to the n-th request
// (nil: 200 to all); onRequest, when not nil, is called with each before it is answered. An
// answer of 300 or more has the body "upstream says no".
func StartHook(t T, status func(n int) int, onRequest func(HookRequest)) *Hook {
	t.Helper()
	h := &Hook{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req := HookRequest{Method: r.Method, Header: r.Header.Clone(), Body: body}
		h.mu.Lock()
		n := len(h.reqs)
		h.reqs = append(h.reqs, req)
		h.mu.Unlock()
		if onRequest != nil {
			onRequest(req)
		}
		code := http.StatusOK
		if status != nil {
			code = status(n)
		}
		w.WriteHeader(code)
		if code >= 300 {
			_, _ = io.WriteString(w, "upstream says no\nsecond line")
		}
	}))
	t.Cleanup(srv.Close)
	h.URL = srv.URL
	return h
}

// Requests returns the requests received so far.
func (h *Hook) Requests() []HookRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.reqs)
}

// ServerTLS returns a server certificate for localhost and 127.0.0.1, signed by a fresh CA,
// and writes that CA's certificate to a file in dir (a channel's CA file).
func ServerTLS(t T, dir string) (config *tls.Config, caFile string) {
	t.Helper()
	now := time.Now()
	caPair, err := pki.GenerateCA(now)
	if err != nil {
		t.Fatalf("test CA: %v", err)
	}
	ca, err := pki.ParseCA(caPair.CertPEM, caPair.KeyPEM)
	if err != nil {
		t.Fatalf("test CA: %v", err)
	}
	leaf, err := ca.NewAgent("localhost", []string{"127.0.0.1"}, now)
	if err != nil {
		t.Fatalf("test certificate: %v", err)
	}
	cert, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM)
	if err != nil {
		t.Fatalf("test certificate: %v", err)
	}
	f, err := os.CreateTemp(dir, "ca-*.crt")
	if err != nil {
		t.Fatalf("test CA file: %v", err)
	}
	defer f.Close()
	if _, err := f.Write(caPair.CertPEM); err != nil {
		t.Fatalf("test CA file: %v", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, filepath.Clean(f.Name())
}
