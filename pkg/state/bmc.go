package state

import "strings"

// BucketBMC holds BMC settings, keyed "cluster/NAME" (the cluster's defaults) and "host/NAME"
// (a host's overrides), apart from the hosts' records so that no listing of hosts can carry a
// BMC password.
const BucketBMC = "bmc"

// BMC is how kvmctl reaches a host's baseboard management controller (seed 002: a cluster's
// settings are its hosts' defaults; a host overrides them field by field). Empty fields are
// unset. Password is a secret: it lives only in the state file (mode 0600) and is never printed.
type BMC struct {
	// Driver is ipmi (go-ipmi, native), ipmitool (Debian's), or exec (the seed's template).
	Driver string `json:"driver,omitempty"`
	// Address is the BMC's host name or IP; Port its UDP port (623 when 0).
	Address string `json:"address,omitempty"`
	Port    int    `json:"port,omitempty"`
	// Username and Password log in to the BMC.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// Interface is lanplus (IPMI v2.0 RMCP+, the default) or lan (IPMI v1.5).
	Interface string `json:"interface,omitempty"`
	// Action is what HA does to a dead host: none, off, reboot or blink (seed 002).
	Action string `json:"action,omitempty"`
	// Exec is the program of the exec driver; Actions its per-action templates (off, on, reboot,
	// blink, status, test), each one command line split into words without a shell.
	Exec    string            `json:"exec,omitempty"`
	Actions map[string]string `json:"actions,omitempty"`
	// Unknown keeps fields a newer kvmctl wrote.
	Unknown Unknown `json:"-"`
}

// UnmarshalJSON reads BMC settings, keeping the fields this version does not know.
func (b *BMC) UnmarshalJSON(data []byte) (err error) {
	type plain BMC
	b.Unknown, err = UnmarshalKeeping(data, (*plain)(b))
	return err
}

// MarshalJSON writes BMC settings with the fields they kept.
func (b BMC) MarshalJSON() ([]byte, error) {
	type plain BMC
	return MarshalKeeping(plain(b), b.Unknown)
}

// IsZero reports whether no field is set.
func (b BMC) IsZero() bool {
	return b.Driver == "" && b.Address == "" && b.Port == 0 && b.Username == "" && b.Password == "" && b.Interface == "" &&
		b.Action == "" && b.Exec == "" && len(b.Actions) == 0
}

// BMCKey is the key of the BMC settings of a cluster or host: kind is "cluster" or "host".
func BMCKey(kind, name string) string { return kind + "/" + name }

// GetBMC returns the BMC settings stored under kind/name; none stored is the zero value.
func GetBMC(tx Tx, kind, name string) (BMC, error) {
	var b BMC
	err := GetJSON(tx, BucketBMC, BMCKey(kind, name), &b)
	if IsNotFound(err) {
		err = nil
	}
	return b, err
}

// PutBMC stores b under kind/name; zero settings are removed.
func PutBMC(tx Tx, kind, name string, b BMC) error {
	if b.IsZero() && len(b.Unknown) == 0 {
		return tx.Delete(BucketBMC, BMCKey(kind, name))
	}
	return PutJSON(tx, BucketBMC, BMCKey(kind, name), b)
}

// ListBMC returns every stored BMC setting by its key (kind/name).
func ListBMC(tx Tx) (map[string]BMC, error) {
	out := map[string]BMC{}
	err := tx.ForEach(BucketBMC, func(k string, _ []byte) error {
		var b BMC
		if err := GetJSON(tx, BucketBMC, k, &b); err != nil {
			return err
		}
		out[k] = b
		return nil
	})
	return out, err
}

// SplitBMCKey splits a BMC key into its kind and name.
func SplitBMCKey(key string) (kind, name string) {
	kind, name, _ = strings.Cut(key, "/")
	return kind, name
}
