package fence

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/journal"
	"github.com/kvmctl/kvmctl/pkg/settings"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// AuditStream is the journal stream of every power action and decision: append only, never
// pruned (it never ends), read by `kvmctl audit list`.
const AuditStream = "audit"

// Notice is what the notifier is told of a power action, a failure or a cap reached.
type Notice struct {
	Kind    events.Type
	Time    time.Time
	AuditID string
	Host    string
	Cluster string
	Action  Action
	Result  string
	Message string
	// Failed marks a result whose action failed (Result says why).
	Failed bool
	// CapReached marks a refusal by the rate cap.
	CapReached bool
}

// Notifier sends notices (email, SNMP trap, webhook); it returns what failed, per channel.
type Notifier interface {
	Notify(ctx context.Context, n Notice) error
}

// Opener returns a driver for a host's effective BMC settings.
type Opener func(b state.BMC, host string) (Driver, error)

// Service is the one path every power action takes, manual or from HA: it refuses a host held
// by a run (unless forced) or a power-down past the rate cap, writes the intent with who, why
// and the evidence before the BMC is called and the result after, notifies, and reconciles the
// intents a killed kvmctl left without a result.
type Service struct {
	Store  state.DB
	Clock  clock.Clock
	Holds  holds.Table
	Open   Opener
	Notify Notifier
	// Events receives the audit records once written (a progress view).
	Events events.Sink
	// NotifyWait bounds how long Do waits for the notifications after the action (default 20 s, past a webhook's retries):
	// sending never delays the action itself.
	NotifyWait time.Duration
	// Who names the asker in the audit ("" = this process's user, machine and pid).
	Who string
}

// Request is one power action.
type Request struct {
	Host   string
	Action Action
	Reason string
	// Evidence is what a decision rested on (HA's activity checks); empty for an operator.
	Evidence string
	// Force acts on a host held by a rolling run or a maintenance action.
	Force bool
	// QuietFailure leaves a failed action's notice to the caller (HA notifies once per streak
	// of failures, not once per retry); the failure is audited all the same.
	QuietFailure bool
}

// Result is what the action did.
type Result struct {
	AuditID string  `json:"audit_id,omitempty"`
	Host    string  `json:"host"`
	Cluster string  `json:"cluster"`
	Outcome Outcome `json:"outcome"`
	Error   string  `json:"error,omitempty"`
	// NotifyErrors lists the notifications that failed (they are audited too).
	NotifyErrors []string `json:"notify_errors,omitempty"`
}

// ErrCapReached refuses a power-down past kvm.ha.fence.max.count in kvm.ha.fence.window.
var ErrCapReached = errors.New("rate cap reached")

func (s *Service) clock() clock.Clock { return clock.OrReal(s.Clock) }

func (s *Service) who() string {
	if s.Who != "" {
		return s.Who
	}
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	o := s.Holds.OrLocal().Self
	return fmt.Sprintf("%s@%s pid %d", name, o.Machine, o.PID)
}

func newAuditID(now time.Time) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "f" + now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// target is what Do reads of a host before it acts.
type target struct {
	host    state.Host
	bmc     state.BMC
	timing  Timing
	cap     int
	window  time.Duration
	running int
}

func (s *Service) load(tx state.Tx, name string) (target, error) {
	var t target
	h, err := state.GetHost(tx, name)
	if state.IsNotFound(err) {
		return t, errs.Refusedf("unknown host %s: `kvmctl host list` shows them", name)
	}
	if err != nil {
		return t, err
	}
	t.host = h
	cb, err := state.GetBMC(tx, "cluster", h.Cluster)
	if err != nil {
		return t, err
	}
	hb, err := state.GetBMC(tx, "host", h.Name)
	if err != nil {
		return t, err
	}
	t.bmc, _ = Effective(cb, hb)
	secs, err := settings.GetInt(tx, settings.FenceTimeout)
	if err != nil {
		return t, err
	}
	t.timing = Timing{Confirm: time.Duration(secs) * time.Second, Poll: time.Second}
	n, err := settings.GetInt(tx, settings.FenceMaxCount)
	if err != nil {
		return t, err
	}
	w, err := settings.GetInt(tx, settings.FenceWindow)
	if err != nil {
		return t, err
	}
	t.cap, t.window = int(n), time.Duration(w)*time.Second
	return t, nil
}

