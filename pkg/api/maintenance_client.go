package api

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/kvmctl/kvmctl/pkg/safetext"
)

// Maintenance returns the agent's maintenance state.
func (c *Client) Maintenance(ctx context.Context) (Maintenance, error) {
	var m Maintenance
	err := c.do(ctx, http.MethodGet, PathMaintenance, nil, &m)
	return m, err
}

// EnterMaintenance puts the agent in hostInMaintenance: from its answer on it starts no VM
// (define, start) until CancelMaintenance. Entering again is not an error and keeps Since.
func (c *Client) EnterMaintenance(ctx context.Context) (Maintenance, error) {
	var m Maintenance
	err := c.do(ctx, http.MethodPost, PathMaintenance, nil, &m)
	return m, err
}

// CancelMaintenance puts the agent back Up. Cancelling an agent that is Up is not an error.
func (c *Client) CancelMaintenance(ctx context.Context) (Maintenance, error) {
	var m Maintenance
	err := c.do(ctx, http.MethodDelete, PathMaintenance, nil, &m)
	return m, err
}

// VMXML returns the persistent libvirt definition of the VM name, for DefineAndStartVM on
// another host.
func (c *Client) VMXML(ctx context.Context, name string) (string, error) {
	if err := c.checkVMName(name); err != nil {
		return "", err
	}
	var v VMXML
	if err := c.do(ctx, http.MethodGet, PathVM(name)+"/xml", nil, &v); err != nil {
		return "", err
	}
	return v.XML, nil
}

// DefineAndStartVM defines a VM from its libvirt XML and starts it. An agent in maintenance
// refuses with CodeInMaintenance; one where the VM already runs, with CodeConflict.
func (c *Client) DefineAndStartVM(ctx context.Context, xml string) error {
	return c.do(ctx, http.MethodPost, PathVMs, DefineVMRequest{XML: xml}, nil)
}

// StartVM starts the defined VM name. An agent in maintenance refuses with CodeInMaintenance; a
// VM that already runs is CodeConflict.
func (c *Client) StartVM(ctx context.Context, name string) error {
	if err := c.checkVMName(name); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPost, PathVM(name)+"/start", nil, nil)
}

// RemoveVM powers the VM name off at once and undefines it; agents in maintenance accept it,
// since that is how a host is emptied. An unknown VM is CodeNotFound.
func (c *Client) RemoveVM(ctx context.Context, name string) error {
	if err := c.checkVMName(name); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, PathVM(name), nil, nil)
}

// MigrateVM live-migrates the VM name to req.DestURI and returns when the migration has ended.
// A hypervisor that cannot migrate (libvirt's test driver) answers CodeMigrationUnsupported.
// Without a deadline on ctx the call waits up to the agent's MaxMigrateTimeout, not the
// client's request timeout.
func (c *Client) MigrateVM(ctx context.Context, name string, req MigrateRequest) error {
	if err := c.checkVMName(name); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		// The agent answers within MaxMigrateTimeout; the margin lets its answer arrive.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, MaxMigrateTimeout+time.Minute)
		defer cancel()
	}
	return c.do(ctx, http.MethodPost, PathVM(name)+"/migrate", req, nil)
}

func (c *Client) checkVMName(name string) error {
	if name == "" {
		return fmt.Errorf("agent %s: vm name is empty", c.host)
	}
	// The agent refuses it too; refused here, the request is never sent.
	if err := safetext.Check("vm name", name); err != nil {
		return fmt.Errorf("agent %s: %w", c.host, err)
	}
	return nil
}
