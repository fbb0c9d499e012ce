package agent

import (
	"encoding/xml"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/safetext"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// migrateAbortMargin is how long before its handler times out the agent has libvirt abort a
// migration, so that the client hears how the migration ended rather than a bare timeout.
const migrateAbortMargin = 30 * time.Second

// hypervisorName is libvirt's driver name for uri: "test" for test:///..., "qemu" for
// qemu:///system or qemu+tls://host/system. It is what Status.Hypervisor reports.
func hypervisorName(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return ""
	}
	driver, _, _ := strings.Cut(strings.ToLower(u.Scheme), "+")
	return driver
}

// vmError turns a virt error into the agent's answer.
func vmError(err error) *httpError {
	switch {
	case errors.Is(err, virt.ErrVMNotFound):
		return newHTTPError(api.CodeNotFound, "%v", err)
	case errors.Is(err, virt.ErrVMRunning):
		return newHTTPError(api.CodeConflict, "%v", err)
	case errors.Is(err, virt.ErrDomainRefused):
		return newHTTPError(api.CodeBadRequest, "%v", err)
	case errors.Is(err, virt.ErrMigrationUnsupported):
		return newHTTPError(api.CodeMigrationUnsupported, "%v", err)
	case errors.Is(err, virt.ErrMigrationTimeout):
		return newHTTPError(api.CodeTimeout, "%v", err)
	default:
		return newHTTPError(api.CodeHypervisor, "%v", err)
	}
}

// inMaintenance is the refusal of a VM start on a host in maintenance.
func (a *Agent) inMaintenance(since time.Time) *httpError {
	return newHTTPError(api.CodeInMaintenance, "host is in maintenance (since %s) and starts no VMs: cancel maintenance first (`kvmctl maintenance cancel %s`)",
		since.UTC().Format(time.RFC3339), a.cfg.HostName)
}

// vmName is the VM name of the request's path, refused unless it is printable text: libvirt
// reads a name up to its first NUL, so "web1\x00" acted on web1.
func vmName(r *http.Request) (string, *httpError) {
	name := r.PathValue("name")
	if err := safetext.Check("vm name", name); err != nil {
		return "", newHTTPError(api.CodeBadRequest, "%v", err)
	}
	return name, nil
}

// checkDomainNames refuses a domain XML with a <name> that is not printable text. It reads the
// names as libvirt does, untrimmed: virt.ParseDomainXML trims spaces, U+0085 among them.
func checkDomainNames(domainXML string) *httpError {
	var d struct {
		Names []string `xml:"name"`
	}
	if err := xml.Unmarshal([]byte(domainXML), &d); err != nil {
		return newHTTPError(api.CodeBadRequest, "bad domain xml: %v", err)
	}
	for _, n := range d.Names {
		if err := safetext.Check("vm name", n); err != nil {
			return newHTTPError(api.CodeBadRequest, "%v", err)
		}
	}
	return nil
}

// findVM returns the VM name as ListVMs reports it, with its run state.
func (a *Agent) findVM(name string) (virt.VM, *httpError) {
	vms, err := a.hv.ListVMs()
	if err != nil {
		return virt.VM{}, newHTTPError(api.CodeHypervisor, "list vms: %v", err)
	}
	for _, vm := range vms {
		if vm.Name == name {
			return vm, nil
		}
	}
	return virt.VM{}, newHTTPError(api.CodeNotFound, "vm %q: %v", name, virt.ErrVMNotFound)
}

// handleVMXML answers the persistent definition of a VM, for a define on another host.
func (a *Agent) handleVMXML(w http.ResponseWriter, r *http.Request) *httpError {
	name, e := vmName(r)
	if e != nil {
		return e
	}
	x, err := a.hv.DomainXML(name)
	if err != nil {
		return vmError(err)
	}
	writeJSON(w, http.StatusOK, api.VMXML{Name: name, XML: x})
	return nil
}

// handleDefineVM defines a VM from its XML and starts it; 201 with the VM. Refused in
// maintenance: this is also how a VM would move in from a host without live migration.
func (a *Agent) handleDefineVM(w http.ResponseWriter, r *http.Request) *httpError {
	var req api.DefineVMRequest
	if e := decodeJSON(w, r, &req); e != nil {
		return e
	}
	if strings.TrimSpace(req.XML) == "" {
		return newHTTPError(api.CodeBadRequest, "xml is empty: send the VM's libvirt domain XML")
	}
	parsed, err := virt.ParseDomainXML(req.XML)
	if err != nil {
		return newHTTPError(api.CodeBadRequest, "bad domain xml: %v", err)
	}
	if e := checkDomainNames(req.XML); e != nil {
		return e
	}
	// The agent defines as root what it is sent: only what a normal VM needs, checked before
	// libvirt sees it and again on libvirt's own reading of it.
	check := func(x string) error { return virt.CheckDomain(x, a.cfg.VMDiskDirs) }
	if err := check(req.XML); err != nil {
		return newHTTPError(api.CodeBadRequest, "vm %q: %v", parsed.Name, err)
	}
	done, since, ok := a.state.BeginVMStart()
	if !ok {
		return a.inMaintenance(since)
	}
	if e := a.checkRedefine(parsed); e != nil {
		done()
		return e
	}
	err = a.hv.DefineAndStart(req.XML, check)
	done()
	if err != nil {
		return vmError(err)
	}
	a.log.Info("vm defined and started", "vm", parsed.Name, "operator", peerName(r))
	vm, e := a.findVM(parsed.Name)
	if e != nil {
		// Started, but gone from the listing already: answer with what was asked for.
		vm = parsed
		vm.State = virt.StateRunning
	}
	writeJSON(w, http.StatusCreated, wireVM(vm))
	return nil
}

