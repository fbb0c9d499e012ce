// Package bmcconf is the vocabulary of BMC settings (state.BMC): the drivers, interfaces and
// actions there are, each field's name as `kvmctl bmc` and the inventory YAML spell it, and the
// syntax of the exec driver's templates. The drivers (pkg/fence) and the inventory's rules
// (pkg/inventory) both read it, and must not import each other: fence's tests build fleets
// with the inventory.
package bmcconf

import (
	"fmt"
	"maps"
	"strconv"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/state"
)

// Drivers, by the names `kvmctl bmc set --driver` takes.
const (
	DriverIPMI     = "ipmi"     // go-ipmi, native: the default
	DriverIPMITool = "ipmitool" // Debian's ipmitool
	DriverExec     = "exec"     // the seed's command template
)

// Interfaces of the ipmi and ipmitool drivers.
const (
	InterfaceLanplus = "lanplus" // IPMI v2.0 RMCP+: the default
	InterfaceLan     = "lan"     // IPMI v1.5
)

// DefaultPort is the BMC's UDP port when none is set (RMCP, IPMI's LAN port).
const DefaultPort = 623

// Drivers, Interfaces and HAActions list the known values, the default first.
var (
	Drivers    = []string{DriverIPMI, DriverIPMITool, DriverExec}
	Interfaces = []string{InterfaceLanplus, InterfaceLan}
	// HAActions are what HA may do to a dead host, the BMC setting "action" (seed 002: "do
	// nothing, power off, reboot or issue led blink").
	HAActions = []string{"none", "off", "reboot", "blink"}
	// TemplateActions are the exec driver's per-action templates (state.BMC.Actions keys).
	TemplateActions = []string{"off", "on", "reboot", "blink", "status", "test"}
)

// Field names, as `kvmctl bmc unset` and `bmc show` name them; a template is "action-" and
// its action ("action-off").
const (
	FieldDriver    = "driver"
	FieldAddress   = "address"
	FieldPort      = "port"
	FieldUsername  = "username"
	FieldPassword  = "password"
	FieldInterface = "interface"
	FieldAction    = "action"
	FieldExec      = "exec"
)

// TemplateField is the field name of the template of action ("action-off").
func TemplateField(action string) string { return "action-" + action }

// field reads and writes one setting as text ("" is unset).
type field struct {
	name string
	get  func(state.BMC) string
	set  func(*state.BMC, string)
}

func stringField(name string, p func(*state.BMC) *string) field {
	return field{
		name: name,
		get:  func(b state.BMC) string { return *p(&b) },
		set:  func(b *state.BMC, v string) { *p(b) = v },
	}
}

var fields = func() []field {
	fs := []field{
		stringField(FieldDriver, func(b *state.BMC) *string { return &b.Driver }),
		stringField(FieldAddress, func(b *state.BMC) *string { return &b.Address }),
		{
			name: FieldPort,
			get: func(b state.BMC) string {
				if b.Port == 0 {
					return ""
				}
				return strconv.Itoa(b.Port)
			},
			set: func(b *state.BMC, v string) { b.Port, _ = strconv.Atoi(v) },
		},
		stringField(FieldUsername, func(b *state.BMC) *string { return &b.Username }),
		stringField(FieldPassword, func(b *state.BMC) *string { return &b.Password }),
		stringField(FieldInterface, func(b *state.BMC) *string { return &b.Interface }),
		stringField(FieldAction, func(b *state.BMC) *string { return &b.Action }),
		stringField(FieldExec, func(b *state.BMC) *string { return &b.Exec }),
	}
	for _, a := range TemplateActions {
		fs = append(fs, field{
			name: TemplateField(a),
			get:  func(b state.BMC) string { return b.Actions[a] },
			set: func(b *state.BMC, v string) {
				// A copy: b's map may be shared with the settings b was copied or merged from.
				m := maps.Clone(b.Actions)
				if m == nil {
					m = map[string]string{}
				}
				if m[a] = v; v == "" {
					delete(m, a)
				}
				b.Actions = m
				if len(m) == 0 {
					b.Actions = nil
				}
			},
		})
	}
	return fs
}()

// FieldNames lists every setting by name, in the order `bmc show` prints them.
func FieldNames() []string {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return names
}

func lookupField(name string) (field, error) {
	for _, f := range fields {
		if f.name == name {
			return f, nil
		}
	}
	return field{}, fmt.Errorf("unknown BMC field %q: use one of %s", name, strings.Join(FieldNames(), ", "))
}

// Get returns field name of b as text, "" when it is unset. For the password that is the
// secret itself: print Redacted(b)'s instead.
func Get(b state.BMC, name string) (string, error) {
	f, err := lookupField(name)
	if err != nil {
		return "", err
	}
	return f.get(b), nil
}

// Set sets field name of b to value ("" clears it); an unknown name, or a port that is not a
// number, is an error. Values are not checked: pkg/inventory's ValidBMC does that.
func Set(b *state.BMC, name, value string) error {
	f, err := lookupField(name)
	if err != nil {
		return err
	}
	if name == FieldPort && value != "" {
		if _, err := strconv.Atoi(value); err != nil {
			return fmt.Errorf("invalid BMC port %q: use a number from 1 to 65535", value)
		}
	}
	f.set(b, value)
	return nil
}

// Unset clears field name of b; an unknown name is an error that lists the known ones.
func Unset(b *state.BMC, name string) error {
	f, err := lookupField(name)
	if err != nil {
		return err
	}
	f.set(b, "")
	return nil
}

// Redacted returns b fit to print or to write as JSON: its password replaced by "set" when it
// has one, and none of the fields kept for a newer kvmctl, which may be secrets too.
func Redacted(b state.BMC) state.BMC {
	if b.Password != "" {
		b.Password = "set"
	}
	b.Actions = maps.Clone(b.Actions)
	b.Unknown = nil
	return b
}

// Changed lists the fields whose values differ between a and b, in FieldNames order.
func Changed(a, b state.BMC) []string {
	var out []string
	for _, f := range fields {
		if f.get(a) != f.get(b) {
			out = append(out, f.name)
		}
	}
	return out
}

// WithDefaults fills the fields of b that have a default and are unset.
func WithDefaults(b state.BMC) state.BMC {
	if b.Driver == "" {
		b.Driver = DriverIPMI
	}
	if b.Port == 0 {
		b.Port = DefaultPort
	}
	if b.Interface == "" {
		b.Interface = InterfaceLanplus
	}
	if b.Action == "" {
		b.Action = HAActions[0]
	}
	return b
}

// Default returns the value field name takes when it is unset, "" when it has none.
func Default(name string) string {
	f, err := lookupField(name)
	if err != nil {
		return ""
	}
	return f.get(WithDefaults(state.BMC{}))
}
