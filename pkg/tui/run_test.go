package tui

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvmctl/kvmctl/pkg/events"
)

func TestRunExitsOnFinish(t *testing.T) {
	f := NewFeed(4)
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{ExitOnFinish: true})
	go func() {
		for _, e := range script()[:5] {
			_ = f.Emit(events.Event(e))
		}
		_ = f.Emit(events.Event{Type: events.RunFinished, RunState: "succeeded", Message: "1 hosts updated, 1 skipped", Time: t0.Add(time.Minute)})
		f.Close()
	}()
	var out bytes.Buffer
	detached, err := Run(context.Background(), m, f.Events(), nil, &out)
	if err != nil || detached {
		t.Fatalf("Run = %v, %v; want false, nil", detached, err)
	}
	if !strings.Contains(out.String(), "run succeeded: 1 hosts updated, 1 skipped") {
		t.Errorf("output lacks the summary:\n%s", out.String())
	}
}

func TestRunDetach(t *testing.T) {
	f := NewFeed(0)
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{})
	var out bytes.Buffer
	detached, err := Run(context.Background(), m, f.Events(), strings.NewReader("q"), &out)
	if err != nil || !detached {
		t.Fatalf("Run = %v, %v; want true, nil", detached, err)
	}
	f.Detach()
	// Nobody reads any more: the engine's Emit must not block.
	done := make(chan struct{})
	go func() { _ = f.Emit(events.Event{Type: events.HostDone}); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Emit blocked after Detach")
	}
	f.Close()
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m := newTestModel(&fakeClock{t: t0}, RollingOptions{})
	var out bytes.Buffer
	detached, err := Run(ctx, m, make(chan events.Event), nil, &out)
	if !errors.Is(err, context.Canceled) || detached {
		t.Fatalf("Run = %v, %v; want false, context.Canceled", detached, err)
	}
}

func TestFeedDeliversInOrderThenCloses(t *testing.T) {
	f := NewFeed(1)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				_ = f.Emit(events.Event{Type: events.VMMigrated, Host: "h", VM: string(rune('a' + g)), VMs: i})
			}
		}()
	}
	go func() { wg.Wait(); f.Close() }()
	last := map[string]int{}
	n := 0
	for e := range f.Events() {
		i := e.VMs
		if prev, ok := last[e.VM]; ok && i != prev+1 {
			t.Errorf("%s: %d after %d", e.VM, i, prev)
		}
		last[e.VM] = i
		n++
	}
	if n != 200 {
		t.Errorf("got %d events, want 200", n)
	}
	if err := f.Emit(events.Event{}); err != nil {
		t.Errorf("Emit after Close: %v", err)
	}
	f.Detach()
	f.Close()
}