// powerDowns returns, for every host with a power-down intent in the audit since from, the time
// of its latest, in cluster and fleet-wide. A host counts once however often it was tried: the
// cap limits how many hosts are powered down (a storm), not the retries of one fence.
func powerDowns(tx state.Tx, cluster string, from time.Time) (inCluster, fleet []time.Time, err error) {
	recs, err := journal.Read(tx, AuditStream, 0)
	if err != nil {
		return nil, nil, err
	}
	latest := map[string]events.Event{}
	for _, r := range recs {
		e := r.Event
		if e.Type != events.FenceIntent || e.Time.Before(from) || !Action(e.Action).PowersDown() {
			continue
		}
		latest[e.Host] = e
	}
	for _, e := range latest {
		fleet = append(fleet, e.Time)
		if e.Cluster == cluster {
			inCluster = append(inCluster, e.Time)
		}
	}
	slices.SortFunc(fleet, time.Time.Compare)
	slices.SortFunc(inCluster, time.Time.Compare)
	return inCluster, fleet, nil
}

// CapCheck returns the rate cap's refusal (wrapping ErrCapReached) when one more power-down of a
// host of cluster is not allowed at now, nil when it is: HA asks before it decides to fence, so
// that a cap in force costs no audit record per activity check.
func CapCheck(tx state.Tx, cluster string, now time.Time) (refusal, err error) {
	n, err := settings.GetInt(tx, settings.FenceMaxCount)
	if err != nil {
		return nil, err
	}
	w, err := settings.GetInt(tx, settings.FenceWindow)
	if err != nil {
		return nil, err
	}
	return capReached(tx, cluster, int(n), time.Duration(w)*time.Second, now)
}

// capReached is the cap's refusal, or nil.
func capReached(tx state.Tx, cluster string, limit int, window time.Duration, now time.Time) (refusal, err error) {
	inCluster, fleet, err := powerDowns(tx, cluster, now.Add(-window))
	if err != nil {
		return nil, err
	}
	if len(inCluster) < limit && len(fleet) < limit {
		return nil, nil
	}
	scope, counted := "cluster "+cluster, inCluster
	if len(fleet) >= limit && len(inCluster) < limit {
		scope, counted = "the fleet", fleet
	}
	next := nextAllowed(counted, limit, window)
	return fmt.Errorf("%w: %d hosts powered down in %s within the last %s (kvm.ha.fence.max.count %d per kvm.ha.fence.window): "+
		"nothing was sent; the next is allowed at %s (in %s); if this is not a storm, raise the cap with `kvmctl config set kvm.ha.fence.max.count N`",
		ErrCapReached, len(counted), scope, window, limit, next.UTC().Format(time.RFC3339), next.Sub(now).Round(time.Second)), nil
}

// nextAllowed is when a power-down is allowed again among times (ascending, at least limit of
// them): once all but limit-1 have left the window.
func nextAllowed(times []time.Time, limit int, window time.Duration) time.Time {
	return times[len(times)-limit].Add(window)
}

