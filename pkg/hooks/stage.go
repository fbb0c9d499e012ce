package hooks

import "github.com/kvmctl/kvmctl/pkg/events"

// Stage is one step of rolling maintenance; its name is also the script's base name. The
// words are pkg/events' (declared there once).
type Stage = events.Stage

// The four stages, in the order the management side runs them.
const (
	PreFlight       = events.PreFlight
	PreMaintenance  = events.PreMaintenance
	Maintenance     = events.Maintenance
	PostMaintenance = events.PostMaintenance
)

// Stages returns every stage in execution order.
func Stages() []Stage { return events.Stages() }

// ParseStage returns the stage named s (exact spelling) or an error listing the valid names.
func ParseStage(s string) (Stage, error) { return events.ParseStage(s) }
