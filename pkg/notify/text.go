package notify

import (
	"fmt"
	"strings"
	"time"
	"unicode"
)

// Summary is the notice in one line, the mail's subject after "[kvmctl] ": "fence off h2:
// confirmed off", "FAILED fence off h2: BMC unreachable". An HA notice leads with the HA state
// the host entered, in capitals, then the host: "SUSPECT h2: not answering", "FENCED h2: power
// confirmed off", "RECOVERED h2: 3 VMs recovered".
func (n Notice) Summary() string {
	var head string
	switch n.Kind {
	case KindHASuspect:
		head = join("SUSPECT", n.Host)
	case KindHADegraded:
		head = join("DEGRADED", n.Host)
	case KindHACannotTell:
		// UNKNOWN is the activity verdict HA never fences on.
		head = join("UNKNOWN", n.Host)
	case KindHAFencing:
		head = join("FENCING", n.Host)
	case KindHAFenced:
		head = join("FENCED", n.Host)
	case KindHAAvailable:
		head = join("AVAILABLE", n.Host)
	case KindHAGuard:
		head = join("GUARD", n.Host)
	case KindHARecovered:
		head = join("RECOVERED", n.Host)
	case KindVMUnplaced:
		head = "UNPLACED VM"
		if n.Host != "" {
			head += " of " + n.Host
		}
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
	case KindHASuspect:
		return fmt.Sprintf("The host's agent stopped answering `kvmctl ha watch`. Nothing is done to it yet: HA asks\n"+
			"its neighbours whether its heartbeat and VM disks on the shared storage still change, and\n"+
			"fences it only when they see no activity several checks in a row. A later notice says if HA\n"+
			"finds it alive but unmanageable (DEGRADED), cannot tell (UNKNOWN) or fences it (FENCING).\n"+
			"`kvmctl ha status` shows whether it answers again; `kvmctl ha show %[1]s --history` shows\n"+
			"each check.", host)
	case KindHADegraded:
		return fmt.Sprintf("The host is alive (its storage shows activity) but its agent, or the network between it\n"+
			"and kvmctl, failed: kvmctl cannot manage it (no maintenance, no migration). HA does not\n"+
			"fence it while its storage shows activity, and leaves its VMs where they are. Repair its\n"+
			"agent (kvmagent) or the link; the host is Available again once it answers. What HA saw is\n"+
			"in `kvmctl ha show %[1]s --history`.", host)
	case KindHACannotTell:
		return fmt.Sprintf("HA cannot tell whether the host is alive: its neighbours could not read its heartbeat and\n"+
			"VM disk files on the shared storage (the message says why). HA never fences on that, so if\n"+
			"the host is really down its VMs are NOT started elsewhere. Check the host (its console, its\n"+
			"power: `kvmctl fence %[1]s --action status`) and the shared storage. Once you know it is\n"+
			"off, `kvmctl ha confirm-down %[1]s` lets its VMs start on other hosts. The checks are in\n"+
			"`kvmctl ha show %[1]s --history`.", host)
	case KindHAFencing:
		return haFencingAdvice(n.Action, host)
	case KindHAFenced:
		return fmt.Sprintf("The host is fenced (its power confirmed off, or an operator confirmed it down) and in\n"+
			"Maintenance. HA starts its VMs on other hosts of its cluster; a later notice says RECOVERED\n"+
			"when all of them run, or UNPLACED VM for one that fits nowhere; follow it with\n"+
			"`kvmctl ha show %[1]s --history`. Find out why the host died and repair it, then\n"+
			"`kvmctl maintenance cancel %[1]s` returns it to service. The evidence is in\n"+
			"`kvmctl audit list --host %[1]s`.", host)
	case KindHAAvailable:
		return fmt.Sprintf("The host answers again: HA abandoned the fence it was deciding or waiting for, and takes no\n"+
			"power action. It was unreachable for a while; `kvmctl ha show %[1]s --history` shows what HA\n"+
			"saw. If it keeps happening, look at the host's network and agent.", host)
	case KindHAGuard:
		return fmt.Sprintf("A guard stopped HA from fencing the host; the result names it, the message says why:\n"+
			"startup-grace (`ha watch` started too recently to judge), storm (too many hosts down at once:\n"+
			"look at the network and storage rather than the hosts), quiet-time (it was fenced recently),\n"+
			"held (a hold on the host, such as a rolling run rebooting it). The host is NOT fenced and its\n"+
			"VMs are NOT started elsewhere; HA tries again when the guard allows. Once you know it is off,\n"+
			"`kvmctl ha confirm-down %[1]s` lets its VMs start on other hosts. `kvmctl ha status` shows the\n"+
			"fleet, `kvmctl audit list --host %[1]s` the refusal.", host)
	case KindHARecovered:
		return fmt.Sprintf("Every VM the host ran now runs on another host of its cluster (the message says where).\n"+
			"The host stays in Maintenance: find out why it died and repair it, then\n"+
			"`kvmctl maintenance cancel %[1]s` returns it to service. The history is in\n"+
			"`kvmctl ha show %[1]s --history`, the fence in `kvmctl audit list --host %[1]s`.", host)
	case KindVMUnplaced:
		return fmt.Sprintf("A VM of the fenced host is not running anywhere (the result names it). If it fits on no\n"+
			"host (tags, affinity, capacity), HA starts it as soon as one has room: free some or add a\n"+
			"host. If kvmctl keeps no definition of it, HA cannot start it: start it by hand, then\n"+
			"`kvmctl ha clear %[1]s`. `kvmctl ha show %[1]s --history` shows each VM's recovery.", host)
	}
	return ""
}

// haFencingAdvice depends on the HA action: off and reboot power the host off through its BMC,
// none and blink wait for an operator's confirm-down.
func haFencingAdvice(action, host string) string {
	var what string
	switch action {
	case "off":
		what = "kvmctl is powering it off through its BMC; its VMs start on other hosts only once\n" +
			"the power is confirmed off. A later notice says FENCED, or FAILED fence if the BMC did\n" +
			"not confirm."
	case "reboot":
		what = "kvmctl is power-cycling it through its BMC (off, confirmed off, then on); its VMs start\n" +
			"on other hosts only once the power is confirmed off. A later notice says FENCED, or\n" +
			"FAILED fence if the BMC did not confirm."
	case "none":
		what = fmt.Sprintf("Its HA action is none: kvmctl does not power it off. Make sure it is off (power it off\n"+
			"by hand if it is not), then run `kvmctl ha confirm-down %[1]s`: only then do its VMs start\n"+
			"on other hosts.", host)
	case "blink":
		what = fmt.Sprintf("Its HA action is blink: kvmctl does not power it off, it blinks its chassis light to\n"+
			"help find it. Make sure it is off (power it off by hand if it is not), then run\n"+
			"`kvmctl ha confirm-down %[1]s`: only then do its VMs start on other hosts.", host)
	default:
		what = fmt.Sprintf("With HA action off or reboot, kvmctl powers it off through its BMC and a later notice\n"+
			"says whether that was confirmed; with none or blink, make sure it is off, then run\n"+
			"`kvmctl ha confirm-down %[1]s`.", host)
	}
	return "HA found the host dead: no answer, and no activity on its storage several checks in a\n" +
		"row (the message says since when).\n" + what + "\n" +
		fmt.Sprintf("The evidence is in `kvmctl ha show %[1]s --history` and `kvmctl audit list --host %[1]s`.", host)
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
