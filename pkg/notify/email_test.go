package notify

import (
	"bytes"
	"context"
	"io"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/internal/testnet"
	"github.com/kvmctl/kvmctl/pkg/notify/notifytest"
	"github.com/kvmctl/kvmctl/pkg/state"
)

const testPassword = "pa55-w0rd-nobody-may-see"

var fenceOff = Notice{
	ID: "n-1", Kind: KindFenceAction, Host: "h2", Cluster: "c1", Action: "off", Result: "confirmed off",
	Message: "h2 stopped answering at 03:03:51; both neighbours saw its heartbeat and disks idle 3 times.",
	AuditID: "a-17", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
}

func mailChannel(addr string) state.NotifyChannel {
	return state.NotifyChannel{Name: "mail", Type: state.NotifyEmail, SMTP: addr, From: "kvmctl <kvmctl@example.net>",
		To: []string{"ops@example.net", "Oncall <oncall@example.net>"}}
}

// readMail parses a received message and decodes its quoted-printable body.
func readMail(t *testing.T, data []byte) (*mail.Message, string) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("received mail does not parse: %v\n%s", err, data)
	}
	body, err := io.ReadAll(quotedprintable.NewReader(m.Body))
	if err != nil {
		t.Fatal(err)
	}
	return m, strings.ReplaceAll(string(body), "\r\n", "\n")
}

// The mail arrives with the envelope and headers of the channel, a subject that says what
// happened, and a plain-text body with the facts and what to do.
func TestEmailArrives(t *testing.T) {
	sink := notifytest.StartMailServer(t, notifytest.MailOptions{})
	nf := New([]state.NotifyChannel{mailChannel(sink.Addr)}, Options{Sender: "ops1.example.net"})
	if err := nf.Notify(context.Background(), fenceOff); err != nil {
		t.Fatal(err)
	}
	mails := sink.Mails()
	if len(mails) != 1 {
		t.Fatalf("got %d mails, want 1", len(mails))
	}
	got := mails[0]
	if got.From != "kvmctl@example.net" || !cmp.Equal(got.To, []string{"ops@example.net", "oncall@example.net"}) {
		t.Errorf("envelope from %q to %q", got.From, got.To)
	}
	m, body := readMail(t, got.Data)
	for k, want := range map[string]string{
		"Subject":        "[kvmctl] fence off h2: confirmed off",
		"From":           `"kvmctl" <kvmctl@example.net>`,
		"To":             `<ops@example.net>, "Oncall" <oncall@example.net>`,
		"Date":           "Fri, 02 Jan 2026 03:04:05 +0000",
		"Content-Type":   "text/plain; charset=utf-8",
		"Auto-Submitted": "auto-generated",
		"X-Kvmctl-Kind":  "fence.action",
	} {
		if v := m.Header.Get(k); v != want {
			t.Errorf("%s: %q, want %q", k, v, want)
		}
	}
	want := `fence off h2: confirmed off

  host:     h2
  cluster:  c1
  action:   off
  result:   confirmed off
  time:     2026-01-02T03:04:05Z
  kind:     fence.action
  audit:    a-17
  notice:   n-1

h2 stopped answering at 03:03:51; both neighbours saw its heartbeat and disks idle 3 times.

What to do:
kvmctl ran this action on the host's BMC; the result above is what the BMC confirmed.
A fenced host stays in Maintenance until an operator repairs it and runs
` + "`kvmctl maintenance cancel h2`. The evidence is in `kvmctl audit list --host h2`." + `

-- 
Sent by kvmctl on ops1.example.net through notification channel "mail".
`
	if d := cmp.Diff(want, body); d != "" {
		t.Errorf("body (-want +got):\n%s", d)
	}
}

