// Package notify tells people what kvmctl did to their fleet (seed 002: every fence action "will
// send email/SNMP trap notification"). A Notice goes to every channel stored in the state file:
// email (SMTP through net/smtp), SNMPv2c trap (gosnmp) and webhook (a JSON POST signed with
// HMAC-SHA256).
//
// Sending never blocks a fence: Start returns at once and sends to each channel in a goroutine of
// its own, each bounded by its own limits (Limits), so a dead mail server delays neither the
// webhook nor the caller. The caller learns later, from the Delivery, what each channel did;
// failures are the caller's to log and audit. Notify is Start followed by waiting, for callers
// that can afford the bounded wait (`kvmctl notify test`).
package notify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Kind names what a Notice is about; its values are stable strings (the webhook's "kind", the
// trap's kvmctlNoticeKind, the mail's X-Kvmctl-Kind header).
type Kind string

// Kinds of notices: the fence's, the test's, and the HA monitor's (`kvmctl ha watch`, which
// also sends fence.failed and fence.cap_reached with a Result and Message of its own). Each has a
// trap of its own in KVMCTL-MIB; a kind without one (a later version's, seen by an older
// receiver's MIB, or a new kind not yet given one) goes out as the generic kvmctlNotice trap.
const (
	// KindFenceAction: a fence action ran; Result says what the BMC confirmed.
	KindFenceAction Kind = "fence.action"
	// KindFenceFailed: a fence action did not confirm; the host is not fenced.
	KindFenceFailed Kind = "fence.failed"
	// KindFenceCapReached: the rate cap stopped a fence (seed 002: "stop and notify").
	KindFenceCapReached Kind = "fence.cap_reached"
	// KindTest: `kvmctl notify test` checks that a channel works.
	KindTest Kind = "notify.test"

	// KindHASuspect: a host stopped answering; HA now checks its storage for signs of life.
	KindHASuspect Kind = "ha.suspect"
	// KindHADegraded: the host is alive (its storage shows activity) but its agent or link
	// failed; HA never fences it while it is.
	KindHADegraded Kind = "ha.degraded"
	// KindHACannotTell: the neighbours could not read the host's files, so HA cannot tell
	// whether it is alive; it never fences on that.
	KindHACannotTell Kind = "ha.cannot_tell"
	// KindHAFencing: HA decided to fence the host (Action off or reboot), or waits for
	// `kvmctl ha confirm-down` (Action none or blink).
	KindHAFencing Kind = "ha.fencing"
	// KindHAFenced: the host's power was confirmed off, or an operator confirmed it down; it is
	// in Maintenance and its VMs are to start elsewhere.
	KindHAFenced Kind = "ha.fenced"
	// KindHAAvailable: a suspect host answers again; the fence is abandoned.
	KindHAAvailable Kind = "ha.available"
	// KindHAGuard: a guard (startup grace, storm, quiet time, held) stopped a fence; Result says
	// "not fenced: GUARD", Message why.
	KindHAGuard Kind = "ha.guard"
	// KindHARecovered: every VM of a fenced host runs on another host.
	KindHARecovered Kind = "ha.recovered"
	// KindVMUnplaced: a VM of a fenced host fits on no host, or has no kept definition to start
	// it from.
	KindVMUnplaced Kind = "vm.unplaced"
)

// Notice is one thing to tell. Every field but Kind is optional; Start fills ID and Time when
// they are empty. The webhook's JSON body is a Notice with its Summary and Sender.
type Notice struct {
	// ID identifies the notice: a receiver that sees it twice (a retried webhook) drops the copy.
	ID   string    `json:"id"`
	Kind Kind      `json:"kind"`
	Time time.Time `json:"time"`
	Host string    `json:"host,omitempty"`
	// Cluster is the host's cluster, or the cluster the notice is about.
	Cluster string `json:"cluster,omitempty"`
	// Action is the fence action (off, on, reboot, blink, ...) or the HA step.
	Action string `json:"action,omitempty"`
	// Result is what came of it, in a few words: "confirmed off", "BMC unreachable".
	Result string `json:"result,omitempty"`
	// Message says more, in sentences.
	Message string `json:"message,omitempty"`
	// AuditID is the audit record that holds the evidence (`kvmctl audit list`).
	AuditID string `json:"audit_id,omitempty"`
}

// Limits bound each channel's send. A zero field takes its default (DefaultLimits).
type Limits struct {
	// Email bounds one SMTP conversation, dial to QUIT.
	Email time.Duration
	// SNMP bounds sending one trap.
	SNMP time.Duration
	// WebhookAttempt bounds one POST, dial to response; WebhookAttempts is how many are made.
	WebhookAttempt  time.Duration
	WebhookAttempts int
	// WebhookBackoff and WebhookBackoffMax are the first and the longest wait between attempts
	// (pkg/backoff: doubled each time, with jitter), taken on the Notifier's clock.
	WebhookBackoff    time.Duration
	WebhookBackoffMax time.Duration
}

// DefaultLimits are the limits of every channel unless Options say otherwise: a webhook gives up
// after 3 attempts of at most 5 s with waits of about 1 and 2 s between them (at most 18 s), a
// mail after 15 s, a trap after 5 s. Notify therefore returns within 18 s whatever the channels do.
func DefaultLimits() Limits {
	return Limits{
		Email:             15 * time.Second,
		SNMP:              5 * time.Second,
		WebhookAttempt:    5 * time.Second,
		WebhookAttempts:   3,
		WebhookBackoff:    time.Second,
		WebhookBackoffMax: 4 * time.Second,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	pick := func(v, def time.Duration) time.Duration {
		if v > 0 {
			return v
		}
		return def
	}
	l.Email = pick(l.Email, d.Email)
	l.SNMP = pick(l.SNMP, d.SNMP)
	l.WebhookAttempt = pick(l.WebhookAttempt, d.WebhookAttempt)
	l.WebhookBackoff = pick(l.WebhookBackoff, d.WebhookBackoff)
	l.WebhookBackoffMax = pick(l.WebhookBackoffMax, d.WebhookBackoffMax)
	if l.WebhookAttempts <= 0 {
		l.WebhookAttempts = d.WebhookAttempts
	}
	return l
}

// Options configure a Notifier; the zero value is ready to use.
type Options struct {
	// Clock gives notices their time, traps their uptime, and webhook retries their waits
	// (nil: the real clock). Network deadlines are real time whatever the clock.
	Clock clock.Clock
	// Sender names the machine kvmctl runs on, in mails and webhook bodies ("": its host name).
	Sender string
	// Limits bound each channel's send.
	Limits Limits
}

// Notifier sends notices to a fixed set of channels. It is safe for concurrent use.
type Notifier struct {
	channels []*channel
	clock    clock.Clock
	sender   string
	started  time.Time
}

// channel is one destination, ready to send. A channel that could not be built (an unreadable
// CA file, say) keeps its error and fails every send with it: the other channels still send.
type channel struct {
	name, typ, dest string
	// send delivers n and reports how many attempts it made.
	send func(ctx context.Context, n Notice) (attempts int, err error)
}

// New returns a Notifier for chans (as stored by `kvmctl notify add`). It never fails: a channel
// that fails Check, or whose CA file cannot be read, fails each of its sends with that error.
func New(chans []state.NotifyChannel, opts Options) *Notifier {
	nf := &Notifier{clock: clock.OrReal(opts.Clock), sender: opts.Sender}
	if nf.sender == "" {
		nf.sender, _ = os.Hostname()
	}
	nf.started = nf.clock.Now()
	limits := opts.Limits.withDefaults()
	for _, c := range chans {
		nf.channels = append(nf.channels, nf.build(c, limits))
	}
	return nf
}

// Load returns a Notifier for every channel in the state file. Read the channels in a View and
// send after it, so that the state file is not held open while channels wait on the network.
func Load(tx state.Tx, opts Options) (*Notifier, error) {
	chans, err := state.NotifyChannels(tx)
	if err != nil {
		return nil, fmt.Errorf("read notification channels: %w", err)
	}
	return New(chans, opts), nil
}

func (nf *Notifier) build(c state.NotifyChannel, l Limits) *channel {
	ch := &channel{name: c.Name, typ: c.Type, dest: Destination(c)}
	fail := func(err error) *channel {
		ch.send = func(context.Context, Notice) (int, error) { return 0, err }
		return ch
	}
	if err := Check(c); err != nil {
		return fail(err)
	}
	var err error
	switch c.Type {
	case state.NotifyEmail:
		ch.send, err = nf.emailSender(c, l)
	case state.NotifySNMP:
		ch.send = nf.snmpSender(c, l)
	case state.NotifyWebhook:
		ch.send, err = nf.webhookSender(c, l)
	}
	if err != nil {
		return fail(err)
	}
	return ch
}

// Channels returns the names of the Notifier's channels, in the order results are reported.
func (nf *Notifier) Channels() []string {
	names := make([]string, len(nf.channels))
	for i, c := range nf.channels {
		names[i] = c.name
	}
	return names
}

// Result is what one channel did with a notice.
type Result struct {
	// Channel is the channel's name, Type its type, Destination where it sends.
	Channel     string
	Type        string
	Destination string
	// Attempts counts the tries (webhooks retry; the others try once).
	Attempts int
	// Err is why the notice did not get through; nil when it did (for a trap: when it was sent,
	// since SNMPv2c traps are not acknowledged).
	Err error
}

// Delivery is a notice on its way to every channel.
type Delivery struct {
	done    chan struct{}
	results []Result
}

// Finished returns a Delivery that has already finished with results: what a fake Notifier in
// an engine's tests returns from its Start.
func Finished(results ...Result) *Delivery {
	d := &Delivery{done: make(chan struct{}), results: results}
	close(d.done)
	return d
}

// Done is closed once every channel has finished.
func (d *Delivery) Done() <-chan struct{} { return d.done }

// Wait returns each channel's result, in the order of Channels, once every channel has finished.
// It waits at most as long as the slowest channel's limits, or until the context given to
// Start ends.
func (d *Delivery) Wait() []Result {
	<-d.done
	return d.results
}

// Err waits like Wait and returns the channels' failures joined, each naming its channel, or nil
// when every channel delivered.
func (d *Delivery) Err() error {
	var errs []error
	for _, r := range d.Wait() {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("notification channel %s (%s): %w", r.Channel, r.Type, r.Err))
		}
	}
	return errors.Join(errs...)
}

