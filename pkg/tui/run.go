package tui

import (
	"context"
	"errors"
	"fmt"
	"io"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// Run shows model over the events on ch until the run finishes (and a key is pressed, unless
// ExitOnFinish), ch closes, or the operator detaches. It draws inline on out (no alt screen),
// so the last frame stays on the terminal, and reads keys from in (nil: none). detached is true
// when the operator pressed q or ctrl+c: the run itself goes on or stays resumable, which is
// the caller's business. A cancelled ctx ends the program with ctx's error.
func Run(ctx context.Context, model *RollingModel, ch <-chan events.Event, in io.Reader, out io.Writer) (detached bool, err error) {
	model.Listen(ch)
	p := tea.NewProgram(model, tea.WithContext(ctx), tea.WithInput(in), tea.WithOutput(out))
	final, err := p.Run()
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, tea.ErrProgramKilled) {
			return false, ctx.Err()
		}
		return false, fmt.Errorf("tui: %w", err)
	}
	m, ok := final.(*RollingModel)
	if !ok {
		return false, fmt.Errorf("tui: unexpected final model %T", final)
	}
	return m.Detached(), nil
}