// Do carries out req on its host's BMC.
func (s *Service) Do(ctx context.Context, req Request) (Result, error) {
	res := Result{Host: req.Host}
	if _, err := ParseAction(string(req.Action)); err != nil {
		return res, errs.Refused(err)
	}
	// A kvmctl killed between an intent and its result left the host's power unknown to the
	// audit: settle that first, so that what follows counts what really happened.
	if _, err := s.Reconcile(ctx, req.Host); err != nil {
		return res, err
	}
	clk := s.clock()
	var t target
	if err := s.Store.View(func(tx state.Tx) (err error) { t, err = s.load(tx, req.Host); return err }); err != nil {
		return res, err
	}
	res.Cluster = t.host.Cluster
	drv, err := s.Open(t.bmc, t.host.Name)
	if err != nil {
		return res, errs.Refusedf("host %s has no usable BMC settings: %v: `kvmctl bmc set --host %s ...` or `--cluster %s`", req.Host, err, req.Host, t.host.Cluster)
	}
	defer drv.Close()

	if !req.Action.ChangesPower() && req.Action != ActionBlink {
		// status and test change nothing: no intent, no hold, no cap.
		out, err := Execute(ctx, clk, drv, req.Action, t.timing)
		res.Outcome = out
		return res, err
	}

	now := clk.Now().UTC()
	id := newAuditID(now)
	res.AuditID = id
	ref := holds.Ref{Kind: holds.Fencing, ID: id}
	intent := events.Event{Type: events.FenceIntent, AuditID: id, Host: t.host.Name, Cluster: t.host.Cluster, Action: string(req.Action),
		Who: s.who(), Reason: req.Reason, Evidence: req.Evidence}
	var refused *events.Event
	var refusal error
	var written []events.Event
	err = s.Store.Update(func(tx state.Tx) error {
		written, refused, refusal = nil, nil, nil
		refuse := func(why error) error {
			e := intent
			e.Type, e.Message = events.FenceRefused, why.Error()
			w, _, err := journal.AppendTx(tx, AuditStream, e, now)
			refused, refusal = &w, why
			return err
		}
		if err := journal.Open(tx, AuditStream, journal.Fence, "", "", now); err != nil {
			return err
		}
		subjects := []holds.Subject{holds.Host(t.host.Name)}
		ignore := []holds.Kind{}
		if req.Force {
			ignore = append(ignore, holds.Rolling, holds.Maintenance)
		}
		if err := s.Holds.OrLocal().Check(tx, holds.Ref{}, append(subjects, holds.Cluster(t.host.Cluster)), ignore...); err != nil {
			if req.Force {
				return err // another fence, or an unreadable hold: never forced
			}
			return fmt.Errorf("%w (--force acts anyway)", err)
		}
		if req.Action.PowersDown() {
			if why, err := capReached(tx, t.host.Cluster, t.cap, t.window, now); err != nil {
				return err
			} else if why != nil {
				return refuse(why)
			}
		}
		hold := holds.Hold{Kind: holds.Fencing, ID: id, Host: t.host.Name, Since: now, What: fmt.Sprintf("fence %s of %s", req.Action, t.host.Name)}
		if _, err := s.Holds.OrLocal().Take(tx, hold, subjects); err != nil {
			return err
		}
		w, _, err := journal.AppendTx(tx, AuditStream, intent, now)
		written = append(written, w)
		return err
	})
	if err != nil {
		if errs.IsRefused(err) {
			return res, err
		}
		return res, fmt.Errorf("record the intent before the BMC is called: %w; nothing was sent", err)
	}
	if refused != nil {
		s.emit(*refused)
		res.NotifyErrors = s.notify(ctx, Notice{Kind: events.FenceRefused, Time: now, AuditID: id, Host: t.host.Name, Cluster: t.host.Cluster,
			Action: req.Action, Result: "refused", Message: refusal.Error(), CapReached: errors.Is(refusal, ErrCapReached)})
		return res, errs.Refused(refusal)
	}
	for _, w := range written {
		s.emit(w)
	}

	out, actErr := Execute(ctx, clk, drv, req.Action, t.timing)
	res.Outcome = out
	result := events.Event{Type: events.FenceResult, AuditID: id, Host: t.host.Name, Cluster: t.host.Cluster, Action: string(req.Action),
		Who: intent.Who, PowerBefore: string(out.Before), PowerAfter: string(out.After), Sent: out.Sent, Fenced: out.Fenced, Message: out.Note}
	if actErr != nil {
		res.Error = actErr.Error()
		result.Message = strings.TrimPrefix(strings.Join([]string{out.Note, actErr.Error()}, "; "), "; ")
	}
	end := clk.Now().UTC()
	var w events.Event
	rerr := s.Store.Update(func(tx state.Tx) (err error) {
		if w, _, err = journal.AppendTx(tx, AuditStream, result, end); err != nil {
			return err
		}
		return holds.Release(tx, ref)
	})
	if rerr == nil {
		s.emit(w)
	}
	kind, what := events.FenceResult, "done"
	switch {
	case actErr != nil:
		what = actErr.Error()
	case out.Fenced:
		what = "power confirmed off"
		if req.Action == ActionReboot {
			what = "power confirmed off, then on"
		}
	case out.Note != "":
		what = out.Note
	}
	if actErr == nil || !req.QuietFailure {
		res.NotifyErrors = s.notify(ctx, Notice{Kind: kind, Time: end, AuditID: id, Host: t.host.Name, Cluster: t.host.Cluster,
			Action: req.Action, Result: what, Message: req.Reason, Failed: actErr != nil})
	}
	if rerr != nil {
		// The BMC acted; the record of it could not be written. The next fence or audit list
		// reconciles the intent by asking the BMC.
		return res, errors.Join(actErr, fmt.Errorf("record the result: %w; `kvmctl audit list` reconciles it", rerr))
	}
	return res, actErr
}

func (s *Service) emit(e events.Event) {
	if s.Events != nil {
		_ = s.Events.Emit(e)
	}
}

// Refuse audits a power action that a caller's own rule stopped before the fence path was asked
// (HA's guards: startup grace, storm, quiet time), with who, why and the evidence, and returns
// the record's audit id. Nothing is sent to the BMC and nothing is notified: the caller does.
func (s *Service) Refuse(req Request, why error) (string, error) {
	now := s.clock().Now().UTC()
	id := newAuditID(now)
	var cluster string
	e := events.Event{Type: events.FenceRefused, AuditID: id, Host: req.Host, Action: string(req.Action), Who: s.who(),
		Reason: req.Reason, Evidence: req.Evidence, Message: why.Error()}
	err := s.Store.Update(func(tx state.Tx) error {
		h, err := state.GetHost(tx, req.Host)
		if err != nil {
			return err
		}
		cluster = h.Cluster
		e.Cluster = cluster
		if err := journal.Open(tx, AuditStream, journal.Fence, "", "", now); err != nil {
			return err
		}
		w, _, err := journal.AppendTx(tx, AuditStream, e, now)
		e = w
		return err
	})
	if err != nil {
		return "", err
	}
	s.emit(e)
	return id, nil
}

