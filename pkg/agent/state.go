package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/fsutil"
)

// MaintenanceFile is the file in state.dir that holds the agent state, so that a host in
// maintenance stays in maintenance across an agent restart and a host reboot.
const MaintenanceFile = "maintenance.json"

// maintenanceFileVersion is the format of MaintenanceFile; a file of another version is not
// trusted (see load).
const maintenanceFileVersion = 1

// maintenanceRecord is MaintenanceFile's content.
type maintenanceRecord struct {
	Version    int            `json:"version"`
	AgentState api.AgentState `json:"agent_state"`
	Since      time.Time      `json:"since,omitzero"`
	// BootID is the host's boot id when maintenance was entered: another one at load time means
	// the host rebooted during maintenance, which the agent logs.
	BootID string `json:"boot_id,omitempty"`
}

// agentState is the agent's state machine: Up <-> hostInMaintenance, persisted in
// MaintenanceFile before it changes in memory, so what a client was told survives a crash.
type agentState struct {
	// gate orders VM starts against entering maintenance: a start holds it for reading from its
	// check until libvirt has answered, Enter and Cancel hold it for writing. So once Enter has
	// answered, no start is in flight and none begins.
	gate sync.RWMutex
	path string // MaintenanceFile's path; "" keeps the state in memory only

	// mu guards the values; it is only held briefly, so status never waits on a VM start.
	mu     sync.Mutex
	v      api.AgentState
	since  time.Time
	bootID string
}

func newAgentState() *agentState { return &agentState{v: api.AgentStateUp} }

// Get returns the current state.
func (s *agentState) Get() api.AgentState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v
}

// Maintenance returns the current state as the wire type.
func (s *agentState) Maintenance() api.Maintenance {
	s.mu.Lock()
	defer s.mu.Unlock()
	return api.Maintenance{AgentState: string(s.v), Since: s.since}
}

// loadResult says what load found, for the agent's log.
type loadResult struct {
	// Distrusted is set when the file could not be understood; the agent then starts in
	// maintenance, the state that starts no VM, until an operator cancels it.
	Distrusted error
	// BootID is the boot id recorded when maintenance was entered.
	BootID string
}

// load reads path into s; now stands in for a Since it cannot read. A missing file means Up. A file that cannot be parsed, or has an
// unknown version or state, puts s in hostInMaintenance (since the file's modification time):
// a host whose maintenance flag is unreadable must not start VMs, and cancelling maintenance
// rewrites the file. Only an error reading an existing file fails load.
func (s *agentState) load(path string, now time.Time) (loadResult, error) {
	s.gate.Lock()
	defer s.gate.Unlock()
	s.path = path
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return loadResult{}, nil
	}
	if err != nil {
		return loadResult{}, fmt.Errorf("read maintenance state: %w: fix its permissions, or remove it to start Up", err)
	}
	var rec maintenanceRecord
	err = json.Unmarshal(data, &rec)
	switch {
	case err != nil:
	case rec.Version != maintenanceFileVersion:
		err = fmt.Errorf("version %d, this agent knows %d", rec.Version, maintenanceFileVersion)
	case rec.AgentState != api.AgentStateUp && rec.AgentState != api.AgentStateInMaintenance:
		err = fmt.Errorf("unknown agent state %q", rec.AgentState)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.v, s.since = api.AgentStateInMaintenance, now.UTC().Truncate(time.Second)
		if fi, serr := os.Stat(path); serr == nil {
			s.since = fi.ModTime().UTC().Truncate(time.Second)
		}
		return loadResult{Distrusted: fmt.Errorf("%s: %w", path, err)}, nil
	}
	s.v, s.since, s.bootID = rec.AgentState, rec.Since, rec.BootID
	if s.v == api.AgentStateUp {
		s.since, s.bootID = time.Time{}, ""
	}
	return loadResult{BootID: rec.BootID}, nil
}

// Enter puts the host in maintenance at now, recording bootID, and reports whether it changed
// anything: entering again keeps the first Since. It waits for VM starts in flight.
func (s *agentState) Enter(now time.Time, bootID string) (api.Maintenance, bool, error) {
	s.gate.Lock()
	defer s.gate.Unlock()
	if s.Get() == api.AgentStateInMaintenance {
		return s.Maintenance(), false, nil
	}
	rec := maintenanceRecord{Version: maintenanceFileVersion, AgentState: api.AgentStateInMaintenance,
		Since: now.UTC().Truncate(time.Second), BootID: bootID}
	if err := s.save(rec); err != nil {
		return s.Maintenance(), false, err
	}
	s.apply(rec)
	return s.Maintenance(), true, nil
}

// Cancel puts the host back Up and reports whether it changed anything.
func (s *agentState) Cancel() (api.Maintenance, bool, error) {
	s.gate.Lock()
	defer s.gate.Unlock()
	if s.Get() == api.AgentStateUp {
		return s.Maintenance(), false, nil
	}
	rec := maintenanceRecord{Version: maintenanceFileVersion, AgentState: api.AgentStateUp}
	if err := s.save(rec); err != nil {
		return s.Maintenance(), false, err
	}
	s.apply(rec)
	return s.Maintenance(), true, nil
}

// BeginVMStart admits one VM start: it returns the function to call once libvirt has answered,
// or, in maintenance, ok false and the time maintenance began.
func (s *agentState) BeginVMStart() (done func(), since time.Time, ok bool) {
	s.gate.RLock()
	m := s.Maintenance()
	if m.AgentState == string(api.AgentStateInMaintenance) {
		s.gate.RUnlock()
		return nil, m.Since, false
	}
	return s.gate.RUnlock, time.Time{}, true
}

// Set changes the state in memory only, without the file and without a Since: for tests that
// need a state without going through Enter and Cancel.
func (s *agentState) Set(v api.AgentState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.v = v
}

func (s *agentState) apply(rec maintenanceRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.v, s.since, s.bootID = rec.AgentState, rec.Since, rec.BootID
}

// save writes rec to the file, if there is one, so that a crash leaves the old or the new
// state, never a mix: temp file, fsync, rename, fsync of the dir. The caller holds gate.
func (s *agentState) save(rec maintenanceRecord) error {
	if s.path == "" {
		return nil
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("save maintenance state: %w", err)
	}
	if err := fsutil.WriteFileAtomic(s.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save maintenance state %s: %w", s.path, err)
	}
	return nil
}
