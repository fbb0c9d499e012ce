package agent

import (
	"sync"

	"github.com/kvmctl/kvmctl/pkg/api"
)

// agentState holds the agent's state. It is a type of its own because maintenance will make it
// change at run time and persist it in the state dir (so it survives a restart); today it is
// always Up.
type agentState struct {
	mu sync.Mutex
	v  api.AgentState
}

func newAgentState() *agentState { return &agentState{v: api.AgentStateUp} }

// Get returns the current state.
func (s *agentState) Get() api.AgentState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v
}

// Set changes the state.
func (s *agentState) Set(v api.AgentState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.v = v
}
