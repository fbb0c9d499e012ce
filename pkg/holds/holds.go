// Package holds says who may change a cluster or a host right now: a rolling run, a maintenance
// action, a fence, an `ha watch`. Every path that changes a cluster or a host consults the holds
// in the same transaction as its change, and takes or releases its own in that transaction too,
// so two kvmctl processes can never both act on one subject. A refusal names the holder and what
// to do about it.
//
// Holds live in the state's holds bucket, one per subject ("cluster/c1", "host/h1"). A hold whose
// process died stays until the verb that owns it takes it over (`rolling resume|abort RUN` for a
// run, `maintenance enable|cancel HOST` for a maintenance action): a dead holder may have left
// its subject half changed, and only its own verb knows how to finish or undo that.
package holds

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/errs"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// Bucket is where holds are kept, keyed by subject.
const Bucket = state.BucketHolds

// Kind is what holds a subject.
type Kind string

// Kinds of holders.
const (
	Rolling     Kind = "rolling"     // a rolling-maintenance run, over its clusters
	Maintenance Kind = "maintenance" // a `maintenance enable|cancel`, over its host (and cluster while it plans)
	Fencing     Kind = "fencing"     // a fence of a host
	HAWatch     Kind = "ha"          // an `ha watch`
)

// Subject is what is held: "cluster/NAME" or "host/NAME".
type Subject string

// Cluster is the subject of cluster name.
func Cluster(name string) Subject { return Subject("cluster/" + name) }

// Host is the subject of host name.
func Host(name string) Subject { return Subject("host/" + name) }

// HAWatchLease is the subject the one `kvmctl ha watch` of a state file holds.
const HAWatchLease Subject = "ha/watch"

// String says "cluster c1" or "host h1".
func (s Subject) String() string { return strings.Replace(string(s), "/", " ", 1) }

// Owner identifies a process: a pid, its start time (a reused pid differs in it) and the
// machine it runs on.
type Owner struct {
	PID       int    `json:"pid"`
	StartTime string `json:"start_time"`
	Machine   string `json:"machine,omitempty"`
}

// Ref names a holder: its kind and id (a run id, a maintenance action's id).
type Ref struct {
	Kind Kind   `json:"kind"`
	ID   string `json:"id"`
}

// Hold is one subject held.
type Hold struct {
	Subject Subject   `json:"subject"`
	Kind    Kind      `json:"kind"`
	ID      string    `json:"id"`
	Owner   Owner     `json:"owner"`
	Since   time.Time `json:"since"`
	// What the holder does, for people: "rolling run r1", "maintenance enable of h1".
	What string `json:"what"`
	// Host is the host a maintenance action works on (its verbs take the hold over).
	Host string `json:"host,omitempty"`
}

// Ref returns the hold's holder.
func (h Hold) Ref() Ref { return Ref{Kind: h.Kind, ID: h.ID} }

// Table reads and writes holds as one process: Self is who it is, Alive tells a live holder
// from a dead one.
type Table struct {
	Self Owner
	// Alive reports whether an owner's process still runs; nil is ProcessAlive.
	Alive func(Owner) bool
}

// Local returns the table of this process.
func Local() Table { return Table{Self: SelfOwner()} }

// OrLocal returns t, or, when t names no process (the zero value), this process's table with t's
// liveness check.
func (t Table) OrLocal() Table {
	if t.Self != (Owner{}) {
		return t
	}
	l := Local()
	l.Alive = t.Alive
	return l
}

func (t Table) alive(o Owner) bool {
	if o.PID <= 0 {
		return false // no process recorded (a legacy lock): nobody to wait for
	}
	if t.Alive != nil {
		return t.Alive(o)
	}
	return ProcessAlive(o)
}

