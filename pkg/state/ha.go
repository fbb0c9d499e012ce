package state

import (
	"strings"
	"time"
)

// BucketHA holds host HA: whether it is enabled ("cluster/NAME", "host/NAME": HAEnabled) and each
// host's HA record ("state/NAME": HAHost), written by `kvmctl ha watch` on every transition.
const BucketHA = "ha"

// BucketVMDefs holds the VM definitions kvmctl keeps (keyed by uuid: VMDef), so that the VMs of
// a dead host can be started elsewhere from kvmctl's own copy.
const BucketVMDefs = "vm_defs"

// HAEnabled is HA switched on or off for a cluster or a host; a host's own word wins over its
// cluster's, and neither said is off.
type HAEnabled struct {
	Enabled bool      `json:"enabled"`
	Since   time.Time `json:"since"`
	Who     string    `json:"who,omitempty"`
	Unknown Unknown   `json:"-"`
}

// UnmarshalJSON reads the record, keeping the fields this version does not know.
func (e *HAEnabled) UnmarshalJSON(data []byte) (err error) {
	type plain HAEnabled
	e.Unknown, err = UnmarshalKeeping(data, (*plain)(e))
	return err
}

// MarshalJSON writes the record with the fields it kept.
func (e HAEnabled) MarshalJSON() ([]byte, error) {
	type plain HAEnabled
	return MarshalKeeping(plain(e), e.Unknown)
}

// HAHost is a host's HA record: its state and what it rests on. The journal stream ha/NAME holds
// its history with the evidence of every decision.
type HAHost struct {
	Host  string    `json:"host"`
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// Reason says why the host is in State, for people.
	Reason string `json:"reason,omitempty"`
	// Verdict is the last activity check's (ACTIVE, INACTIVE, UNKNOWN), at VerdictAt; Streak
	// counts the INACTIVE verdicts in a row; Evidence sums up what the neighbours read.
	Verdict   string    `json:"verdict,omitempty"`
	VerdictAt time.Time `json:"verdict_at,omitzero"`
	Streak    int       `json:"streak,omitempty"`
	Evidence  string    `json:"evidence,omitempty"`
	// Guard names the guard that stops a fence of the host now, "" for none.
	Guard string `json:"guard,omitempty"`
	// Action is the fence action HA takes (off, reboot, blink, none); AuditID the last fence's
	// audit record; FenceFailures counts the failures in a row and NextFence is when the next
	// attempt may run.
	Action        string    `json:"action,omitempty"`
	AuditID       string    `json:"audit_id,omitempty"`
	FenceFailures int       `json:"fence_failures,omitempty"`
	NextFence     time.Time `json:"next_fence,omitzero"`
	FencedAt      time.Time `json:"fenced_at,omitzero"`
	// ConfirmedDown is the operator's word (`kvmctl ha confirm-down`) that the host is off.
	ConfirmedDown bool `json:"confirmed_down,omitempty"`
	// LastRestart is the last SSH restart of a Degraded host's agent.
	LastRestart time.Time `json:"last_restart,omitzero"`
	// LastHealth is the last good health answer; Heartbeat* what the host's agent said of its
	// heartbeat then (HeartbeatFile is where neighbours read it).
	LastHealth    time.Time `json:"last_health,omitzero"`
	BootID        string    `json:"boot_id,omitempty"`
	HeartbeatFile string    `json:"heartbeat_file,omitempty"`
	HeartbeatSeq  uint64    `json:"heartbeat_seq,omitempty"`
	HeartbeatOK   time.Time `json:"heartbeat_ok,omitzero"`
	HeartbeatErr  string    `json:"heartbeat_error,omitempty"`
	// Recovery is the VMs of a fenced host and where each stands.
	Recovery []VMRecovery `json:"recovery,omitempty"`
	Unknown  Unknown      `json:"-"`
}

// VMRecovery is one VM of a fenced host: pending (to start), starting (a start was asked of To),
// running (it runs on To), unplaced (fits nowhere yet) or failed (Error).
type VMRecovery struct {
	Name  string `json:"name"`
	UUID  string `json:"uuid"`
	State string `json:"state"`
	To    string `json:"to,omitempty"`
	Error string `json:"error,omitempty"`
	// Pinned: a start on To may have happened (its answer was lost), so the VM may only be
	// started on To again, never elsewhere, until To shows where it is.
	Pinned bool `json:"pinned,omitempty"`
}

// UnmarshalJSON reads the record, keeping the fields this version does not know.
func (h *HAHost) UnmarshalJSON(data []byte) (err error) {
	type plain HAHost
	h.Unknown, err = UnmarshalKeeping(data, (*plain)(h))
	return err
}

// MarshalJSON writes the record with the fields it kept.
func (h HAHost) MarshalJSON() ([]byte, error) {
	type plain HAHost
	return MarshalKeeping(plain(h), h.Unknown)
}

// HAKey is the key of an HA switch: kind is "cluster" or "host".
func HAKey(kind, name string) string { return kind + "/" + name }