// Start sends n to every channel, each in its own goroutine, and returns at once. The sends end
// when they are done, when their limits pass, or when ctx ends: give a context that lives as long
// as the sends should (a command's, not a single step's). An empty ID or zero Time is filled in.
func (nf *Notifier) Start(ctx context.Context, n Notice) *Delivery {
	if n.ID == "" {
		n.ID = newID()
	}
	if n.Time.IsZero() {
		n.Time = nf.clock.Now()
	}
	n.Time = n.Time.UTC()
	d := &Delivery{done: make(chan struct{}), results: make([]Result, len(nf.channels))}
	left := make(chan struct{}, len(nf.channels))
	for i, c := range nf.channels {
		go func() {
			defer func() { left <- struct{}{} }()
			attempts, err := c.send(ctx, n)
			d.results[i] = Result{Channel: c.name, Type: c.typ, Destination: c.dest, Attempts: attempts, Err: err}
		}()
	}
	go func() {
		for range nf.channels {
			<-left
		}
		close(d.done)
	}()
	return d
}

// Notify sends n to every channel and waits until each has finished (at most the slowest
// channel's limits); it returns the failures joined, each naming its channel. A caller that must
// not wait uses Start.
func (nf *Notifier) Notify(ctx context.Context, n Notice) error {
	return nf.Start(ctx, n).Err()
}

// newID returns 96 random bits in hex: unique enough to deduplicate retried deliveries.
func newID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Destination says where channel c sends, for people: recipients and server, trap receiver, URL.
func Destination(c state.NotifyChannel) string {
	switch c.Type {
	case state.NotifyEmail:
		return strings.Join(c.To, ", ") + " via " + c.SMTP
	case state.NotifySNMP:
		return c.Target
	case state.NotifyWebhook:
		return c.URL
	}
	return ""
}