// Get returns the hold on subject, if any.
func Get(tx state.Tx, s Subject) (Hold, bool, error) {
	raw, err := tx.Get(Bucket, string(s))
	if state.IsNotFound(err) {
		return legacyLock(tx, s)
	}
	if err != nil {
		return Hold{}, false, err
	}
	var h Hold
	if err := json.Unmarshal(raw, &h); err != nil {
		// A damaged record must not leave the subject free nor crash: it holds, and says so.
		return Hold{Subject: s, Kind: "unknown", ID: "?", What: fmt.Sprintf("an unreadable hold record (%v): `kvmctl state check`", err)}, true, nil
	}
	return h, true, nil
}

// List returns every hold, by subject.
func List(tx state.Tx) ([]Hold, error) {
	var out []Hold
	err := tx.ForEach(Bucket, func(k string, _ []byte) error {
		h, _, err := Get(tx, Subject(k))
		out = append(out, h)
		return err
	})
	if err != nil {
		return nil, err
	}
	err = tx.ForEach(state.BucketLocks, func(k string, _ []byte) error {
		if _, err := tx.Get(Bucket, string(Cluster(k))); state.IsNotFound(err) {
			h, _, err := legacyLock(tx, Cluster(k))
			out = append(out, h)
			return err
		}
		return nil
	})
	return out, err
}

// legacyLock reads the lock an earlier kvmctl (before holds) kept for a cluster: the id of the
// run holding it. Its process is unknown, so it counts as dead; the run's resume or abort takes
// it over, and Put and Release clear it.
func legacyLock(tx state.Tx, s Subject) (Hold, bool, error) {
	name, ok := strings.CutPrefix(string(s), "cluster/")
	if !ok {
		return Hold{}, false, nil
	}
	raw, err := tx.Get(state.BucketLocks, name)
	if state.IsNotFound(err) {
		return Hold{}, false, nil
	}
	if err != nil {
		return Hold{}, false, err
	}
	return Hold{Subject: s, Kind: Rolling, ID: string(raw), What: "rolling run " + string(raw)}, true, nil
}

// put writes h on its subject, clearing a legacy lock there.
func put(tx state.Tx, h Hold) error {
	if name, ok := strings.CutPrefix(string(h.Subject), "cluster/"); ok {
		if err := tx.Delete(state.BucketLocks, name); err != nil {
			return err
		}
	}
	return state.PutJSON(tx, Bucket, string(h.Subject), h)
}

// Check refuses, naming the holder and what to do, when another holder than me holds any of
// subjects; holds of the kinds in ignore pass.
func (t Table) Check(tx state.Tx, me Ref, subjects []Subject, ignore ...Kind) error {
	for _, s := range subjects {
		h, ok, err := Get(tx, s)
		if err != nil {
			return err
		}
		if !ok || (me.ID != "" && h.Ref() == me) || contains(ignore, h.Kind) {
			continue
		}
		return t.refusal(h)
	}
	return nil
}

// Take holds subjects for h's holder, in tx, after the same checks as Check. A dead holder's
// hold of one of the kinds in replaceDead is taken over, and returned so that the caller can
// settle what that holder left; any other hold refuses.
func (t Table) Take(tx state.Tx, h Hold, subjects []Subject, replaceDead ...Kind) ([]Hold, error) {
	if h.Owner == (Owner{}) {
		h.Owner = t.Self
	}
	var replaced []Hold
	for _, s := range subjects {
		cur, ok, err := Get(tx, s)
		if err != nil {
			return nil, err
		}
		switch {
		case !ok, cur.Ref() == h.Ref():
		case contains(replaceDead, cur.Kind) && !t.alive(cur.Owner):
			replaced = append(replaced, cur)
		default:
			return nil, t.refusal(cur)
		}
		h.Subject = s
		if err := put(tx, h); err != nil {
			return nil, err
		}
	}
	return replaced, nil
}

