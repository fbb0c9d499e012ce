package notify

import (
	"strings"
	"testing"
)

// haKinds are the HA monitor's kinds, in the order of their traps.
var haKinds = []Kind{KindHASuspect, KindHADegraded, KindHACannotTell, KindHAFencing, KindHAFenced,
	KindHAAvailable, KindHAGuard, KindHARecovered, KindVMUnplaced}

// An HA notice's summary leads with the state the host entered, then the host and the result
// pkg/ha gives; without a host or a result it still says which kind it is.
func TestHASummaries(t *testing.T) {
	for _, c := range []struct {
		n    Notice
		want string
	}{
		{Notice{Kind: KindHASuspect, Host: "h2", Result: "not answering"}, "SUSPECT h2: not answering"},
		{Notice{Kind: KindHADegraded, Host: "h2", Result: "alive but its agent does not answer"},
			"DEGRADED h2: alive but its agent does not answer"},
		{Notice{Kind: KindHADegraded, Host: "h2", Result: "alive: fence abandoned"}, "DEGRADED h2: alive: fence abandoned"},
		{Notice{Kind: KindHACannotTell, Host: "h2", Result: "cannot tell whether it is alive"},
			"UNKNOWN h2: cannot tell whether it is alive"},
		{Notice{Kind: KindHAFencing, Host: "h2", Action: "off", Result: "off through the BMC"}, "FENCING h2: off through the BMC"},
		{Notice{Kind: KindHAFencing, Host: "h2", Action: "none", Result: "waiting for confirm-down"},
			"FENCING h2: waiting for confirm-down"},
		{Notice{Kind: KindHAFenced, Host: "h2", Action: "off", Result: "power confirmed off"}, "FENCED h2: power confirmed off"},
		{Notice{Kind: KindHAFenced, Host: "h2", Action: "none", Result: "confirmed down by alice"},
			"FENCED h2: confirmed down by alice"},
		{Notice{Kind: KindHAAvailable, Host: "h2", Result: "answers again, not fenced"}, "AVAILABLE h2: answers again, not fenced"},
		{Notice{Kind: KindHAGuard, Host: "h2", Result: "not fenced: storm"}, "GUARD h2: not fenced: storm"},
		{Notice{Kind: KindHARecovered, Host: "h2", Result: "3 VMs recovered"}, "RECOVERED h2: 3 VMs recovered"},
		{Notice{Kind: KindVMUnplaced, Host: "h2", Result: "web1 fits on no host"}, "UNPLACED VM of h2: web1 fits on no host"},
		{Notice{Kind: KindVMUnplaced}, "UNPLACED VM"},
		{Notice{Kind: KindHASuspect}, "SUSPECT"},
		{Notice{Kind: KindHAGuard, Host: "h2\nBcc: x", Result: "not fenced:\theld"}, "GUARD h2 Bcc: x: not fenced: held"},
		// HA's own fence.failed and fence.cap_reached keep the fence's heads.
		{Notice{Kind: KindFenceFailed, Host: "h2", Action: "off", Result: "BMC unreachable"}, "FAILED fence off h2: BMC unreachable"},
	} {
		if got := c.n.Summary(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.n, got, c.want)
		}
	}
	heads := map[string]Kind{}
	for _, k := range haKinds {
		head := Notice{Kind: k, Host: "h2"}.Summary()
		if strings.Contains(head, string(k)) {
			t.Errorf("%s: summary %q falls back to the kind's name", k, head)
		}
		if other, dup := heads[head]; dup {
			t.Errorf("%s and %s share the summary %q", k, other, head)
		}
		heads[head] = k
	}
}

// Each HA kind tells the reader what to do, naming the host in the commands to run; the fence's
// advice depends on whether kvmctl powers the host off or waits for confirm-down.
func TestHAAdvice(t *testing.T) {
	must := map[Kind][]string{
		KindHASuspect:    {"`kvmctl ha show h2 --history`", "`kvmctl ha status`"},
		KindHADegraded:   {"does not fence it", "`kvmctl ha show h2 --history`"},
		KindHACannotTell: {"NOT started elsewhere", "`kvmctl ha confirm-down h2`", "`kvmctl ha show h2 --history`"},
		KindHAFencing:    {"`kvmctl ha confirm-down h2`", "`kvmctl ha show h2 --history`", "`kvmctl audit list --host h2`"},
		KindHAFenced:     {"`kvmctl maintenance cancel h2`", "`kvmctl audit list --host h2`", "`kvmctl ha show h2 --history`"},
		KindHAAvailable:  {"`kvmctl ha show h2 --history`"},
		KindHAGuard:      {"NOT fenced", "storm", "`kvmctl ha confirm-down h2`", "`kvmctl ha status`", "`kvmctl audit list --host h2`"},
		KindHARecovered:  {"`kvmctl maintenance cancel h2`", "`kvmctl ha show h2 --history`"},
		KindVMUnplaced:   {"`kvmctl ha clear h2`", "`kvmctl ha show h2 --history`"},
	}
	for _, k := range haKinds {
		a := advice(Notice{Kind: k, Host: "h2"})
		if a == "" {
			t.Errorf("%s has no advice", k)
			continue
		}
		for _, s := range must[k] {
			if !strings.Contains(strings.ReplaceAll(a, "\n", " "), s) {
				t.Errorf("%s advice does not say %q:\n%s", k, s, a)
			}
		}
		if strings.Contains(a, "HOST") {
			t.Errorf("%s advice has HOST where the host's name should be:\n%s", k, a)
		}
		if strings.Contains(a, "%!") {
			t.Errorf("%s advice is badly formatted:\n%s", k, a)
		}
		if !strings.Contains(advice(Notice{Kind: k}), "HOST") {
			t.Errorf("%s advice without a host does not say HOST", k)
		}
	}
	for _, c := range []struct {
		action       string
		want, unsaid []string
	}{
		{"off", []string{"powering it off through its BMC", "FENCED"}, []string{"confirm-down"}},
		{"reboot", []string{"power-cycling it", "FENCED"}, []string{"confirm-down"}},
		{"none", []string{"HA action is none", "`kvmctl ha confirm-down h2`"}, []string{"powering it off", "chassis light"}},
		{"blink", []string{"HA action is blink", "chassis light", "`kvmctl ha confirm-down h2`"}, []string{"powering it off"}},
		{"", []string{"off or reboot", "none or blink", "`kvmctl ha confirm-down h2`"}, nil},
	} {
		a := strings.ReplaceAll(advice(Notice{Kind: KindHAFencing, Host: "h2", Action: c.action}), "\n", " ")
		for _, s := range c.want {
			if !strings.Contains(a, s) {
				t.Errorf("ha.fencing, action %q: advice does not say %q:\n%s", c.action, s, a)
			}
		}
		for _, s := range c.unsaid {
			if strings.Contains(a, s) {
				t.Errorf("ha.fencing, action %q: advice says %q:\n%s", c.action, s, a)
			}
		}
	}
}
