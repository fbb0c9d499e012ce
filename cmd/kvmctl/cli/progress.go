package cli

import (
	"sync"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/sshx"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// progressSink renders an engine's events: NDJSON on stdout with --events, nothing extra with
// --json (the final document says it all), otherwise one plain line each on stderr.
func progressSink(f *cmdutil.Factory) events.Sink {
	switch {
	case f.Events:
		return events.NewNDJSON(f.IO.Out)
	case f.JSON:
		return events.Discard
	default:
		return events.NewPlain(f.IO.ErrOut)
	}
}

// lockedDial makes a caching dialer safe for the engine's concurrent migrations.
func lockedDial(dial orchestrate.AgentDialer) orchestrate.AgentDialer {
	var mu sync.Mutex
	return func(h state.Host) (orchestrate.MaintenanceAgent, error) {
		mu.Lock()
		defer mu.Unlock()
		return dial(h)
	}
}

// lockedRollingDial makes a caching dialer safe for concurrent stages.
func lockedRollingDial(dial orchestrate.RollingDialer) orchestrate.RollingDialer {
	var mu sync.Mutex
	return func(h state.Host) (orchestrate.RollingAgent, error) {
		mu.Lock()
		defer mu.Unlock()
		return dial(h)
	}
}

// sshRunner is how kvmctl reaches a host's shell: SSH with key auth and known_hosts checked.
func sshRunner() orchestrate.SSHRunner { return &sshx.Client{} }
