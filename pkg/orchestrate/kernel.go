package orchestrate

import (
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/state"
)

// Store is the state as engines see it: transactions, each on a freshly opened backend.
type Store = state.DB

// Waits are the engines' fixed waits, each named here with its default in DefaultWaits. The waits
// an operator sets (stage timeout, ping interval, wait for maintenance, agent restart) are
// settings; these are the ones below them.
type Waits struct {
	// AgentCall bounds one status call to an agent.
	AgentCall time.Duration
	// HooksCall bounds listing a host's hook scripts.
	HooksCall time.Duration
	// StageStart bounds POST /v1/stages (a launch through systemd-run can take a while).
	StageStart time.Duration
	// LongPollSlack is added to a stage long poll's own wait before the call gives up.
	LongPollSlack time.Duration
	// Poll is the pause between two looks while waiting for VMs to leave or an agent to return.
	Poll time.Duration
	// AwayFirst is the first pause when an agent does not answer during a stage; it doubles up to
	// the ping interval.
	AwayFirst time.Duration
	// StageGrace is how long past a stage's timeout kvmctl still waits for its result; zero
	// means the ping interval plus StageGraceExtra.
	StageGrace      time.Duration
	StageGraceExtra time.Duration
	// Cleanup bounds removing a VM's copy from a target after a failed lab transfer.
	Cleanup time.Duration
	// FinishAttempts, FinishRetryFirst and FinishRetryMax retry a run's last record.
	FinishAttempts   int
	FinishRetryFirst time.Duration
	FinishRetryMax   time.Duration
	// PreflightUnreachable is how many failed calls make an untouched host's PreFlight fail.
	PreflightUnreachable int
	// PreflightParallel bounds how many hosts run PreFlight at the same time.
	PreflightParallel int
}

// DefaultWaits are the engines' waits unless a caller (a test) sets others.
var DefaultWaits = Waits{
	AgentCall:            5 * time.Second,
	HooksCall:            30 * time.Second,
	StageStart:           30 * time.Second,
	LongPollSlack:        15 * time.Second,
	Poll:                 200 * time.Millisecond,
	AwayFirst:            200 * time.Millisecond,
	StageGraceExtra:      10 * time.Second,
	Cleanup:              30 * time.Second,
	FinishAttempts:       5,
	FinishRetryFirst:     200 * time.Millisecond,
	FinishRetryMax:       2 * time.Second,
	PreflightUnreachable: 3,
	PreflightParallel:    8,
}

// withDefaults fills every zero field from DefaultWaits.
func (w Waits) withDefaults() Waits {
	d := DefaultWaits
	pick := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	pick(&w.AgentCall, d.AgentCall)
	pick(&w.HooksCall, d.HooksCall)
	pick(&w.StageStart, d.StageStart)
	pick(&w.LongPollSlack, d.LongPollSlack)
	pick(&w.Poll, d.Poll)
	pick(&w.AwayFirst, d.AwayFirst)
	pick(&w.StageGraceExtra, d.StageGraceExtra)
	pick(&w.Cleanup, d.Cleanup)
	pick(&w.FinishRetryFirst, d.FinishRetryFirst)
	pick(&w.FinishRetryMax, d.FinishRetryMax)
	if w.FinishAttempts <= 0 {
		w.FinishAttempts = d.FinishAttempts
	}
	if w.PreflightUnreachable <= 0 {
		w.PreflightUnreachable = d.PreflightUnreachable
	}
	if w.PreflightParallel <= 0 {
		w.PreflightParallel = d.PreflightParallel
	}
	return w
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
