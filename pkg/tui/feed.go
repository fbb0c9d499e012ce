package tui

import (
	"sync"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/kvmctl/kvmctl/pkg/events"
)

// EventMsg is one engine event delivered to the TUI.
type EventMsg events.Event

// ChannelClosedMsg says the event stream has ended: the engine has returned.
type ChannelClosedMsg struct{}

// WaitForEvent returns a command that waits for the next event on ch: an EventMsg, or a
// ChannelClosedMsg once ch is closed. A model issues it again after each event. A nil ch
// gives a nil command (nothing to wait for).
func WaitForEvent(ch <-chan events.Event) tea.Cmd {
	if ch == nil {
		return nil
	}
	return func() tea.Msg {
		e, ok := <-ch
		if !ok {
			return ChannelClosedMsg{}
		}
		return EventMsg(e)
	}
}

// Feed is an events.Sink that hands events to the TUI over a channel. Emit waits for the TUI to
// take an event (the buffer absorbs bursts), so none is lost; once the TUI has gone (Detach) it
// drops them, so an engine never blocks on a viewer that left.
type Feed struct {
	ch   chan events.Event
	gone chan struct{}

	mu        sync.RWMutex
	closed    bool
	closeOnce sync.Once
	goneOnce  sync.Once
}

// NewFeed returns a feed buffering up to buffer events.
func NewFeed(buffer int) *Feed {
	return &Feed{ch: make(chan events.Event, max(buffer, 0)), gone: make(chan struct{})}
}

// Events is the stream to give to Run or WaitForEvent.
func (f *Feed) Events() <-chan events.Event { return f.ch }

// Emit hands e to the TUI, or drops it if the TUI has gone or the feed is closed.
func (f *Feed) Emit(e events.Event) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return nil
	}
	select {
	case f.ch <- e:
	case <-f.gone:
	}
	return nil
}

// Close ends the stream (the engine has returned): the TUI gets a ChannelClosedMsg.
func (f *Feed) Close() {
	f.closeOnce.Do(func() {
		// Emit holds the read lock while it sends: taking the write lock waits for a send in
		// flight, which the TUI reading or Detach ends, so close never races a send.
		f.mu.Lock()
		defer f.mu.Unlock()
		f.closed = true
		close(f.ch)
	})
}

// Detach says the TUI stopped reading: Emit drops events from now on.
func (f *Feed) Detach() {
	f.goneOnce.Do(func() { close(f.gone) })
}