// An HA notice's mail says what HA did in its subject and, under "What to do", what its action
// asks of the reader: with action none, to make sure the host is off and confirm it down.
func TestEmailOfHAKindCarriesAdvice(t *testing.T) {
	sink := notifytest.StartMailServer(t, notifytest.MailOptions{})
	n := Notice{ID: "n-2", Kind: KindHAFencing, Host: "h2", Cluster: "c1", Action: "none", Result: "waiting for confirm-down",
		Message: "Its HA action is none: kvmctl does not power it off.", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	if err := New([]state.NotifyChannel{mailChannel(sink.Addr)}, Options{Sender: "ops1.example.net"}).Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	m, body := readMail(t, sink.Mails()[0].Data)
	if s := m.Header.Get("Subject"); s != "[kvmctl] FENCING h2: waiting for confirm-down" {
		t.Errorf("Subject: %q", s)
	}
	if k := m.Header.Get("X-Kvmctl-Kind"); k != "ha.fencing" {
		t.Errorf("X-Kvmctl-Kind: %q", k)
	}
	want := `FENCING h2: waiting for confirm-down

  host:     h2
  cluster:  c1
  action:   none
  result:   waiting for confirm-down
  time:     2026-01-02T03:04:05Z
  kind:     ha.fencing
  notice:   n-2

Its HA action is none: kvmctl does not power it off.

What to do:
HA found the host dead: no answer, and no activity on its storage several checks in a
row (the message says since when).
Its HA action is none: kvmctl does not power it off. Make sure it is off (power it off
by hand if it is not), then run ` + "`kvmctl ha confirm-down h2`" + `: only then do its VMs start
on other hosts.
The evidence is in ` + "`kvmctl ha show h2 --history` and `kvmctl audit list --host h2`." + `

-- 
Sent by kvmctl on ops1.example.net through notification channel "mail".
`
	if d := cmp.Diff(want, body); d != "" {
		t.Errorf("body (-want +got):\n%s", d)
	}
	// Every HA kind's mail has advice of its own.
	for _, k := range haKinds {
		body := mailBody(Notice{Kind: k, Host: "h2"}, "ops1", "mail")
		if a := advice(Notice{Kind: k, Host: "h2"}); a == "" || !strings.Contains(body, "\nWhat to do:\n"+a+"\n") {
			t.Errorf("%s: the mail has no advice:\n%s", k, body)
		}
	}
}

// A result with a newline or non-ASCII text keeps the subject one encoded line.
func TestEmailSubjectStaysOneLine(t *testing.T) {
	sink := notifytest.StartMailServer(t, notifytest.MailOptions{})
	n := fenceOff
	n.Kind, n.Result = KindFenceFailed, "BMC unreachable\r\nBcc: evil@example.net — über"
	if err := New([]state.NotifyChannel{mailChannel(sink.Addr)}, Options{}).Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	m, _ := readMail(t, sink.Mails()[0].Data)
	if m.Header.Get("Bcc") != "" {
		t.Fatalf("a result added a header: %v", m.Header)
	}
	subject, err := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "[kvmctl] FAILED fence off h2: BMC unreachable  Bcc: evil@example.net — über"; subject != want {
		t.Errorf("subject %q, want %q", subject, want)
	}
}

// With a login, the channel logs in with AUTH PLAIN. In clear, net/smtp does so only to
// localhost (127.0.0.1 here), and the password appears in nothing the server receives but the
// login itself.
func TestEmailLoginOnLocalhost(t *testing.T) {
	sink := notifytest.StartMailServer(t, notifytest.MailOptions{Username: "kvmctl", Password: testPassword})
	c := mailChannel(sink.Addr)
	c.Username, c.Password = "kvmctl", testPassword
	if err := New([]state.NotifyChannel{c}, Options{}).Notify(context.Background(), fenceOff); err != nil {
		t.Fatal(err)
	}
	mails := sink.Mails()
	if len(mails) != 1 || mails[0].Login != "kvmctl" {
		t.Fatalf("mails %+v, want one sent after a login as kvmctl", mails)
	}
	if bytes.Contains(mails[0].Data, []byte(testPassword)) {
		t.Errorf("the mail holds the password:\n%s", mails[0].Data)
	}

	c.Password = "wrong-password-16b"
	err := New([]state.NotifyChannel{c}, Options{}).Notify(context.Background(), fenceOff)
	if err == nil || !strings.Contains(err.Error(), "login as kvmctl: 535") {
		t.Errorf("wrong password: %v, want the login refused (535)", err)
	}
	if strings.Contains(err.Error(), c.Password) {
		t.Errorf("the error shows the password: %v", err)
	}
	if got := sink.Logins(); !cmp.Equal(got, []string{"kvmctl ok", "kvmctl refused"}) {
		t.Errorf("logins %q", got)
	}
}

// To any other host, a login in clear is refused twice over: by Check (so `notify add` refuses
// the channel) and, underneath, by net/smtp itself, before the password leaves.
func TestEmailLoginInClearRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no second loopback address here: %v", err)
	}
	l.Close()
	sink := notifytest.StartMailServer(t, notifytest.MailOptions{Listen: l.Addr().String(), Username: "kvmctl", Password: testPassword})
	c := mailChannel(sink.Addr)
	c.Username, c.Password = "kvmctl", testPassword
	err = New([]state.NotifyChannel{c}, Options{}).Notify(context.Background(), fenceOff)
	if err == nil || !strings.Contains(err.Error(), "without STARTTLS would send the password in clear") {
		t.Errorf("Notify: %v, want Check's refusal", err)
	}
	nf := New(nil, Options{})
	err = nf.smtpSend(context.Background(), c, "127.0.0.2", nil, "kvmctl@example.net", []string{"ops@example.net"}, []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "unencrypted connection") {
		t.Errorf("net/smtp in clear to 127.0.0.2: %v, want its refusal", err)
	}
	if len(sink.Logins()) != 0 || len(sink.Mails()) != 0 {
		t.Errorf("the server saw logins %q and %d mails, want none", sink.Logins(), len(sink.Mails()))
	}
}

