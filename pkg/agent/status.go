package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

func (a *Agent) handleHealthz(w http.ResponseWriter, _ *http.Request) *httpError {
	writeJSON(w, http.StatusOK, api.Health{OK: true})
	return nil
}

// handleHealth answers GET /v1/health from memory: no libvirt call, no file read, so that it
// answers at once whatever the hypervisor or the shared storage do.
func (a *Agent) handleHealth(w http.ResponseWriter, _ *http.Request) *httpError {
	writeJSON(w, http.StatusOK, a.Health())
	return nil
}

// Health is what GET /v1/health answers. OK is true: an agent that answers is serving. How its
// heartbeat writes go (stuck, failing) is in Heartbeat, for kvmctl's monitor to judge with the
// neighbours' reads: a hung storage is a fact about the host's storage, not an agent failure.
func (a *Agent) Health() api.HealthReport {
	h := api.HealthReport{OK: true, Host: a.cfg.HostName, BootID: a.bootID, AgentState: a.state.Get()}
	if a.heartbeat != nil {
		hb := a.heartbeat.Health()
		h.Heartbeat = &hb
	}
	return h
}

func (a *Agent) handleStatus(w http.ResponseWriter, _ *http.Request) *httpError {
	s, err := a.status()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s)
	return nil
}

// Status gathers what GET /v1/status answers: identity, boot id, capacity and VMs, read afresh
// on every call (the lab changes the boot id file to simulate a reboot).
func (a *Agent) Status() (api.Status, error) {
	s, err := a.status()
	if err != nil {
		return s, err
	}
	return s, nil
}

func (a *Agent) status() (api.Status, *httpError) {
	bootID, err := a.BootID()
	if err != nil {
		return api.Status{}, newHTTPError(api.CodeInternal, "%v", err)
	}
	capacity, err := a.hv.NodeInfo()
	if err != nil {
		return api.Status{}, newHTTPError(api.CodeHypervisor, "node info: %v", err)
	}
	vms, err := a.hv.ListVMs()
	if err != nil {
		return api.Status{}, newHTTPError(api.CodeHypervisor, "list vms: %v", err)
	}
	alloc := virt.Allocation(vms)
	s := api.Status{
		HostName:     a.cfg.HostName,
		AgentVersion: a.version,
		Hypervisor:   hypervisorName(a.cfg.LibvirtURI),
		BootID:       bootID,
		StartedAt:    a.startedAt,
		AgentState:   a.state.Get(),
		Capacity:     api.Resources{CPUs: capacity.CPUs, MemoryMiB: capacity.MemoryMiB},
		Allocation:   api.Resources{CPUs: alloc.CPUs, MemoryMiB: alloc.MemoryMiB},
		VMs:          make([]api.VM, 0, len(vms)),
	}
	for _, vm := range vms {
		w := wireVM(vm)
		x, err := a.hv.DomainXML(vm.Name)
		switch {
		case errors.Is(err, virt.ErrVMNotFound):
			// Undefined since the listing: it has no definition any more.
		case err != nil:
			return api.Status{}, newHTTPError(api.CodeHypervisor, "definition of vm %q: %v", vm.Name, err)
		default:
			w.DefinitionHash = definitionHash(x)
		}
		s.VMs = append(s.VMs, w)
	}
	return s, nil
}

// definitionHash is the hex SHA-256 of a VM's definition exactly as GET /v1/vms/{name}/xml
// answers it (api.VM.DefinitionHash).
func definitionHash(domainXML string) string {
	sum := sha256.Sum256([]byte(domainXML))
	return hex.EncodeToString(sum[:])
}

func wireVM(vm virt.VM) api.VM {
	out := api.VM{
		Name:      vm.Name,
		UUID:      vm.UUID,
		State:     string(vm.State),
		VCPUs:     vm.VCPUs,
		MemoryMiB: vm.MemoryMiB,
		// Empty lists, not null: clients iterate without a nil check in any language.
		Disks:  append([]string{}, vm.Disks...),
		Tags:   append([]string{}, vm.RequiredTags...),
		Groups: make([]api.AffinityGroup, 0, len(vm.AffinityGroups)),
	}
	for _, g := range vm.AffinityGroups {
		out.Groups = append(out.Groups, api.AffinityGroup{Name: g.Name, Type: g.Type})
	}
	return out
}

// BootID returns the host's boot id from boot.id.file, which changes on every boot. The hooks
// executors take it as their BootID function, so that the lab's simulated reboots count.
func (a *Agent) BootID() (string, error) {
	b, err := os.ReadFile(a.cfg.BootIDFile)
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("read boot id: %s is empty", a.cfg.BootIDFile)
	}
	return id, nil
}