// GetHAEnabled returns the switch of kind/name and whether one is stored.
func GetHAEnabled(tx Tx, kind, name string) (HAEnabled, bool, error) {
	var e HAEnabled
	err := GetJSON(tx, BucketHA, HAKey(kind, name), &e)
	if IsNotFound(err) {
		return e, false, nil
	}
	return e, err == nil, err
}

// PutHAEnabled stores the switch of kind/name.
func PutHAEnabled(tx Tx, kind, name string, e HAEnabled) error {
	return PutJSON(tx, BucketHA, HAKey(kind, name), e)
}

// DeleteHAEnabled removes the switch of kind/name (a host then follows its cluster).
func DeleteHAEnabled(tx Tx, kind, name string) error {
	return tx.Delete(BucketHA, HAKey(kind, name))
}

// GetHAHost returns host's HA record; none stored is the zero value with ok false.
func GetHAHost(tx Tx, host string) (HAHost, bool, error) {
	var h HAHost
	err := GetJSON(tx, BucketHA, "state/"+host, &h)
	if IsNotFound(err) {
		return HAHost{Host: host}, false, nil
	}
	return h, err == nil, err
}

// PutHAHost stores host's HA record.
func PutHAHost(tx Tx, h HAHost) error {
	return PutJSON(tx, BucketHA, "state/"+h.Host, h)
}

// DeleteHA removes every HA record of a host or a cluster (kind "host" or "cluster") that is
// removed from the inventory.
func DeleteHA(tx Tx, kind, name string) error {
	if err := tx.Delete(BucketHA, HAKey(kind, name)); err != nil {
		return err
	}
	if kind == "host" {
		if err := tx.Delete(BucketHA, "request/"+name); err != nil {
			return err
		}
		return tx.Delete(BucketHA, "state/"+name)
	}
	return nil
}

// ListHAHosts returns every host's HA record.
func ListHAHosts(tx Tx) ([]HAHost, error) {
	var out []HAHost
	err := tx.ForEach(BucketHA, func(k string, _ []byte) error {
		if !strings.HasPrefix(k, "state/") {
			return nil
		}
		var h HAHost
		if err := GetJSON(tx, BucketHA, k, &h); err != nil {
			return err
		}
		out = append(out, h)
		return nil
	})
	return out, err
}

// VMDef is a VM's definition as kvmctl keeps it: the domain XML its agent answered (checked by
// the VM policy's shape check), the hash the agent reported for it, and where it was last seen.
type VMDef struct {
	UUID    string    `json:"uuid"`
	Name    string    `json:"name"`
	Hash    string    `json:"hash"`
	XML     string    `json:"xml"`
	Host    string    `json:"host"`
	Cluster string    `json:"cluster"`
	Seen    time.Time `json:"seen"`
	Unknown Unknown   `json:"-"`
}

// UnmarshalJSON reads the record, keeping the fields this version does not know.
func (d *VMDef) UnmarshalJSON(data []byte) (err error) {
	type plain VMDef
	d.Unknown, err = UnmarshalKeeping(data, (*plain)(d))
	return err
}

// MarshalJSON writes the record with the fields it kept.
func (d VMDef) MarshalJSON() ([]byte, error) {
	type plain VMDef
	return MarshalKeeping(plain(d), d.Unknown)
}

// GetVMDef returns the kept definition of the VM of uuid, and whether there is one.
func GetVMDef(tx Tx, uuid string) (VMDef, bool, error) {
	var d VMDef
	err := GetJSON(tx, BucketVMDefs, uuid, &d)
	if IsNotFound(err) {
		return d, false, nil
	}
	return d, err == nil, err
}

// PutVMDef keeps d.
func PutVMDef(tx Tx, d VMDef) error { return PutJSON(tx, BucketVMDefs, d.UUID, d) }

// HARequest is an operator's word for the running `ha watch` about a host, which applies and
// removes it: ConfirmDown (`ha confirm-down`: the host is off, its VMs may start elsewhere) or
// Clear (`ha clear`: start the host's HA over from Available).
type HARequest struct {
	ConfirmDown bool      `json:"confirm_down,omitempty"`
	Clear       bool      `json:"clear,omitempty"`
	Who         string    `json:"who"`
	At          time.Time `json:"at"`
	Reason      string    `json:"reason,omitempty"`
}

// GetHARequest returns the request pending for host, and whether there is one.
func GetHARequest(tx Tx, host string) (HARequest, bool, error) {
	var r HARequest
	err := GetJSON(tx, BucketHA, "request/"+host, &r)
	if IsNotFound(err) {
		return r, false, nil
	}
	return r, err == nil, err
}

// PutHARequest stores a request for host.
func PutHARequest(tx Tx, host string, r HARequest) error {
	return PutJSON(tx, BucketHA, "request/"+host, r)
}

// DeleteHARequest removes host's request once applied.
func DeleteHARequest(tx Tx, host string) error { return tx.Delete(BucketHA, "request/"+host) }
