package cli

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/notify/notifytest"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// The fence path's notices reach the channels of the state file in notify's words: a power
// action confirmed, a failed one (fence.failed), the rate
// cap's refusal; a failing channel comes back as the error the fence path audits.
func TestFenceNotifier(t *testing.T) {
	var got []notify.Payload
	hook := notifytest.StartHook(t, nil, func(r notifytest.HookRequest) {
		var p notify.Payload
		if err := json.Unmarshal(r.Body, &p); err != nil {
			t.Errorf("body %s: %v", r.Body, err)
		}
		got = append(got, p)
	})
	deny := notifytest.StartHook(t, func(int) int { return http.StatusForbidden }, nil)
	ios, _, _, _ := iostreams.Test()
	f := cmdutil.New(ios)
	f.StateFlag = filepath.Join(t.TempDir(), "state.db")
	st := state.New(f.StateFlag)
	if _, err := st.Create(); err != nil {
		t.Fatal(err)
	}
	addHook := func(name, url string) {
		t.Helper()
		err := st.Update(func(tx state.Tx) error {
			_, err := notify.AddChannel(tx, state.NotifyChannel{Name: name, Type: state.NotifyWebhook, URL: url})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	addHook("hook", hook.URL)

	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n := fenceNotifier(f)
	for _, fn := range []fence.Notice{
		{Kind: events.FenceResult, Time: at, AuditID: "f1", Host: "h2", Cluster: "c1", Action: fence.ActionOff, Result: "power confirmed off"},
		{Kind: events.FenceResult, Time: at, AuditID: "f2", Host: "h2", Cluster: "c1", Action: fence.ActionOff, Result: "BMC unreachable", Failed: true},
		{Kind: events.FenceRefused, Time: at, AuditID: "f3", Host: "h3", Cluster: "c1", Action: fence.ActionOff, Result: "refused", CapReached: true,
			Message: "rate cap reached: 3 power-downs in cluster c1 within the last 1h0m0s"},
	} {
		if err := n.Notify(context.Background(), fn); err != nil {
			t.Fatal(err)
		}
	}
	want := []struct{ kind, summary, audit string }{
		{"fence.action", "fence off h2: power confirmed off", "f1"},
		{"fence.failed", "FAILED fence off h2: BMC unreachable", "f2"},
		{"fence.cap_reached", "fence cap reached, not fencing h3: refused", "f3"},
	}
	if len(got) != len(want) {
		t.Fatalf("the webhook got %d notices, want %d", len(got), len(want))
	}
	for i, w := range want {
		if string(got[i].Kind) != w.kind || got[i].Summary != w.summary || got[i].AuditID != w.audit || !got[i].Time.Equal(at) {
			t.Errorf("notice %d: %+v, want kind %s, summary %q, audit %s", i, got[i], w.kind, w.summary, w.audit)
		}
	}

	addHook("deny", deny.URL)
	err := n.Notify(context.Background(), fence.Notice{Kind: events.FenceResult, Host: "h2", Action: fence.ActionOff, Result: "power confirmed off"})
	if err == nil || !strings.Contains(err.Error(), "notification channel deny (webhook): POST "+deny.URL+": 403 Forbidden") {
		t.Errorf("Notify with a refusing channel: %v", err)
	}
	if len(got) != 4 {
		t.Errorf("the working channel got %d notices, want 4: one failing channel stopped it", len(got))
	}
}
