package agent

import (
	"net/http"
	"path/filepath"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
)

// loadState reads the maintenance state the agent left in its state dir, so that an agent
// restarted, or a host rebooted, during maintenance comes back in hostInMaintenance.
func (a *Agent) loadState() error {
	if a.cfg.StateDir == "" {
		return nil
	}
	res, err := a.state.load(filepath.Join(a.cfg.StateDir, MaintenanceFile), a.now())
	if err != nil {
		return err
	}
	m := a.state.Maintenance()
	switch {
	case res.Distrusted != nil:
		a.log.Error("maintenance state file is unreadable: starting in hostInMaintenance, which starts no VMs; cancel maintenance to rewrite it",
			"err", res.Distrusted)
	case m.AgentState == string(api.AgentStateInMaintenance):
		bootID, _ := a.BootID()
		a.log.Info("host is in maintenance, as before the restart", "since", m.Since,
			"rebooted", res.BootID != "" && bootID != "" && res.BootID != bootID)
	}
	return nil
}

func (a *Agent) handleGetMaintenance(w http.ResponseWriter, _ *http.Request) *httpError {
	writeJSON(w, http.StatusOK, a.state.Maintenance())
	return nil
}

// handleEnterMaintenance puts the host in maintenance. Once it has answered, the agent starts no
// VM until cancel; VMs may still be removed and migrated away, which is how the host is emptied.
func (a *Agent) handleEnterMaintenance(w http.ResponseWriter, r *http.Request) *httpError {
	// The boot id only tells a later log line that the host rebooted: not worth failing for.
	bootID, _ := a.BootID()
	m, changed, err := a.state.Enter(a.now(), bootID)
	if err != nil {
		return newHTTPError(api.CodeInternal, "enter maintenance: %v", err)
	}
	if changed {
		a.log.Info("entered maintenance", "operator", peerName(r), "since", m.Since)
	}
	writeJSON(w, http.StatusOK, m)
	return nil
}

// handleCancelMaintenance puts the host back Up.
func (a *Agent) handleCancelMaintenance(w http.ResponseWriter, r *http.Request) *httpError {
	before := a.state.Maintenance()
	m, changed, err := a.state.Cancel()
	if err != nil {
		return newHTTPError(api.CodeInternal, "cancel maintenance: %v", err)
	}
	if changed {
		a.log.Info("cancelled maintenance", "operator", peerName(r), "was_since", before.Since,
			"duration", a.now().Sub(before.Since).Truncate(time.Second))
	}
	writeJSON(w, http.StatusOK, m)
	return nil
}
