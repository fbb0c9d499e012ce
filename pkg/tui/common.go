// Package tui renders engine events live on a terminal. It only shows what the engines report
// on the event stream (pkg/events); it never decides anything and calls no agent. The layout
// follows soft-serve's: a shared Common (size, styles, keymap), components with SetSize and a
// help keymap, message types declared beside the component that owns them, and I/O only
// inside a tea.Cmd.
package tui

import (
	"strings"

	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
)

// defaultWidth is used until the terminal reports its size (and when it never does, on a pipe).
const defaultWidth = 80

// Component is a piece of the UI: a model that can be resized and shows its keys in the footer.
type Component interface {
	tea.Model
	help.KeyMap
	SetSize(width, height int)
}

// Common is what every component shares: the terminal size, the styles and the keymap.
type Common struct {
	Width, Height int
	Styles        *Styles
	KeyMap        *KeyMap
}

// NewCommon returns a Common drawing with r (nil: lipgloss's default renderer, which looks at
// stdout), of unknown size.
func NewCommon(r *lipgloss.Renderer) Common {
	if r == nil {
		r = lipgloss.DefaultRenderer()
	}
	return Common{Styles: DefaultStyles(r), KeyMap: DefaultKeyMap()}
}

// SetSize records the terminal size.
func (c *Common) SetSize(width, height int) {
	c.Width, c.Height = width, height
}

// width is the width to draw at.
func (c *Common) width() int {
	if c.Width > 0 {
		return c.Width
	}
	return defaultWidth
}

// KeyMap is every key the TUI answers.
type KeyMap struct {
	// Detach stops watching; the run itself stays resumable.
	Detach key.Binding
	// Exit leaves the TUI once the run has finished (any key does).
	Exit key.Binding
}

// DefaultKeyMap returns the keys: q or ctrl+c detach; once the run has finished any key exits.
func DefaultKeyMap() *KeyMap {
	return &KeyMap{
		Detach: key.NewBinding(key.WithKeys("q", "ctrl+c"), key.WithHelp("q", "detach")),
		// Any key exits; the keys here only enable the binding so help shows it.
		Exit: key.NewBinding(key.WithKeys("enter", "q", "esc"), key.WithHelp("any key", "exit")),
	}
}

// Styles are the lipgloss styles of every component, made from one renderer so that colour
// follows the terminal the TUI draws on.
type Styles struct {
	Title      lipgloss.Style
	Muted      lipgloss.Style
	Cluster    lipgloss.Style
	ColHeader  lipgloss.Style
	Host       lipgloss.Style
	Pending    lipgloss.Style
	Running    lipgloss.Style
	OK         lipgloss.Style
	Skipped    lipgloss.Style
	Failed     lipgloss.Style
	LastLine   lipgloss.Style
	Succeeded  lipgloss.Style
	Unfinished lipgloss.Style
	Help       help.Styles
}

// DefaultStyles returns kvmctl's styles drawn with r.
func DefaultStyles(r *lipgloss.Renderer) *Styles {
	muted := r.NewStyle().Foreground(lipgloss.AdaptiveColor{Light: "#8A8A8A", Dark: "#767676"})
	green := r.NewStyle().Foreground(lipgloss.AdaptiveColor{Light: "#008700", Dark: "#5FD75F"})
	red := r.NewStyle().Foreground(lipgloss.AdaptiveColor{Light: "#D70000", Dark: "#FF5F5F"})
	yellow := r.NewStyle().Foreground(lipgloss.AdaptiveColor{Light: "#AF8700", Dark: "#FFD75F"})
	cyan := r.NewStyle().Foreground(lipgloss.AdaptiveColor{Light: "#0087AF", Dark: "#5FD7FF"})
	return &Styles{
		Title:      r.NewStyle().Bold(true),
		Muted:      muted,
		Cluster:    r.NewStyle().Bold(true),
		ColHeader:  muted,
		Host:       r.NewStyle(),
		Pending:    muted,
		Running:    cyan,
		OK:         green,
		Skipped:    yellow,
		Failed:     red,
		LastLine:   muted,
		Succeeded:  green.Bold(true),
		Unfinished: red.Bold(true),
		Help: help.Styles{
			Ellipsis:       muted,
			ShortKey:       r.NewStyle().Bold(true),
			ShortDesc:      muted,
			ShortSeparator: muted,
			FullKey:        r.NewStyle().Bold(true),
			FullDesc:       muted,
			FullSeparator:  muted,
		},
	}
}

// fit truncates s (which may hold styles) to w cells, ending it with … when it was cut.
func fit(s string, w int) string {
	if w <= 0 {
		return ""
	}
	return ansi.Truncate(s, w, "…")
}

// cell renders plain text in style st, cut or padded to exactly w cells.
func cell(st lipgloss.Style, text string, w int) string {
	text = fit(text, w)
	pad := w - ansi.StringWidth(text)
	if pad < 0 {
		pad = 0
	}
	if text == "" {
		return strings.Repeat(" ", pad)
	}
	return st.Render(text) + strings.Repeat(" ", pad)
}
