package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosnmp/gosnmp"

	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/lab"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/notify/notifytest"
)

// fenceReceivers are the three real listeners of a fence's notices: a mail server, an SNMP
// trap receiver and a webhook that checks each request's signature. Each keeps the kinds it got,
// in order.
type fenceReceivers struct {
	mail  *notifytest.MailServer
	traps *notifytest.TrapReceiver
	hook  *notifytest.Hook

	mu        sync.Mutex
	hookKinds []string
	trapKinds []string
	badSig    []string
}

const fenceHookSecret = "e2e-hook-secret-0123456789abcdef"

func startFenceReceivers(t *testing.T, m *lab.Manifest) *fenceReceivers {
	t.Helper()
	r := &fenceReceivers{}
	r.mail = notifytest.StartMailServer(t, notifytest.MailOptions{})
	r.traps = notifytest.StartTrapReceiver(t, func(p *gosnmp.SnmpPacket) {
		// The trap's kind is the kvmctlNoticeKind object, a string among its variables.
		for _, v := range p.Variables {
			if b, ok := v.Value.([]byte); ok && strings.HasPrefix(string(b), "fence.") {
				r.mu.Lock()
				r.trapKinds = append(r.trapKinds, string(b))
				r.mu.Unlock()
			}
		}
	})
	r.hook = notifytest.StartHook(t, nil, func(req notifytest.HookRequest) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if err := notify.Verify(fenceHookSecret, req.Header.Get(notify.SignatureHeader), req.Body, time.Now(), time.Minute); err != nil {
			r.badSig = append(r.badSig, err.Error())
			return
		}
		var p notify.Payload
		if err := json.Unmarshal(req.Body, &p); err != nil {
			r.badSig = append(r.badSig, "body: "+err.Error())
			return
		}
		r.hookKinds = append(r.hookKinds, string(p.Kind))
	})
	secret := filepath.Join(t.TempDir(), "hook.secret")
	if err := os.WriteFile(secret, []byte(fenceHookSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e2eKvmctl(t, m, 0, "notify", "add", "email", "--smtp", r.mail.Addr, "--from", "kvmctl@lab", "--to", "oncall@lab")
	e2eKvmctl(t, m, 0, "notify", "add", "snmp", "--target", r.traps.Addr, "--community", "public")
	e2eKvmctl(t, m, 0, "notify", "add", "webhook", "--url", r.hook.URL, "--secret-file", secret)
	return r
}

// received waits until every listener has got n notices and returns the kinds each got:
// mail subjects are read for the kind's words.
func (r *fenceReceivers) received(t *testing.T, n int) (hook, traps, mails []string) {
	t.Helper()
	deadline := time.Now().Add(labDeadline)
	for {
		r.mu.Lock()
		hook, traps = append([]string{}, r.hookKinds...), append([]string{}, r.trapKinds...)
		bad := append([]string{}, r.badSig...)
		r.mu.Unlock()
		mails = nil
		for _, m := range r.mail.Mails() {
			mails = append(mails, mailSubject(m.Data))
		}
		if len(bad) > 0 {
			t.Fatalf("the webhook got requests that do not verify: %v", bad)
		}
		if len(hook) >= n && len(traps) >= n && len(mails) >= n {
			return hook, traps, mails
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: webhook %v, traps %v, mails %v; want %d of each", labDeadline, hook, traps, mails, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func mailSubject(data []byte) string {
	for _, line := range strings.Split(string(data), "\n") {
		if s, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), "Subject: "); ok {
			return s
		}
	}
	return ""
}

// fenceAudit reads the audit of host through `kvmctl --json audit list --host`.
func fenceAudit(t *testing.T, m *lab.Manifest, host string) []events.Event {
	t.Helper()
	out, _ := e2eKvmctl(t, m, 0, "--json", "audit", "list", "--host", host)
	var evs []events.Event
	if err := json.Unmarshal([]byte(out), &evs); err != nil {
		t.Fatalf("audit list --json: %v\n%s", err, out)
	}
	return evs
}

func auditTypes(evs []events.Event) string {
	var s []string
	for _, e := range evs {
		s = append(s, string(e.Type))
	}
	return strings.Join(s, " ")
}

// Issue 12's fencing end to end on a lab of four hosts in one cluster, each a machine with its
// BMC, with kvmctl's notifications going to a real mail server, trap receiver and webhook:
//   - fence h2 off: its machine goes off (agent gone, nothing written), the BMC log shows the
//     off, the audit has the intent with who and why and the result, every channel is told;
//   - fence h3 with its BMC down: a failure, not fenced, h3 runs on; fence.failed is sent;
//   - fence h4 off through Debian's ipmitool (the ipmitool driver): the third power-down;
//   - fence h1 off: the fourth inside the window, refused before its BMC hears anything, and
//     fence.cap_reached is sent;
//   - a kvmctl killed while it waits on h1's BMC: the next audit list reconciles its intent.
func TestFenceE2E(t *testing.T) {
	t.Parallel()
	labNeedIPMITool(t)
	m := e2eLab(t, 4, 1, 1)
	r := startFenceReceivers(t, m)

	// h2: off, confirmed, audited, notified.
	h2 := e2eLabHost(t, m, "h2")
	out, _ := e2eKvmctl(t, m, 0, "fence", "h2", "--action", "off", "--yes", "--reason", "e2e: h2 hangs")
	if !strings.Contains(out, "h2: power confirmed off (status, off, status") || !strings.Contains(out, "kvmctl audit list --host h2") {
		t.Errorf("fence h2 printed %q", out)
	}
	labPower(t, h2, "off", "after kvmctl fenced it")
	labPortRefuses(t, h2.AgentAddress)
	labQuiet(t, "h2's heartbeat and VM disk after its fence", labHostFiles(m, h2)...)
	if log := labBMCLog(t, h2); len(log) != 1 || log[0].Control != lab.ControlOff || log[0].PowerAfter != lab.PowerOff {
		t.Errorf("h2's BMC log: %+v, want one off", log)
	}
	evs := fenceAudit(t, m, "h2")
	if auditTypes(evs) != "fence.intent fence.result" || evs[0].Reason != "e2e: h2 hangs" || evs[0].Who == "" ||
		evs[0].AuditID != evs[1].AuditID || !evs[1].Fenced || evs[1].PowerBefore != "on" || evs[1].PowerAfter != "off" {
		t.Errorf("h2's audit: %+v", evs)
	}
	hook, traps, mails := r.received(t, 1)
	if hook[0] != "fence.action" || traps[0] != "fence.action" || !strings.Contains(mails[0], "fence off h2: power confirmed off") {
		t.Errorf("after h2's fence: webhook %v, traps %v, mails %v", hook, traps, mails)
	}

	// h3: its BMC does not answer: a failure, never "fenced"; the host runs on.
	h3 := e2eLabHost(t, m, "h3")
	labRun(t, m, 0, "bmc-down", "h3")
	_, errOut := e2eKvmctl(t, m, 1, "fence", "h3", "--action", "off", "--yes", "--reason", "e2e: h3's BMC is down")
	if !strings.Contains(errOut, "off h3: NOT fenced, treat h3 as running: ") || !strings.Contains(errOut, "no answer") {
		t.Errorf("fence h3 with its BMC down said %q", errOut)
	}
	evs = fenceAudit(t, m, "h3")
	if auditTypes(evs) != "fence.intent fence.result" || evs[1].Fenced || evs[1].Message == "" {
		t.Errorf("h3's audit: %+v", evs)
	}
	labAdvancing(t, "h3's heartbeat and VM disk after a failed fence", labHostFiles(m, h3)...)
	hook, traps, mails = r.received(t, 2)
	if hook[1] != "fence.failed" || traps[1] != "fence.failed" || !strings.Contains(mails[1], "FAILED fence off h3") {
		t.Errorf("after h3's failed fence: webhook %v, traps %v, mails %v", hook, traps, mails)
	}
	labRun(t, m, 0, "bmc-up", "h3")

	// h4: through Debian's ipmitool; the password reaches it by its environment.
	h4 := e2eLabHost(t, m, "h4")
	e2eKvmctl(t, m, 0, "bmc", "set", "--host", "h4", "--driver", "ipmitool")
	out, _ = e2eKvmctl(t, m, 0, "fence", "h4", "--action", "off", "--yes", "--reason", "e2e: through ipmitool")
	if !strings.Contains(out, "h4: power confirmed off") {
		t.Errorf("fence h4 through ipmitool printed %q", out)
	}
	labPower(t, h4, "off", "after kvmctl fenced it through ipmitool")

	// h1: the fourth power-down inside the hour (h3's failed attempt counts: it may have
	// acted): refused, nothing sent to its BMC, audited, notified.
	h1 := e2eLabHost(t, m, "h1")
	_, errOut = e2eKvmctl(t, m, 2, "fence", "h1", "--action", "off", "--yes", "--reason", "e2e: one too many")
	if !strings.Contains(errOut, "3 hosts powered down in cluster") || !strings.Contains(errOut, "nothing was sent") {
		t.Errorf("the fourth fence said %q", errOut)
	}
	if log, err := lab.ReadBMCLog(h1); err != nil || len(log) != 0 {
		t.Errorf("h1's BMC log after a refused fence: %+v, %v", log, err)
	}
	labPower(t, h1, "on", "after its fence was refused")
	if evs := fenceAudit(t, m, "h1"); auditTypes(evs) != "fence.refused" {
		t.Errorf("h1's audit: %+v", evs)
	}
	hook, traps, mails = r.received(t, 4)
	if hook[3] != "fence.cap_reached" || traps[3] != "fence.cap_reached" || !strings.Contains(mails[3], "h1") {
		t.Errorf("after the refused fence: webhook %v, traps %v, mails %v", hook, traps, mails)
	}
	// The status action is not a power-down: it is let through with the cap reached.
	out, _ = e2eKvmctl(t, m, 0, "fence", "h1", "--action", "status")
	if !strings.Contains(out, "h1: power on") {
		t.Errorf("fence h1 --action status printed %q", out)
	}
	// A kvmctl killed between its intent and the BMC's answer (h1's BMC does not answer, so it
	// waits): the next audit list finds the intent orphaned, asks the BMC, and records what it
	// read; the host, never powered off, is on.
	e2eKvmctl(t, m, 0, "config", "set", "kvm.ha.fence.max.count", "10")
	labRun(t, m, 0, "bmc-down", "h1")
	kvmctlPath, err := exec.LookPath("kvmctl")
	if err != nil {
		t.Fatal(err)
	}
	bg := exec.Command(kvmctlPath, "--state", m.StatePath(), "fence", "h1", "--action", "off", "--yes", "--reason", "e2e: killed mid-fence")
	if err := bg.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bg.Process.Kill(); _ = bg.Wait() })
	for deadline := time.Now().Add(labDeadline); ; time.Sleep(50 * time.Millisecond) {
		if evs := fenceAudit(t, m, "h1"); auditTypes(evs) == "fence.refused fence.intent" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no intent of the background fence in h1's audit: %+v", evs)
		}
	}
	_ = bg.Process.Kill()
	_ = bg.Wait()
	labRun(t, m, 0, "bmc-up", "h1")
	evs = fenceAudit(t, m, "h1")
	if auditTypes(evs) != "fence.refused fence.intent fence.reconciled" || evs[2].AuditID != evs[1].AuditID || evs[2].PowerAfter != "on" {
		t.Errorf("h1's audit after its kvmctl was killed mid-fence: %+v", evs)
	}
	labPower(t, h1, "on", "after a fence killed before the BMC answered")
	// A second audit list adds nothing: the intent is settled.
	if evs := fenceAudit(t, m, "h1"); len(evs) != 3 {
		t.Errorf("h1's audit grew on a second read: %+v", evs)
	}

	// The whole audit, as a person reads it: one line per record.
	out, _ = e2eKvmctl(t, m, 0, "audit", "list")
	if n := strings.Count(out, "\n"); n != 9 {
		t.Errorf("audit list has %d lines, want 9 records:\n%s", n, out)
	}
}
