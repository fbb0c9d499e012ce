package notify

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/fsutil"
	"github.com/kvmctl/kvmctl/pkg/inventory"
	"github.com/kvmctl/kvmctl/pkg/safetext"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// MinSecretLen is the shortest webhook secret accepted: a shorter one can be guessed.
const MinSecretLen = 16

// maxSecretFile bounds what ReadSecretFile reads: a secret is one line.
const maxSecretFile = 4096

// Check refuses a channel whose fields would not work, naming the field and what to give
// instead. Its refusals never contain a secret.
func Check(c state.NotifyChannel) error {
	if err := inventory.ValidName("channel", c.Name); err != nil {
		return errs.Refused(err)
	}
	var err error
	switch c.Type {
	case state.NotifyEmail:
		err = checkEmail(c)
	case state.NotifySNMP:
		err = checkSNMP(c)
	case state.NotifyWebhook:
		err = checkWebhook(c)
	default:
		err = fmt.Errorf("unknown channel type %q: use email, snmp or webhook", c.Type)
	}
	return errs.Refused(err)
}

func checkEmail(c state.NotifyChannel) error {
	if err := inventory.ValidHostPort("SMTP server", c.SMTP, "host:port of the mail server, e.g. smtp.example.net:587"); err != nil {
		return err
	}
	if _, err := parseAddress("sender", c.From); err != nil {
		return err
	}
	if len(c.To) == 0 {
		return fmt.Errorf("no recipient: give at least one address to send to")
	}
	for _, to := range c.To {
		if _, err := parseAddress("recipient", to); err != nil {
			return err
		}
	}
	if err := safetext.Check("SMTP username", c.Username); err != nil {
		return err
	}
	switch {
	case c.Username != "" && c.Password == "":
		return fmt.Errorf("SMTP username %q without a password: give --password-file too", c.Username)
	case c.Username == "" && c.Password != "":
		return fmt.Errorf("an SMTP password without a username: give --username too")
	case c.Password != "" && !c.StartTLS && !isLocalhost(c.SMTP):
		// net/smtp's rule too: it sends a password in clear only to this machine.
		return fmt.Errorf("SMTP login to %s without STARTTLS would send the password in clear: add --starttls (the server must offer it), or relay through a mail server on localhost", c.SMTP)
	case c.CAFile != "" && !c.StartTLS:
		return fmt.Errorf("a CA file is only used with STARTTLS: add --starttls, or leave --ca-file out")
	}
	if err := checkSecret("SMTP password", c.Password); err != nil {
		return err
	}
	return checkCAFile(c.CAFile)
}

// parseAddress checks one mail address ("ops@example.net" or "Ops <ops@example.net>").
func parseAddress(what, s string) (*mail.Address, error) {
	if err := safetext.Check(what+" address", s); err != nil {
		return nil, err
	}
	a, err := mail.ParseAddress(s)
	if err != nil || !strings.Contains(a.Address, "@") {
		return nil, fmt.Errorf("invalid %s address %q: want a mail address, e.g. ops@example.net", what, s)
	}
	return a, nil
}

// isLocalhost reports whether the server of host:port addr is this machine by net/smtp's rule:
// only then does it log in without TLS.
func isLocalhost(addr string) bool {
	h, _, _ := net.SplitHostPort(addr)
	return h == "localhost" || h == "127.0.0.1" || h == "::1"
}

func checkSNMP(c state.NotifyChannel) error {
	if err := inventory.ValidHostPort("trap receiver", c.Target, "host:port of the SNMP trap receiver, e.g. 10.0.0.5:162"); err != nil {
		return err
	}
	if err := safetext.Check("SNMP community", c.Community); err != nil {
		return err
	}
	if c.Community == "" || len(c.Community) > 255 {
		return fmt.Errorf("invalid SNMP community %q: use 1 to 255 characters, the one the trap receiver accepts", c.Community)
	}
	return nil
}

func checkWebhook(c state.NotifyChannel) error {
	if err := safetext.Check("webhook URL", c.URL); err != nil {
		return err
	}
	u, err := url.Parse(c.URL)
	want := "want an http:// or https:// URL, e.g. https://hooks.example.net/kvmctl"
	switch {
	case err != nil:
		return fmt.Errorf("invalid webhook URL %q: %s", c.URL, want)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("invalid webhook URL %q: the scheme must be http or https, not %q", c.URL, u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return fmt.Errorf("invalid webhook URL %q: no host; %s", c.URL, want)
	case u.User != nil:
		// Redacted: this refusal must not print the password it refuses.
		return fmt.Errorf("invalid webhook URL %q: no user or password in the URL, it would be printed: the receiver checks the body's signature instead (--secret-file)", u.Redacted())
	case u.Fragment != "" || strings.Contains(c.URL, "#"):
		return fmt.Errorf("invalid webhook URL %q: a #fragment is never sent: leave it out", c.URL)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
			return fmt.Errorf("invalid webhook URL %q: the port must be a number from 1 to 65535", c.URL)
		}
	}
	if c.CAFile != "" && u.Scheme != "https" {
		return fmt.Errorf("a CA file is only used with an https:// URL: use https, or leave --ca-file out")
	}
	if c.Secret != "" && len(c.Secret) < MinSecretLen {
		return fmt.Errorf("the webhook secret has %d bytes: use at least %d, e.g. `openssl rand -hex 32`", len(c.Secret), MinSecretLen)
	}
	if err := checkSecret("webhook secret", c.Secret); err != nil {
		return err
	}
	return checkCAFile(c.CAFile)
}

