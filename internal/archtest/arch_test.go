// Package archtest checks that imports run the one way DESIGN.md draws them: kvmctl links no cgo
// and no libvirt, the TUI renders events and calls no agent, engines know no screen, the store
// knows no network and no rules, and the agent never touches kvmctl's state or engines.
package archtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/kvmctl/kvmctl/"

type pkg struct {
	ImportPath string
	Standard   bool
	CgoFiles   []string
	Imports    []string
}

// deps lists pattern's packages and everything they import, as `go list -deps` does.
func deps(t *testing.T, pattern string) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard,CgoFiles,Imports", pattern)
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pattern, err, stderr.String())
	}
	all := map[string]pkg{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		all[p.ImportPath] = p
	}
	return all
}

// chain explains how from reaches to, for an error message: the first import path found.
func chain(all map[string]pkg, from, to string) string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		if cur == to {
			var path []string
			for p := to; p != ""; p = prev[p] {
				path = append([]string{strings.TrimPrefix(p, module)}, path...)
			}
			return strings.Join(path, " -> ")
		}
		for _, next := range all[cur].Imports {
			if _, seen := prev[next]; !seen {
				prev[next] = cur
				queue = append(queue, next)
			}
		}
	}
	return to
}

// forbid fails when root depends on any package that starts with one of the prefixes.
func forbid(t *testing.T, root string, prefixes ...string) {
	t.Helper()
	all := deps(t, module+root)
	for path := range all {
		for _, p := range prefixes {
			if strings.HasPrefix(path, p) {
				t.Errorf("%s must not depend on %s: %s", root, p, chain(all, module+root, path))
			}
		}
	}
}

func TestKvmctlLinksNoCgo(t *testing.T) {
	for _, cmd := range []string{"cmd/kvmctl", "cmd/kvmagent-stage"} {
		if _, err := os.Stat(filepath.Join("../..", cmd)); err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		all := deps(t, module+cmd)
		for path, p := range all {
			if strings.HasPrefix(path, "libvirt.org/") {
				t.Errorf("%s links libvirt: %s", cmd, chain(all, module+cmd, path))
			}
			if !p.Standard && len(p.CgoFiles) > 0 {
				t.Errorf("%s links cgo through %s: %s", cmd, path, chain(all, module+cmd, path))
			}
		}
	}
	// And it really builds without a C compiler.
	build := exec.Command("go", "build", "-o", filepath.Join(t.TempDir(), "kvmctl"), "./cmd/kvmctl")
	build.Dir = "../.."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Errorf("CGO_ENABLED=0 go build ./cmd/kvmctl: %v\n%s", err, out)
	}
}

func TestTUIRendersEventsOnly(t *testing.T) {
	forbid(t, "pkg/tui", module+"pkg/api", module+"pkg/hooks", module+"pkg/orchestrate", module+"pkg/state", module+"pkg/agent")
}

func TestEnginesKnowNoScreen(t *testing.T) {
	for _, engine := range []string{"pkg/orchestrate", "pkg/ha", "pkg/fence", "pkg/notify", "pkg/journal", "pkg/holds", "pkg/clock"} {
		forbid(t, engine, module+"pkg/tui", module+"cmd/", "github.com/charmbracelet/", "charm.land/")
	}
}

func TestStoreKnowsNoNetworkNorRules(t *testing.T) {
	forbid(t, "pkg/state", "net", "crypto/tls", module+"pkg/api", module+"pkg/orchestrate", module+"pkg/agent",
		module+"pkg/settings", module+"pkg/inventory", module+"pkg/holds", module+"pkg/journal")
}

func TestAgentNeverTouchesKvmctlState(t *testing.T) {
	forbid(t, "pkg/agent", module+"pkg/state", module+"pkg/orchestrate", module+"pkg/journal", module+"pkg/holds",
		module+"pkg/inventory", module+"pkg/settings", module+"pkg/tui", module+"cmd/")
}

// The event vocabulary and the text rules are shared by kvmctl and kvmagent: leaves, so that
// neither side pulls in the other's packages through them.
func TestSharedLeavesImportNothingOfTheProject(t *testing.T) {
	for _, leaf := range []string{"pkg/events", "pkg/termtext", "pkg/safetext"} {
		for path := range deps(t, module+leaf) {
			if strings.HasPrefix(path, module) && path != module+leaf {
				t.Errorf("%s must import nothing of the project, but depends on %s", leaf, path)
			}
		}
	}
}
