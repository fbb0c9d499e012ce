package notify

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/internal/testnet"
	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/notify/notifytest"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// One failing channel stops none of the others: a mail server that refuses connections, a
// channel whose CA file is gone and a webhook that fails do not keep the mail, the trap and the
// good webhook from arriving. Results come in the order of the channels, each naming its own.
func TestOneChannelFailingStopsNoOther(t *testing.T) {
	sink := notifytest.StartMailServer(t, notifytest.MailOptions{})
	traps := notifytest.StartTrapReceiver(t, nil)
	good := notifytest.StartHook(t, nil, nil)
	bad := notifytest.StartHook(t, func(int) int { return http.StatusForbidden }, nil)
	lostCA := hookChannel("https://hooks.example.net/kvmctl")
	lostCA.Name, lostCA.CAFile = "lost-ca", "/nonexistent/ca.crt"
	refusing := mailChannel(closedAddr(t))
	refusing.Name = "dead-mail"
	chans := []state.NotifyChannel{
		refusing,
		mailChannel(sink.Addr),
		lostCA,
		{Name: "traps", Type: state.NotifySNMP, Target: traps.Addr, Community: "public"},
		{Name: "bad-hook", Type: state.NotifyWebhook, URL: bad.URL},
		hookChannel(good.URL),
	}
	nf := New(chans, Options{})
	if got := strings.Join(nf.Channels(), " "); got != "dead-mail mail lost-ca traps bad-hook hook" {
		t.Errorf("Channels() = %s", got)
	}
	d := nf.Start(context.Background(), fenceOff)
	res := d.Wait()
	ok := map[string]bool{}
	for i, r := range res {
		if r.Channel != chans[i].Name || r.Type != chans[i].Type || r.Destination != Destination(chans[i]) {
			t.Errorf("result %d is %+v, want channel %s", i, r, chans[i].Name)
		}
		ok[r.Channel] = r.Err == nil
	}
	want := map[string]bool{"dead-mail": false, "mail": true, "lost-ca": false, "traps": true, "bad-hook": false, "hook": true}
	for name, w := range want {
		if ok[name] != w {
			t.Errorf("%s delivered: %v, want %v (%+v)", name, ok[name], w, res)
		}
	}
	if len(sink.Mails()) != 1 || len(good.Requests()) != 1 {
		t.Errorf("the working mail and webhook did not both arrive")
	}
	receiveTrap(t, traps.Traps)
	err := d.Err()
	for _, s := range []string{"notification channel dead-mail (email): smtp 127.0.0.1:", "connection refused",
		"notification channel lost-ca (webhook): read CA file: open /nonexistent/ca.crt",
		"notification channel bad-hook (webhook): POST " + bad.URL + ": 403 Forbidden"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("Err() = %v, want it to say %q", err, s)
		}
	}
	if err != nil && strings.Contains(err.Error(), "traps") {
		t.Errorf("Err() names a channel that delivered: %v", err)
	}
}

// Start returns at once, even while a channel hangs; the caller learns later, and a channel
// stops when the caller's context ends.
func TestStartDoesNotWait(t *testing.T) {
	hang := testnet.Silent(t)
	fake := clock.NewFake(time.Time{})
	nf := New([]state.NotifyChannel{hookChannel("http://" + hang + "/")}, Options{Clock: fake, Limits: Limits{WebhookAttempt: time.Hour}})
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	d := nf.Start(ctx, fenceOff)
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Errorf("Start took %s", took)
	}
	select {
	case <-d.Done():
		t.Fatal("done before the webhook answered")
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	select {
	case <-d.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the send outlived its context")
	}
	if r := d.Wait()[0]; r.Err == nil || r.Attempts != 1 {
		t.Errorf("result %+v, want one attempt cut short", r)
	}
}

// A Notifier without channels delivers nothing and says so at once; Start fills in the id and
// the time (the clock's) of a notice that has none.
func TestNoChannelsAndDefaults(t *testing.T) {
	nf := New(nil, Options{})
	if res := nf.Start(context.Background(), fenceOff).Wait(); len(res) != 0 {
		t.Errorf("results %v", res)
	}
	fake := clock.NewFake(time.Time{})
	var got Payload
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewDecoder(r.Body).Decode(&got)
	}))
	defer srv.Close()
	err := New([]state.NotifyChannel{hookChannel(srv.URL)}, Options{Clock: fake}).Notify(context.Background(), Notice{Kind: KindTest})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.ID) != 24 || !got.Time.Equal(fake.Now()) || got.Summary != "test notice" {
		t.Errorf("payload %+v, want an id, the clock's time and a summary", got)
	}
}

// Summaries say what happened in one line, for every kind.
func TestSummary(t *testing.T) {
	for _, c := range []struct {
		n    Notice
		want string
	}{
		{Notice{Kind: KindFenceAction, Action: "off", Host: "h2", Result: "confirmed off"}, "fence off h2: confirmed off"},
		{Notice{Kind: KindFenceAction, Action: "off", Host: "h2", Result: "already off"}, "fence off h2: already off"},
		{Notice{Kind: KindFenceFailed, Action: "reboot", Host: "h2", Result: "BMC unreachable"}, "FAILED fence reboot h2: BMC unreachable"},
		{Notice{Kind: KindFenceCapReached, Host: "h4", Result: "3 power-downs in the last hour in c1"},
			"fence cap reached, not fencing h4: 3 power-downs in the last hour in c1"},
		{Notice{Kind: KindTest}, "test notice"},
		// A kind this version does not know (a later one's) says its name.
		{Notice{Kind: "ha.later", Host: "h2", Result: "no answer\nfor 3s"}, "ha.later h2: no answer for 3s"},
	} {
		if got := c.n.Summary(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.n, got, c.want)
		}
	}
}

// Finished is a delivery that is over, for fakes: Done is closed, Wait and Err report at once.
func TestFinished(t *testing.T) {
	d := Finished(Result{Channel: "mail", Type: state.NotifyEmail, Err: errors.New("refused")}, Result{Channel: "hook", Type: state.NotifyWebhook})
	<-d.Done()
	if len(d.Wait()) != 2 || d.Err() == nil || d.Err().Error() != "notification channel mail (email): refused" {
		t.Errorf("Wait %v, Err %v", d.Wait(), d.Err())
	}
	if Finished().Err() != nil {
		t.Errorf("an empty delivery failed")
	}
}
