package cli

import (
	"context"
	"time"

	"github.com/charmbracelet/lipgloss"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/orchestrate"
	"github.com/kvmctl/kvmctl/pkg/state"
	"github.com/kvmctl/kvmctl/pkg/tui"
)

// followRunTUI runs the engine under the live view. The view only renders the engine's events;
// q detaches: the engine is stopped where it is and the run stays resumable.
func followRunTUI(ctx context.Context, f *cmdutil.Factory, x *orchestrate.Execution) (orchestrate.RunResult, bool, error) {
	run := x.Run()
	feed := tui.NewFeed(256)
	x.Events = feed
	rows := make([]tui.HostRow, len(run.Hosts))
	for i, h := range run.Hosts {
		rows[i] = tui.HostRow{Name: h.Name, Cluster: h.Cluster}
	}
	m := tui.NewRolling(run.ID, rows, tui.RollingOptions{Renderer: lipgloss.NewRenderer(f.IO.Terminal()), StartedAt: run.CreatedAt, ExitOnFinish: true})
	// A resumed run's view starts from what the journal says happened before: hosts done, stage
	// results, VMs moved.
	if past, err := runJournal(f, run.ID); err == nil {
		m.Replay(past)
	}
	ectx, cancel := context.WithCancel(ctx)
	defer cancel()
	type outcome struct {
		res orchestrate.RunResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := x.Execute(ectx)
		feed.Close()
		done <- outcome{res, err}
	}()
	detached, terr := tui.Run(ctx, m, feed.Events(), f.IO.In, f.IO.Terminal())
	feed.Detach()
	if detached || terr != nil {
		cancel()
		select {
		case o := <-done:
			if terr != nil {
				return o.res, false, terr
			}
			return o.res, true, nil
		case <-time.After(10 * time.Second):
			return orchestrate.RunResult{RunID: run.ID}, true, terr
		}
	}
	o := <-done
	return o.res, false, o.err
}

// runJournal reads the events of run id recorded so far.
func runJournal(f *cmdutil.Factory, id string) ([]events.Event, error) {
	var evs []events.Event
	err := view(f, func(tx state.Tx) (err error) { evs, err = orchestrate.Journal(tx, id); return err })
	return evs, err
}
