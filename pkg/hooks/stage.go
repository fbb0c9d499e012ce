package hooks

import (
	"fmt"
	"strings"
)

// Stage is one step of the rolling-maintenance process; its name is also the script's base name.
type Stage string

// The four stages, in the order the management side runs them.
const (
	PreFlight       Stage = "PreFlight"
	PreMaintenance  Stage = "PreMaintenance"
	Maintenance     Stage = "Maintenance"
	PostMaintenance Stage = "PostMaintenance"
)

// Stages returns every stage in execution order.
func Stages() []Stage {
	return []Stage{PreFlight, PreMaintenance, Maintenance, PostMaintenance}
}

// ParseStage returns the stage named s (exact spelling) or an error listing the valid names.
func ParseStage(s string) (Stage, error) {
	for _, st := range Stages() {
		if string(st) == s {
			return st, nil
		}
	}
	names := make([]string, 0, 4)
	for _, st := range Stages() {
		names = append(names, string(st))
	}
	return "", fmt.Errorf("unknown stage %q: valid stages are %s", s, strings.Join(names, ", "))
}

// String returns the stage name.
func (s Stage) String() string { return string(s) }
