package cli

import (
	"context"
	"fmt"
	"os"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/ha"
	"github.com/kvmctl/kvmctl/pkg/holds"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// haAgents reaches the agents for the HA monitor over mutual TLS, one kept-alive client per host.
type haAgents struct {
	clients func(h state.Host) (*api.Client, error)
}

func (a haAgents) Health(ctx context.Context, h state.Host) (api.HealthReport, error) {
	c, err := a.clients(h)
	if err != nil {
		return api.HealthReport{}, err
	}
	return c.Health(ctx)
}

func (a haAgents) ActivityCheck(ctx context.Context, checker state.Host, req api.ActivityCheckRequest) (api.ActivityCheckResult, error) {
	c, err := a.clients(checker)
	if err != nil {
		return api.ActivityCheckResult{}, err
	}
	return c.ActivityCheck(ctx, req)
}

func (a haAgents) Status(ctx context.Context, h state.Host) (api.Status, error) {
	c, err := a.clients(h)
	if err != nil {
		return api.Status{}, err
	}
	return c.Status(ctx)
}

func (a haAgents) VMXML(ctx context.Context, h state.Host, name string) (string, error) {
	c, err := a.clients(h)
	if err != nil {
		return "", err
	}
	return c.VMXML(ctx, name)
}

func (a haAgents) DefineAndStartVM(ctx context.Context, h state.Host, xml string) error {
	c, err := a.clients(h)
	if err != nil {
		return err
	}
	return c.DefineAndStartVM(ctx, xml)
}

func (a haAgents) RemoveVM(ctx context.Context, h state.Host, name string) error {
	c, err := a.clients(h)
	if err != nil {
		return err
	}
	return c.RemoveVM(ctx, name)
}

// sshRestarter restarts a Degraded host's agent over SSH, as `maintenance cancel` does.
type sshRestarter struct{ ssh orchestrate.SSHRunner }

func (r sshRestarter) RestartAgent(ctx context.Context, h state.Host) error {
	target, cmd, err := orchestrate.AgentRestartTarget(h)
	if err != nil {
		return err
	}
	_, err = r.ssh.Run(ctx, target, cmd)
	return err
}

// channelNotifier sends notices to every channel of the state file, read for each notice.
type channelNotifier struct{ f *cmdutil.Factory }

func (c channelNotifier) Notify(ctx context.Context, n notify.Notice) error {
	var nf *notify.Notifier
	if err := view(c.f, func(tx state.Tx) (err error) { nf, err = notify.Load(tx, notify.Options{Clock: c.f.Clock}); return err }); err != nil {
		return err
	}
	return nf.Notify(ctx, n)
}

// watchWho names this watch in the journal and the audit.
func watchWho() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("ha watch pid %d on %s", os.Getpid(), host)
}

// newMonitor wires the HA monitor to the state file, the agents, the fence path, SSH and the
// notification channels.
func newMonitor(f *cmdutil.Factory) (*ha.Monitor, error) {
	st, err := f.Store()
	if err != nil {
		return nil, err
	}
	clients, err := agentClients(f)
	if err != nil {
		return nil, err
	}
	who := watchWho()
	fs := &fence.Service{Store: st, Clock: f.Clock, Open: bmcDriver, Notify: notifier(f), Who: who}
	return &ha.Monitor{Store: st, Clock: f.Clock, Agents: haAgents{clients: clients}, Fence: fs, Notify: channelNotifier{f: f},
		Restart: sshRestarter{ssh: sshRunner()}, Holds: holds.Local(), Who: who}, nil
}
