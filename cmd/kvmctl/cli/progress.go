package cli

import (
	"sync"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/sshx"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// progressSink renders an engine's events: NDJSON on stdout with --events, nothing extra with
// --json (the final document says it all), otherwise one plain line each on stderr. The plain
// lines leave out a maintenance action's start and end: the command's own last line says how
// it ended.
func progressSink(f *cmdutil.Factory) events.Sink {
	switch {
	case f.Events:
		return events.NewNDJSON(f.IO.Out)
	case f.JSON:
		return events.Discard
	default:
		plain := events.NewPlain(f.IO.ErrOut)
		return events.SinkFunc(func(e events.Event) error {
			if e.Type == events.ActionStarted || e.Type == events.ActionFinished {
				return nil
			}
			return plain.Emit(e)
		})
	}
}

// agentClients returns a dialer that builds one mutual-TLS client per host (keyed by name and
// address) from the operator's PKI, safe for the engines' concurrent use.
func agentClients(f *cmdutil.Factory) (func(h state.Host) (*api.Client, error), error) {
	pkiDir, err := f.PKIDir()
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	clients := map[string]*api.Client{}
	return func(h state.Host) (*api.Client, error) {
		mu.Lock()
		defer mu.Unlock()
		key := h.Name + "@" + h.Address
		if c, ok := clients[key]; ok {
			return c, nil
		}
		c, err := api.ClientForHost(pkiDir, h.Name, h.Address)
		if err != nil {
			return nil, err
		}
		clients[key] = c
		return c, nil
	}, nil
}

// sshRunner is how kvmctl reaches a host's shell: SSH with key auth and known_hosts checked.
func sshRunner() orchestrate.SSHRunner { return &sshx.Client{} }