// checkRedefine refuses a definition that would replace another VM of the same name: the
// moved VM keeps its UUID, so a different one is another VM.
func (a *Agent) checkRedefine(vm virt.VM) *httpError {
	existing, e := a.findVM(vm.Name)
	if e != nil {
		if e.Code == api.CodeNotFound {
			return nil
		}
		return e
	}
	// libvirt accepts a UUID with or without dashes, in either case.
	norm := func(u string) string { return strings.ToLower(strings.ReplaceAll(u, "-", "")) }
	if vm.UUID != "" && existing.UUID != "" && norm(existing.UUID) != norm(vm.UUID) {
		return newHTTPError(api.CodeBadRequest, "vm %q already exists here with uuid %s, not %s: a define would replace another VM; remove it first or rename the new one",
			vm.Name, existing.UUID, vm.UUID)
	}
	return nil
}

// handleStartVM starts a defined VM; refused in maintenance, and for a VM that already runs.
func (a *Agent) handleStartVM(w http.ResponseWriter, r *http.Request) *httpError {
	name, e := vmName(r)
	if e != nil {
		return e
	}
	done, since, ok := a.state.BeginVMStart()
	if !ok {
		return a.inMaintenance(since)
	}
	vm, e := a.findVM(name)
	if e == nil && vm.State.Active() {
		e = newHTTPError(api.CodeConflict, "vm %q is already %s", name, vm.State)
	}
	if e == nil {
		if err := a.hv.Start(name); err != nil {
			e = vmError(err)
		}
	}
	done()
	if e != nil {
		return e
	}
	a.log.Info("vm started", "vm", name, "operator", peerName(r))
	if vm, e = a.findVM(name); e != nil {
		vm = virt.VM{Name: name, State: virt.StateRunning}
	}
	writeJSON(w, http.StatusOK, wireVM(vm))
	return nil
}

// handleRemoveVM powers a VM off at once and undefines it: 204. Allowed in maintenance, where it
// is how the host is emptied once the VM runs elsewhere.
func (a *Agent) handleRemoveVM(w http.ResponseWriter, r *http.Request) *httpError {
	name, e := vmName(r)
	if e != nil {
		return e
	}
	if err := a.hv.Destroy(name); err != nil {
		return vmError(err)
	}
	if err := a.hv.Undefine(name); err != nil {
		return vmError(err)
	}
	a.log.Info("vm removed", "vm", name, "operator", peerName(r))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// handleMigrateVM live-migrates a VM to another host (dest_uri, qemu+tls://HOST/system only) and
// answers 204 when it is there. Allowed
// in maintenance: it moves a VM out. The target's libvirt defines the VM without asking its
// agent, which is why kvmctl checks the target's agent state before it migrates.
func (a *Agent) handleMigrateVM(w http.ResponseWriter, r *http.Request) *httpError {
	name, e := vmName(r)
	if e != nil {
		return e
	}
	var req api.MigrateRequest
	if e := decodeJSON(w, r, &req); e != nil {
		return e
	}
	if err := safetext.Check("dest_uri", req.DestURI); err != nil {
		return newHTTPError(api.CodeBadRequest, "%v", err)
	}
	// libvirt connects to dest_uri as root with this host's credentials: only the one form
	// kvmctl builds from its inventory is followed.
	if err := api.CheckMigrationURI(req.DestURI); err != nil {
		return newHTTPError(api.CodeBadRequest, "dest_uri %q refused: %v", req.DestURI, err)
	}
	limit := api.MaxMigrateTimeout - migrateAbortMargin
	// The integer is checked before it becomes a Duration, which a huge one would overflow.
	if req.TimeoutS < 0 || int64(req.TimeoutS) > int64(api.MaxMigrateTimeout/time.Second) {
		return newHTTPError(api.CodeBadRequest, "timeout_s %d: want 0 (the agent's maximum) up to %d", req.TimeoutS, int(api.MaxMigrateTimeout.Seconds()))
	}
	opts := virt.MigrateOptions{BandwidthMiBs: req.BandwidthMiBs, Timeout: limit}
	if req.TimeoutS > 0 {
		opts.Timeout = min(limit, time.Duration(req.TimeoutS)*time.Second)
	}
	start := a.now()
	if err := a.hv.Migrate(name, req.DestURI, opts); err != nil {
		if errors.Is(err, virt.ErrMigrationUnsupported) {
			return newHTTPError(api.CodeMigrationUnsupported, "%v: this host's hypervisor is %q; move the VM by defining it on the target and removing it here",
				err, hypervisorName(a.cfg.LibvirtURI))
		}
		return vmError(err)
	}
	a.log.Info("vm migrated", "vm", name, "to", req.DestURI, "operator", peerName(r), "duration", a.now().Sub(start))
	w.WriteHeader(http.StatusNoContent)
	return nil
}
