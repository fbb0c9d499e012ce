package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/backoff"
	"github.com/kvmctl/kvmctl/pkg/buildinfo"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// SignatureHeader carries a webhook body's signature when the channel has a secret:
// "t=UNIX_SECONDS,v1=HEX", HEX being the HMAC-SHA256, keyed with the secret, of the seconds,
// a '.', and the body exactly as received. Verify checks it.
const SignatureHeader = "Kvmctl-Signature"

// DefaultTolerance is how far a signature's time may be from the receiver's clock (Verify):
// a captured request replayed later than this is refused.
const DefaultTolerance = 5 * time.Minute

// Payload is the webhook's JSON body: the notice, its one-line summary, and the machine that
// sent it.
type Payload struct {
	Notice
	Summary string `json:"summary"`
	Sender  string `json:"sender,omitempty"`
}

// Sign returns the SignatureHeader value of body signed with secret at t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks a SignatureHeader value against body and secret, as a receiver does: the HMAC
// must match (compared in constant time) and its time must be within tolerance of now, so that a
// request captured on the way cannot be replayed later. Receivers also drop a notice id they
// have seen: a retried delivery carries the same id under a new signature.
func Verify(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			if sig, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, sig)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return errors.New("malformed signature: want t=UNIX_SECONDS,v1=HEX")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("signature time is %s away from now: more than %s (a replay, or a clock off)", d.Round(time.Second), tolerance)
	}
	want := mac(secret, ts, body)
	for _, sig := range sigs {
		if hmac.Equal(sig, want) {
			return nil
		}
	}
	return errors.New("signature does not match: another secret, or a changed body")
}

// webhookSender returns the send function of a webhook channel: a POST of the Payload, retried
// on errors that may pass (no answer, 408, 425, 429, 5xx) up to l.WebhookAttempts times with
// pkg/backoff's waits on the Notifier's clock; each attempt bounded by l.WebhookAttempt.
// Redirects are not followed: the body goes only to the URL configured.
func (nf *Notifier) webhookSender(c state.NotifyChannel, l Limits) (func(context.Context, Notice) (int, error), error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pool, err := loadCAs(c.CAFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return func(ctx context.Context, n Notice) (int, error) {
		defer tr.CloseIdleConnections()
		body, err := json.Marshal(Payload{Notice: n, Summary: n.Summary(), Sender: nf.sender})
		if err != nil {
			return 0, err
		}
		var last error
		for attempt := 0; attempt < l.WebhookAttempts; attempt++ {
			if attempt > 0 {
				if err := clock.Sleep(ctx, nf.clock, backoff.Delay(attempt-1, l.WebhookBackoff, l.WebhookBackoffMax)); err != nil {
					return attempt, fmt.Errorf("%w (stopped before attempt %d: %v)", last, attempt+1, err)
				}
			}
			retry, err := nf.post(ctx, client, c, body, l.WebhookAttempt)
			if err == nil {
				return attempt + 1, nil
			}
			last = err
			if !retry || ctx.Err() != nil {
				return attempt + 1, err
			}
		}
		return l.WebhookAttempts, fmt.Errorf("after %d attempts: %w", l.WebhookAttempts, last)
	}, nil
}

// post makes one attempt; retry says whether another may succeed.
func (nf *Notifier) post(ctx context.Context, client *http.Client, c state.NotifyChannel, body []byte, limit time.Duration) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL, bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "kvmctl/"+buildinfo.String())
	if c.Secret != "" {
		req.Header.Set(SignatureHeader, Sign(c.Secret, nf.clock.Now(), body))
	}
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return true, fmt.Errorf("POST %s: no answer within %s", c.URL, limit)
		}
		return true, fmt.Errorf("POST %s: %w", c.URL, unwrapURLError(err))
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return false, nil
	}
	err = fmt.Errorf("POST %s: %s%s", c.URL, resp.Status, answer(snippet))
	switch s := resp.StatusCode; {
	case s >= 300 && s < 400:
		return false, fmt.Errorf("%w: redirected to %q, which kvmctl does not follow: point the channel at the final URL", err, resp.Header.Get("Location"))
	case s == http.StatusRequestTimeout, s == http.StatusTooEarly, s == http.StatusTooManyRequests, s >= 500:
		return true, err
	}
	return false, err
}

// unwrapURLError drops net/http's "Post \"URL\": " prefix: the caller names the URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// answer is the first line of what the receiver said, for the error: shortened, one line.
func answer(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	s = strings.TrimSpace(oneLine(truncate(s, 200)))
	if s == "" {
		return ""
	}
	return " (" + s + ")"
}
