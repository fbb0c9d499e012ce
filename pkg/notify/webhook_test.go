package notify

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/notify/notifytest"
	"github.com/kvmctl/kvmctl/pkg/state"
)

const testSecret = "0123456789abcdef-hook-secret"

func hookChannel(url string) state.NotifyChannel {
	return state.NotifyChannel{Name: "hook", Type: state.NotifyWebhook, URL: url, Secret: testSecret}
}

// verified checks a received request's signature on now, as a receiver does.
func verified(r notifytest.HookRequest, now time.Time) error {
	return Verify(testSecret, r.Header.Get(SignatureHeader), r.Body, now, DefaultTolerance)
}

// The body is the notice in snake_case JSON with its summary and sender, signed with the
// channel's secret at the Notifier's clock's time; the signature verifies, and fails for another
// secret, a changed body, or a replay past the tolerance.
func TestWebhookSigned(t *testing.T) {
	fake := clock.NewFake(time.Time{})
	hook := notifytest.StartHook(t, func(int) int { return http.StatusNoContent }, nil)
	nf := New([]state.NotifyChannel{hookChannel(hook.URL + "/kvmctl")}, Options{Clock: fake, Sender: "ops1"})
	if err := nf.Notify(context.Background(), fenceOff); err != nil {
		t.Fatal(err)
	}
	reqs := hook.Requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	r := reqs[0]
	sig := r.Header.Get(SignatureHeader)
	if err := verified(r, fake.Now()); err != nil {
		t.Fatalf("signature %q does not verify: %v", sig, err)
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || !strings.HasPrefix(r.Header.Get("User-Agent"), "kvmctl/") {
		t.Errorf("%s with headers %v, want a JSON POST from kvmctl", r.Method, r.Header)
	}
	var body map[string]any
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"id": "n-1", "kind": "fence.action", "time": "2026-01-02T03:04:05Z", "host": "h2", "cluster": "c1",
		"action": "off", "result": "confirmed off", "message": fenceOff.Message, "audit_id": "a-17",
		"summary": "fence off h2: confirmed off", "sender": "ops1"}
	if d := cmp.Diff(want, body); d != "" {
		t.Errorf("body (-want +got):\n%s", d)
	}
	if !strings.HasPrefix(sig, "t=1767323045,v1=") {
		t.Errorf("signature %q, want the fake clock's time", sig)
	}
	for name, err := range map[string]error{
		"another secret": Verify("another-secret-of-16", sig, r.Body, fake.Now(), DefaultTolerance),
		"changed body":   Verify(testSecret, sig, append(r.Body, ' '), fake.Now(), DefaultTolerance),
		"replayed":       Verify(testSecret, sig, r.Body, fake.Now().Add(6*time.Minute), DefaultTolerance),
		"from the future": Verify(testSecret, sig, r.Body, fake.Now().Add(-6*time.Minute),
			DefaultTolerance),
		"malformed": Verify(testSecret, "v1=00", r.Body, fake.Now(), DefaultTolerance),
	} {
		if err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	if strings.Contains(string(r.Body), testSecret) {
		t.Errorf("the body holds the secret")
	}
}

// Without a secret, no signature header is sent.
func TestWebhookUnsigned(t *testing.T) {
	hook := notifytest.StartHook(t, nil, nil)
	c := hookChannel(hook.URL)
	c.Secret = ""
	if err := New([]state.NotifyChannel{c}, Options{}).Notify(context.Background(), fenceOff); err != nil {
		t.Fatal(err)
	}
	if r := hook.Requests(); len(r) != 1 || r[0].Header.Get(SignatureHeader) != "" {
		t.Errorf("requests %+v, want one without a signature", r)
	}
}

// A webhook that fails twice (503) then succeeds gets three attempts, waiting pkg/backoff's
// delays (about 1 s, then 2 s) on the fake clock; each retry carries the same body and notice id
// under a fresh signature.
func TestWebhookRetries(t *testing.T) {
	fake := clock.NewFake(time.Time{})
	hook := notifytest.StartHook(t, func(n int) int {
		if n < 2 {
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	}, nil)
	nf := New([]state.NotifyChannel{hookChannel(hook.URL)}, Options{Clock: fake})
	d := nf.Start(context.Background(), fenceOff)
	waits := advanceUntil(fake, d.Done())
	res := d.Wait()
	if res[0].Err != nil || res[0].Attempts != 3 {
		t.Fatalf("result %+v, want success at the third attempt", res[0])
	}
	if len(waits) != 2 || waits[0] < 750*time.Millisecond || waits[0] > time.Second ||
		waits[1] < 1500*time.Millisecond || waits[1] > 2*time.Second {
		t.Errorf("waits %v, want about 1s then 2s", waits)
	}
	reqs := hook.Requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	for i, r := range reqs {
		if err := verified(r, fake.Now()); string(r.Body) != string(reqs[0].Body) || err != nil {
			t.Errorf("request %d: body changed or signature does not verify (%v)", i, err)
		}
	}
	if reqs[0].Header.Get(SignatureHeader) == reqs[2].Header.Get(SignatureHeader) {
		t.Errorf("the retry reused the first signature")
	}
}

// A webhook that never answers costs WebhookAttempts attempts of WebhookAttempt each, and the
// waits between them: bounded, whatever the receiver does.
func TestWebhookNeverAnswers(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	fake := clock.NewFake(time.Time{})
	nf := New([]state.NotifyChannel{hookChannel(srv.URL)}, Options{Clock: fake, Limits: Limits{WebhookAttempt: 100 * time.Millisecond}})
	start := time.Now()
	d := nf.Start(context.Background(), fenceOff)
	advanceUntil(fake, d.Done())
	r := d.Wait()[0]
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %s, want about 3 × 100ms", took)
	}
	if r.Attempts != 3 || calls.Load() != 3 {
		t.Errorf("%d attempts, %d requests, want 3", r.Attempts, calls.Load())
	}
	if r.Err == nil || !strings.Contains(r.Err.Error(), "after 3 attempts: POST "+srv.URL+": no answer within 100ms") {
		t.Errorf("error %v", r.Err)
	}
}

// A refusal that will not change (401, 404, a redirect) is not retried, and its error quotes
// the receiver's first line.
func TestWebhookPermanentFailures(t *testing.T) {
	for _, code := range []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusFound} {
		hook := notifytest.StartHook(t, func(int) int { return code }, nil)
		r := New([]state.NotifyChannel{hookChannel(hook.URL)}, Options{}).Start(context.Background(), fenceOff).Wait()[0]
		if r.Attempts != 1 || len(hook.Requests()) != 1 {
			t.Errorf("%d: %d attempts, %d requests, want 1", code, r.Attempts, len(hook.Requests()))
		}
		want := http.StatusText(code) + " (upstream says no)"
		if code == http.StatusFound {
			want = "which kvmctl does not follow"
		}
		if r.Err == nil || !strings.Contains(r.Err.Error(), want) {
			t.Errorf("%d: error %v, want %q", code, r.Err, want)
		}
	}
}

// The end of the caller's context stops the retries at once.
func TestWebhookStopsWithContext(t *testing.T) {
	hook := notifytest.StartHook(t, func(int) int { return http.StatusBadGateway }, nil)
	ctx, cancel := context.WithCancel(context.Background())
	fake := clock.NewFake(time.Time{})
	d := New([]state.NotifyChannel{hookChannel(hook.URL)}, Options{Clock: fake}).Start(ctx, fenceOff)
	fake.BlockUntil(1) // waiting before the second attempt
	cancel()
	r := d.Wait()[0]
	if r.Attempts != 1 || r.Err == nil || !strings.Contains(r.Err.Error(), "stopped before attempt 2") {
		t.Errorf("result %+v, want a stop after one attempt", r)
	}
}
