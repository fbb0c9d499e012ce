// Package cmdutil is what every kvmctl command shares: the factory of lazily built
// collaborators, the mapping of errors to exit codes, and output helpers.
package cmdutil

import (
	"encoding/json"
	"os"
	"path/filepath"
	"time"

	"github.com/kvmctl/kvmctl/pkg/clock"
	"github.com/kvmctl/kvmctl/pkg/iostreams"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// EnvState names the environment variable that points kvmctl at a state file.
const EnvState = "KVMCTL_STATE"

// Factory builds what a command needs, only when it asks: `kvmctl version` never opens the
// state file and never dials an agent.
type Factory struct {
	IO *iostreams.IOStreams
	// StateFlag is the value of --state, empty when not given.
	StateFlag string
	// JSON is the global --json flag: print one JSON document instead of text.
	JSON bool
	// Events is the global --events flag: stream progress as NDJSON on stdout.
	Events bool
	// NoTUI is the global --no-tui flag: plain progress lines even on a terminal.
	NoTUI bool
	// Clock is what engines take time from.
	Clock clock.Clock
	// Now is the time for what is printed (relative times); tests may fix it.
	Now func() time.Time
	// Getenv reads the environment; tests may replace it.
	Getenv func(string) string
}

// New returns a Factory on the process's streams and environment.
func New(ios *iostreams.IOStreams) *Factory {
	return &Factory{IO: ios, Clock: clock.Real(), Now: time.Now, Getenv: os.Getenv}
}

// StatePath resolves the state file: --state, else $KVMCTL_STATE, else
// $XDG_STATE_HOME/kvmctl/state.db, else ~/.local/state/kvmctl/state.db.
func (f *Factory) StatePath() (string, error) {
	p := f.StateFlag
	if p == "" {
		p = f.Getenv(EnvState)
	}
	if p == "" {
		base := f.Getenv("XDG_STATE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", err
			}
			base = filepath.Join(home, ".local", "state")
		}
		p = filepath.Join(base, "kvmctl", "state.db")
	}
	return filepath.Abs(p)
}

// Store returns a handle on the state file; it opens nothing until View or Update.
func (f *Factory) Store() (*state.Store, error) {
	p, err := f.StatePath()
	if err != nil {
		return nil, err
	}
	return state.New(p), nil
}

// PKIDir is where the fleet CA and the operator certificate live: pki/ beside the state file.
func (f *Factory) PKIDir() (string, error) {
	p, err := f.StatePath()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(p), "pki"), nil
}

// PrintJSON writes v to Out as indented JSON.
func (f *Factory) PrintJSON(v any) error {
	enc := json.NewEncoder(f.IO.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
