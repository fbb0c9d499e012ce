package notify

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/state"
)

// emailSender returns the send function of an email channel: one SMTP conversation through
// net/smtp, bounded by l.Email (real time: it is the network's deadline), never retried (a mail
// server that accepted the message queues and retries it itself).
func (nf *Notifier) emailSender(c state.NotifyChannel, l Limits) (func(context.Context, Notice) (int, error), error) {
	from, err := mail.ParseAddress(c.From)
	if err != nil {
		return nil, err
	}
	var to []*mail.Address
	var rcpts []string
	for _, t := range c.To {
		a, err := mail.ParseAddress(t)
		if err != nil {
			return nil, err
		}
		to = append(to, a)
		rcpts = append(rcpts, a.Address)
	}
	host, _, _ := net.SplitHostPort(c.SMTP)
	tlsConfig := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		if tlsConfig.RootCAs, err = loadCAs(c.CAFile); err != nil {
			return nil, err
		}
	}
	return func(ctx context.Context, n Notice) (int, error) {
		msg := mailMessage(from, to, c.Name, n, nf.sender)
		ctx, cancel := context.WithTimeout(ctx, l.Email)
		defer cancel()
		err := nf.smtpSend(ctx, c, host, tlsConfig, from.Address, rcpts, msg)
		if err != nil && (ctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded)) {
			err = fmt.Errorf("%w (gave up after %s)", err, l.Email)
		}
		return 1, err
	}, nil
}

// smtpSend speaks SMTP with the server of c: EHLO, STARTTLS when c asks for it (required, never
// opportunistic: a server that does not offer it gets nothing), AUTH PLAIN when c has a login,
// then the message.
func (nf *Notifier) smtpSend(ctx context.Context, c state.NotifyChannel, host string, tlsConfig *tls.Config, from string, to []string, msg []byte) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.SMTP)
	if err != nil {
		return fmt.Errorf("smtp %s: %w", c.SMTP, err)
	}
	// net/smtp takes no context: the connection's deadline bounds every read and write, and
	// the end of ctx cuts the connection short.
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	cl, err := smtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("smtp %s: greeting: %w", c.SMTP, err)
	}
	defer cl.Close()
	step := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("smtp %s: %s: %w", c.SMTP, what, err)
		}
		return nil
	}
	if heloName.MatchString(nf.sender) {
		if err := step("EHLO", cl.Hello(nf.sender)); err != nil {
			return err
		}
	}
	if c.StartTLS {
		if ok, _ := cl.Extension("STARTTLS"); !ok {
			return fmt.Errorf("smtp %s: the server does not offer STARTTLS: nothing was sent (use a server that does, or add the channel without --starttls)", c.SMTP)
		}
		if err := step("STARTTLS", cl.StartTLS(tlsConfig)); err != nil {
			return err
		}
	}
	if c.Username != "" {
		if ok, _ := cl.Extension("AUTH"); !ok {
			return fmt.Errorf("smtp %s: the server offers no login (AUTH)%s: nothing was sent", c.SMTP, authHint(c))
		}
		err := cl.Auth(smtp.PlainAuth("", c.Username, c.Password, host))
		if err != nil && strings.Contains(err.Error(), "unencrypted connection") {
			err = fmt.Errorf("%w: net/smtp sends a password only over TLS or to localhost (add --starttls)", err)
		}
		if err := step("login as "+c.Username, err); err != nil {
			return err
		}
	}
	if err := step("MAIL FROM", cl.Mail(from)); err != nil {
		return err
	}
	for _, rcpt := range to {
		if err := step("RCPT TO "+rcpt, cl.Rcpt(rcpt)); err != nil {
			return err
		}
	}
	w, err := cl.Data()
	if err := step("DATA", err); err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return step("DATA", err)
	}
	if err := step("DATA", w.Close()); err != nil {
		return err
	}
	// The message is accepted; a failed QUIT changes nothing.
	_ = cl.Quit()
	return nil
}

func authHint(c state.NotifyChannel) string {
	if !c.StartTLS {
		return " (many servers offer it only after STARTTLS: add --starttls)"
	}
	return ""
}

// heloName is what may follow EHLO: a host name. Anything else keeps net/smtp's "localhost".
var heloName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$`)

// mailMessage is the whole message: headers, then the body in quoted-printable UTF-8 (any
// result or message text travels intact, no line is too long for a mail server).
func mailMessage(from *mail.Address, to []*mail.Address, channel string, n Notice, sender string) []byte {
	var b bytes.Buffer
	header := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	header("From", from.String())
	var tos []string
	for _, a := range to {
		tos = append(tos, a.String())
	}
	header("To", strings.Join(tos, ", "))
	header("Subject", mime.QEncoding.Encode("utf-8", "[kvmctl] "+n.Summary()))
	header("Date", n.Time.Format(time.RFC1123Z))
	header("Message-ID", fmt.Sprintf("<%s.%d@%s>", n.ID, n.Time.UnixNano(), domainOf(from.Address)))
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")
	header("Content-Transfer-Encoding", "quoted-printable")
	// RFC 3834: no vacation reply comes back to kvmctl's address.
	header("Auto-Submitted", "auto-generated")
	header("X-Kvmctl-Kind", mime.QEncoding.Encode("utf-8", oneLine(string(n.Kind))))
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b)
	body := strings.ReplaceAll(mailBody(n, sender, channel), "\n", "\r\n")
	_, _ = qp.Write([]byte(body))
	_ = qp.Close()
	return b.Bytes()
}

func domainOf(addr string) string {
	if _, d, ok := strings.Cut(addr, "@"); ok && d != "" {
		return d
	}
	return "kvmctl.invalid"
}