// Release drops the holds of ref on subjects (all its holds when subjects is empty); holds of
// others are left alone.
func Release(tx state.Tx, ref Ref, subjects ...Subject) error {
	if len(subjects) == 0 {
		all, err := List(tx)
		if err != nil {
			return err
		}
		for _, h := range all {
			subjects = append(subjects, h.Subject)
		}
	}
	for _, s := range subjects {
		h, ok, err := Get(tx, s)
		if err != nil {
			return err
		}
		if ok && h.Ref() == ref {
			if err := tx.Delete(Bucket, string(s)); err != nil {
				return err
			}
			if name, ok := strings.CutPrefix(string(s), "cluster/"); ok {
				if err := tx.Delete(state.BucketLocks, name); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// TakeOver makes t's process the owner of every hold of ref, as `rolling resume` and `abort` do
// for a run whose kvmctl died. It refuses while the current owner lives.
func (t Table) TakeOver(tx state.Tx, ref Ref, now time.Time) error {
	all, err := List(tx)
	if err != nil {
		return err
	}
	for _, h := range all {
		if h.Ref() != ref || h.Owner == t.Self {
			continue
		}
		if t.alive(h.Owner) {
			return t.refusal(h)
		}
		h.Owner = t.Self
		if h.Since.IsZero() {
			h.Since = now
		}
		if err := put(tx, h); err != nil {
			return err
		}
	}
	return nil
}

// IsAlive reports whether o's process runs, as this table sees it.
func (t Table) IsAlive(o Owner) bool { return t.alive(o) }

// refusal says who holds a subject and what the operator can do.
func (t Table) refusal(h Hold) error {
	who := h.What
	if who == "" {
		who = fmt.Sprintf("%s %s", h.Kind, h.ID)
	}
	where := fmt.Sprintf("pid %d", h.Owner.PID)
	if h.Owner.Machine != "" && h.Owner.Machine != machine() {
		where += " on " + h.Owner.Machine
	}
	since := ""
	if !h.Since.IsZero() {
		since = ", since " + h.Since.UTC().Format(time.RFC3339)
	}
	alive := t.alive(h.Owner)
	var todo string
	switch {
	case h.Kind == Rolling && alive:
		todo = fmt.Sprintf("wait for it, or `kvmctl rolling abort %s`", h.ID)
	case h.Kind == Rolling:
		todo = fmt.Sprintf("`kvmctl rolling resume %s` to finish it, or `kvmctl rolling abort %s`", h.ID, h.ID)
	case h.Kind == Maintenance && alive:
		todo = "wait for it to finish"
	case h.Kind == HAWatch && alive:
		todo = "one ha watch protects the fleet: stop that one first (`systemctl stop kvmctl-ha-watch`, or Ctrl-C where it runs)"
	case h.Kind == Maintenance:
		todo = fmt.Sprintf("`kvmctl maintenance enable %s` finishes it, `kvmctl maintenance cancel %s` undoes it", h.Host, h.Host)
	case alive:
		todo = "wait for it to finish"
	default:
		todo = "its process is gone: the verb that started it takes it over"
	}
	state := "which is still running"
	if !alive {
		state = "whose kvmctl died"
		if h.Owner.Machine != "" && h.Owner.Machine != machine() {
			state = "whose kvmctl is on another machine"
		}
	}
	return errs.Refusedf("%s is held by %s (%s%s), %s: %s", h.Subject, who, where, since, state, todo)
}

func contains(ks []Kind, k Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

// SelfOwner identifies this process.
func SelfOwner() Owner {
	return Owner{PID: os.Getpid(), StartTime: ProcStartTime(os.Getpid()), Machine: machine()}
}

// ProcessAlive reports whether the process o still runs. One on another machine cannot be seen
// from here and counts as alive: a hold is never taken from a process that may still act.
func ProcessAlive(o Owner) bool {
	if o.Machine != "" && o.Machine != machine() {
		return true
	}
	if o.PID <= 0 {
		return false
	}
	st := ProcStartTime(o.PID)
	return st != "" && st == o.StartTime
}

// ProcStartTime is field 22 of /proc/PID/stat: a pid reused by another process differs in it.
func ProcStartTime(pid int) string {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return ""
	}
	fields := strings.Fields(string(raw[i+1:]))
	// fields[0] is the state (field 3); the start time is field 22.
	if len(fields) < 20 || fields[0] == "Z" {
		return ""
	}
	return fields[19]
}

// machine is this machine's host name.
func machine() string {
	h, _ := os.Hostname()
	return h
}
