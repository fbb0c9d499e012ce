package notify

import (
	"fmt"
	"strings"
	"time"
	"unicode"
)

// Summary is the notice in one line, the mail's subject after "[kvmctl] ": "fence off h2:
// confirmed off", "FAILED fence off h2: BMC unreachable".
func (n Notice) Summary() string {
	var head string
	switch n.Kind {
	case KindFenceAction:
		head = join("fence", n.Action, n.Host)
	case KindFenceFailed:
		head = join("FAILED fence", n.Action, n.Host)
	case KindFenceCapReached:
		head = "fence cap reached"
		if n.Host != "" {
			head += ", not fencing " + n.Host
		}
	case KindTest:
		head = "test notice"
	default:
		head = join(string(n.Kind), n.Host)
	}
	if n.Result != "" {
		head += ": " + n.Result
	}
	return oneLine(head)
}

func join(words ...string) string {
	var out []string
	for _, w := range words {
		if w != "" {
			out = append(out, w)
		}
	}
	return strings.Join(out, " ")
}

// oneLine turns every control character (a newline in a result, say) into a space, so that a
// summary stays one line of a mail header or a chat message.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// advice says what the reader should do, by kind; "" for kinds without advice yet.
func advice(n Notice) string {
	host := n.Host
	if host == "" {
		host = "HOST"
	}
	switch n.Kind {
	case KindFenceAction:
		return fmt.Sprintf("kvmctl ran this action on the host's BMC; the result above is what the BMC confirmed.\n"+
			"A fenced host stays in Maintenance until an operator repairs it and runs\n"+
			"`kvmctl maintenance cancel %s`. The evidence is in `kvmctl audit list --host %s`.", host, host)
	case KindFenceFailed:
		return fmt.Sprintf("The host is NOT fenced: its power is not confirmed off, so its VMs are not started\n"+
			"elsewhere (they may still be running there). Check its BMC and power\n"+
			"(`kvmctl fence %s --action status`). Once you know it is off, `kvmctl ha confirm-down %s`\n"+
			"lets its VMs start on other hosts. The evidence is in `kvmctl audit list --host %s`.", host, host, host)
	case KindFenceCapReached:
		return "kvmctl stopped fencing: the rate cap of power-downs is reached. Many hosts failing at once\n" +
			"is more often an outage (network, storage) than crashed hosts. No host is powered off\n" +
			"automatically until the cap allows it again. See `kvmctl audit list` for what was fenced;\n" +
			"fence by hand if you must (`kvmctl fence HOST --action off`)."
	case KindTest:
		return "If you read this, this channel works."
	}
	return ""
}

// mailBody is the plain text a person reads at 3 a.m.: what happened in one line, the facts, the
// message, what to do, who sent it. It holds nothing but the notice: no setting, no secret.
func mailBody(n Notice, sender, channel string) string {
	var b strings.Builder
	b.WriteString(n.Summary() + "\n\n")
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "  %-9s %s\n", k+":", oneLine(v))
		}
	}
	row("host", n.Host)
	row("cluster", n.Cluster)
	row("action", n.Action)
	row("result", n.Result)
	row("time", n.Time.UTC().Format(time.RFC3339))
	row("kind", string(n.Kind))
	row("audit", n.AuditID)
	row("notice", n.ID)
	if n.Message != "" {
		b.WriteString("\n" + strings.TrimSpace(n.Message) + "\n")
	}
	if a := advice(n); a != "" {
		b.WriteString("\nWhat to do:\n" + a + "\n")
	}
	fmt.Fprintf(&b, "\n-- \nSent by kvmctl on %s through notification channel %q.\n", orUnknown(sender), channel)
	return b.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown machine"
	}
	return s
}