// notify sends n and waits for it at most NotifyWait; what failed is audited and returned.
func (s *Service) notify(ctx context.Context, n Notice) []string {
	if s.Notify == nil {
		return nil
	}
	wait := s.NotifyWait
	if wait <= 0 {
		wait = 20 * time.Second
	}
	nctx, cancel := clock.WithTimeout(context.WithoutCancel(ctx), s.clock(), wait)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Notify.Notify(nctx, n) }()
	var err error
	select {
	case err = <-done:
	case <-nctx.Done():
		err = fmt.Errorf("notifications still not sent after %s", wait)
	}
	if err == nil {
		return nil
	}
	e := events.Event{Type: events.NotifyFailed, AuditID: n.AuditID, Host: n.Host, Cluster: n.Cluster, Action: string(n.Action), Message: err.Error()}
	_ = s.Store.Update(func(tx state.Tx) error {
		w, _, err := journal.AppendTx(tx, AuditStream, e, s.clock().Now())
		e = w
		return err
	})
	s.emit(e)
	return []string{err.Error()}
}

// Reconcile settles the intents of host (every host when "") that have no result and whose
// kvmctl is gone: it asks the BMC for the power state and records what it found. A kvmctl killed
// between its intent and the BMC's answer never leaves the audit saying less than the truth.
func (s *Service) Reconcile(ctx context.Context, host string) ([]events.Event, error) {
	t := s.Holds.OrLocal()
	var orphans []events.Event
	err := s.Store.View(func(tx state.Tx) error {
		recs, err := journal.Read(tx, AuditStream, 0)
		if err != nil {
			return err
		}
		open := map[string]events.Event{}
		for _, r := range recs {
			switch r.Event.Type {
			case events.FenceIntent:
				open[r.Event.AuditID] = r.Event
			case events.FenceResult, events.FenceReconciled:
				delete(open, r.Event.AuditID)
			}
		}
		for id, e := range open {
			if host != "" && e.Host != host {
				continue
			}
			h, ok, err := holds.Get(tx, holds.Host(e.Host))
			if err != nil {
				return err
			}
			if ok && h.ID == id && t.IsAlive(h.Owner) {
				continue // still being carried out
			}
			orphans = append(orphans, e)
		}
		return nil
	})
	if err != nil || len(orphans) == 0 {
		return nil, err
	}
	var done []events.Event
	for _, e := range orphans {
		power, msg := PowerUnknown, ""
		var tg target
		if err := s.Store.View(func(tx state.Tx) (err error) { tg, err = s.load(tx, e.Host); return err }); err != nil {
			msg = "host gone from the inventory: " + err.Error()
		} else if drv, err := s.Open(tg.bmc, e.Host); err != nil {
			msg = "no usable BMC settings: " + err.Error()
		} else {
			out, err := Execute(ctx, s.clock(), drv, ActionStatus, tg.timing)
			drv.Close()
			power = out.After
			if err != nil {
				msg = "the BMC does not answer: " + err.Error()
			}
		}
		rec := events.Event{Type: events.FenceReconciled, AuditID: e.AuditID, Host: e.Host, Cluster: e.Cluster, Action: e.Action,
			PowerAfter: string(power), Message: strings.TrimSuffix("the kvmctl that asked was gone before the BMC's answer was recorded; "+msg, "; ")}
		now := s.clock().Now()
		err := s.Store.Update(func(tx state.Tx) error {
			w, _, err := journal.AppendTx(tx, AuditStream, rec, now)
			if err != nil {
				return err
			}
			rec = w
			return holds.Release(tx, holds.Ref{Kind: holds.Fencing, ID: e.AuditID})
		})
		if err != nil {
			return done, err
		}
		s.emit(rec)
		done = append(done, rec)
	}
	return done, nil
}

// Audit reads the audit records, oldest first, of host (all when "") since since (all when zero).
func Audit(tx state.Tx, host string, since time.Time) ([]events.Event, error) {
	recs, err := journal.Read(tx, AuditStream, 0)
	if err != nil {
		return nil, err
	}
	out := []events.Event{}
	for _, r := range recs {
		if (host == "" || r.Event.Host == host) && !r.Event.Time.Before(since) {
			out = append(out, r.Event)
		}
	}
	return out, nil
}
