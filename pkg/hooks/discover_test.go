package hooks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/events"
)

func TestParseStage(t *testing.T) {
	for _, s := range events.Stages() {
		if got, err := events.ParseStage(string(s)); err != nil || got != s {
			t.Errorf("ParseStage(%s) = %s, %v", s, got, err)
		}
	}
	_, err := events.ParseStage("preflight")
	if err == nil || !strings.Contains(err.Error(), "PreFlight, PreMaintenance, Maintenance, PostMaintenance") {
		t.Fatalf("ParseStage(preflight) = %v, want the list of stages", err)
	}
}

func TestRefusals(t *testing.T) {
	cases := []struct {
		name   string
		setup  func(t *testing.T, f *fixture)
		reason string
	}{
		{"symlink outside the dir", func(t *testing.T, f *fixture) {
			out := filepath.Join(f.tmp, "evil.sh")
			if err := os.WriteFile(out, []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(out, filepath.Join(f.hooks, "PreFlight")); err != nil {
				t.Fatal(err)
			}
		}, "outside the hooks dir"},
		{"world-writable", func(t *testing.T, f *fixture) {
			os.Chmod(f.script(t, "PreFlight", "exit 0"), 0o757)
		}, "writable by group or others"},
		{"group-writable", func(t *testing.T, f *fixture) {
			os.Chmod(f.script(t, "PreFlight.py", "exit 0"), 0o775)
		}, "writable by group or others"},
		{"not executable", func(t *testing.T, f *fixture) {
			os.Chmod(f.script(t, "PreFlight.sh", "exit 0"), 0o644)
		}, "not executable"},
		{"two candidates", func(t *testing.T, f *fixture) {
			f.script(t, "PreFlight", "exit 0")
			f.script(t, "PreFlight.sh", "exit 0")
		}, "more than one script for the stage: " /* both names follow */},
		{"directory", func(t *testing.T, f *fixture) {
			os.Mkdir(filepath.Join(f.hooks, "PreFlight"), 0o755)
		}, "not a regular file"},
		{"dangling symlink", func(t *testing.T, f *fixture) {
			os.Symlink(filepath.Join(f.hooks, "nope"), filepath.Join(f.hooks, "PreFlight"))
		}, "cannot resolve"},
		{"not owned by root or agent user", func(t *testing.T, f *fixture) {
			p := f.script(t, "PreFlight", "exit 0")
			if err := os.Chown(p, 4242, 4242); err != nil {
				t.Skip("chown needs root:", err)
			}
			if os.Getuid() == 4242 {
				t.Skip("running as uid 4242")
			}
		}, "owned by uid 4242"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			counter := filepath.Join(f.tmp, "count")
			c.setup(t, f)
			_, err := Resolve(f.hooks, events.PreFlight)
			var refused *RefusedError
			if !errors.As(err, &refused) || !strings.Contains(refused.Reason, c.reason) {
				t.Fatalf("Resolve = %v, want a refusal containing %q", err, c.reason)
			}
			if c.name == "two candidates" && (!strings.Contains(err.Error(), "PreFlight and ") || !strings.Contains(err.Error(), "PreFlight.sh")) {
				t.Errorf("error does not name both scripts: %v", err)
			}
			infos, err := Discover(f.hooks)
			if err != nil || len(infos) != 4 || !infos[0].Present || infos[0].Refused == "" || infos[1].Present {
				t.Fatalf("Discover = %+v, %v", infos, err)
			}
			for _, k := range kinds {
				e := f.executor(t, k)
				if _, err := e.Start(context.Background(), req("r-"+k.name, events.PreFlight)); !errors.As(err, &refused) {
					t.Errorf("%s Start = %v, want a refusal", k.name, err)
				}
			}
			if exists(counter) {
				t.Fatal("refused script ran")
			}
		})
	}
}

func TestDiscoverAccepts(t *testing.T) {
	f := newFixture(t)
	f.script(t, "PreFlight.sh", "exit 0")
	f.script(t, "real-maintenance", "exit 0")
	// A symlink that stays inside the dir is fine; the real path is what runs.
	if err := os.Symlink("real-maintenance", filepath.Join(f.hooks, "Maintenance.py")); err != nil {
		t.Fatal(err)
	}
	// The hooks dir itself may be reached through a symlink.
	link := filepath.Join(f.tmp, "hooks-link")
	if err := os.Symlink(f.hooks, link); err != nil {
		t.Fatal(err)
	}
	infos, err := Discover(link)
	if err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(f.hooks)
	want := []ScriptInfo{
		{Stage: events.PreFlight, Present: true, Path: filepath.Join(real, "PreFlight.sh")},
		{Stage: events.PreMaintenance},
		{Stage: events.Maintenance, Present: true, Path: filepath.Join(real, "real-maintenance")},
		{Stage: events.PostMaintenance},
	}
	for i := range want {
		if infos[i] != want[i] {
			t.Errorf("stage %d: got %+v, want %+v", i, infos[i], want[i])
		}
	}
	if _, err := Resolve(f.hooks, events.PreMaintenance); !errors.Is(err, ErrNoScript) {
		t.Errorf("missing script: %v", err)
	}
	if _, err := Discover(filepath.Join(f.tmp, "missing")); err == nil {
		t.Error("missing hooks dir: no error")
	}
}