// checkSecret refuses a secret with a control character without ever showing it.
func checkSecret(what, s string) error {
	var se *safetext.Error
	if err := safetext.Check(what, s); err != nil && errors.As(err, &se) {
		return fmt.Errorf("the %s holds a %s at byte %d: a secret is one line of printable text", what, se.Char, se.Offset)
	}
	return nil
}

func checkCAFile(path string) error {
	if path == "" {
		return nil
	}
	if err := safetext.Check("CA file", path); err != nil {
		return err
	}
	_, err := loadCAs(path)
	return err
}

// loadCAs reads a PEM file of CA certificates.
func loadCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate: give the CA's certificate (-----BEGIN CERTIFICATE-----)", path)
	}
	return pool, nil
}

// ReadSecretFile reads a secret (what: "SMTP password", "webhook secret") from the file at
// path: a regular file that only its owner may read (mode 0600 or 0400), holding one line of
// printable text (a final newline is dropped). Its refusals never contain the secret.
func ReadSecretFile(what, path string) (string, error) {
	// Checked before it is opened (opening a FIFO would wait for a writer), and again after.
	fi, err := os.Stat(path)
	if err != nil {
		return "", errs.Refusedf("%s file: %w", what, err)
	}
	if err := checkSecretFile(what, path, fi); err != nil {
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", errs.Refusedf("%s file: %w", what, err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return "", errs.Refusedf("%s file: %w", what, err)
	}
	if err := checkSecretFile(what, path, fi); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", errs.Refusedf("%s file: %w", what, err)
	}
	if len(b) > maxSecretFile {
		return "", errs.Refusedf("%s file %s is longer than %d bytes: a secret is one line", what, path, maxSecretFile)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", errs.Refusedf("%s file %s is empty: write the secret in it", what, path)
	}
	if err := checkSecret(what, s); err != nil {
		return "", errs.Refusedf("%s file %s: %w", what, path, err)
	}
	return s, nil
}

// checkSecretFile refuses a secret file that is not a regular file of its owner's alone.
func checkSecretFile(what, path string, fi os.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return errs.Refusedf("%s file %s is not a regular file: put the secret in a file of its own", what, path)
	}
	if exposed := fsutil.Exposure(fi.Mode()); exposed != "" {
		return errs.Refusedf("%s file %s is %s (mode %04o): chmod 600 %s", what, path, exposed, fi.Mode().Perm(), path)
	}
	return nil
}

// AddChannel checks c and stores it. A channel without a name is named after its type ("email",
// then "email-2", ...). An existing name is refused: remove the channel first.
func AddChannel(tx state.Tx, c state.NotifyChannel) (state.NotifyChannel, error) {
	all, err := state.NotifyChannels(tx)
	if err != nil {
		return c, err
	}
	taken := func(name string) bool {
		return slices.ContainsFunc(all, func(o state.NotifyChannel) bool { return o.Name == name })
	}
	if c.Name == "" {
		c.Name = c.Type
		for i := 2; taken(c.Name); i++ {
			c.Name = fmt.Sprintf("%s-%d", c.Type, i)
		}
	}
	if err := Check(c); err != nil {
		return c, err
	}
	if taken(c.Name) {
		return c, errs.Refusedf("notification channel %q exists: `kvmctl notify rm %s` first to replace it", c.Name, c.Name)
	}
	return c, state.PutNotifyChannel(tx, c)
}

// RemoveChannel removes the channel called name, or refuses when there is none.
func RemoveChannel(tx state.Tx, name string) (state.NotifyChannel, error) {
	c, err := GetChannel(tx, name)
	if err != nil {
		return c, err
	}
	return c, state.DeleteNotifyChannel(tx, name)
}

// GetChannel returns the channel called name, or refuses naming the way to list them.
func GetChannel(tx state.Tx, name string) (state.NotifyChannel, error) {
	c, err := state.GetNotifyChannel(tx, name)
	if state.IsNotFound(err) {
		return c, errs.Refusedf("no notification channel %q: `kvmctl notify list` shows them", name)
	}
	return c, err
}

// Redacted is the word that stands for a secret that is set, wherever a channel is shown.
const Redacted = "set"

// Redact returns c as it may be shown: each secret that is set reads Redacted, and the fields a
// newer kvmctl stored are dropped (this version cannot tell whether they are secrets).
func Redact(c state.NotifyChannel) state.NotifyChannel {
	if c.Password != "" {
		c.Password = Redacted
	}
	if c.Secret != "" {
		c.Secret = Redacted
	}
	c.Unknown = nil
	c.To = slices.Clone(c.To)
	return c
}