// With STARTTLS the session turns to TLS (verified against the channel's CA file) before the
// login; a server without STARTTLS, or with a certificate of another CA, gets nothing.
func TestEmailStartTLS(t *testing.T) {
	serverTLS, caFile := notifytest.ServerTLS(t, t.TempDir())
	sink := notifytest.StartMailServer(t, notifytest.MailOptions{TLS: serverTLS, Username: "kvmctl", Password: testPassword})
	c := mailChannel(sink.Addr)
	c.Username, c.Password, c.StartTLS, c.CAFile = "kvmctl", testPassword, true, caFile
	if err := New([]state.NotifyChannel{c}, Options{}).Notify(context.Background(), fenceOff); err != nil {
		t.Fatal(err)
	}
	if m := sink.Mails(); len(m) != 1 || !m[0].TLS || m[0].Login != "kvmctl" {
		t.Fatalf("mails %+v, want one over TLS after a login", m)
	}

	_, otherCA := notifytest.ServerTLS(t, t.TempDir())
	c.CAFile = otherCA
	err := New([]state.NotifyChannel{c}, Options{}).Notify(context.Background(), fenceOff)
	if err == nil || !strings.Contains(err.Error(), "STARTTLS: tls: failed to verify certificate") {
		t.Errorf("another CA: %v, want a certificate error", err)
	}

	plain := notifytest.StartMailServer(t, notifytest.MailOptions{})
	c = mailChannel(plain.Addr)
	c.StartTLS = true
	err = New([]state.NotifyChannel{c}, Options{}).Notify(context.Background(), fenceOff)
	if err == nil || !strings.Contains(err.Error(), "does not offer STARTTLS: nothing was sent") {
		t.Errorf("no STARTTLS: %v", err)
	}
	if len(plain.Mails()) != 0 || len(sink.Mails()) != 1 {
		t.Errorf("a mail went out without TLS")
	}
}

// A mail server that accepts the connection and never answers costs the channel its limit, no
// more.
func TestEmailBounded(t *testing.T) {
	c := mailChannel(testnet.Silent(t))
	nf := New([]state.NotifyChannel{c}, Options{Limits: Limits{Email: 200 * time.Millisecond}})
	start := time.Now()
	err := nf.Notify(context.Background(), fenceOff)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("Notify took %s, want about 200ms", took)
	}
	if err == nil || !strings.Contains(err.Error(), "gave up after 200ms") {
		t.Errorf("Notify: %v, want a timeout", err)
	}
}
