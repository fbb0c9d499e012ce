package api

import (
	"context"
	"fmt"
	"net/http"

	"github.com/kvmctl/kvmctl/pkg/safetext"
)

// Health returns the agent's health report (GET /v1/health), which the agent answers from
// memory. Any answer means the agent serves; how its heartbeat writes go (stuck on a hung
// storage, failing) is in the report's Heartbeat.
func (c *Client) Health(ctx context.Context) (HealthReport, error) {
	var h HealthReport
	err := c.do(ctx, http.MethodGet, PathHealth, nil, &h)
	return h, err
}

// ActivityCheck asks the agent to read a suspect host's heartbeat and disks on the shared
// storage (POST /v1/activity-check); with no HeartbeatFile it reads the disks alone. A path the
// agent may not read refuses the whole request (an *Error with CodeBadRequest) and nothing is
// read; a file it could not read in time has its Error set in the result.
func (c *Client) ActivityCheck(ctx context.Context, req ActivityCheckRequest) (ActivityCheckResult, error) {
	// The agent refuses them too; refused here, the request is never sent.
	if err := safetext.Check("host name", req.Host); err != nil {
		return ActivityCheckResult{}, fmt.Errorf("agent %s: activity check: %w", c.host, err)
	}
	if err := safetext.Check("heartbeat file", req.HeartbeatFile); err != nil {
		return ActivityCheckResult{}, fmt.Errorf("agent %s: activity check: %w", c.host, err)
	}
	for _, d := range req.Disks {
		if err := safetext.Check("disk path", d); err != nil {
			return ActivityCheckResult{}, fmt.Errorf("agent %s: activity check: %w", c.host, err)
		}
	}
	if req.Disks == nil {
		req.Disks = []string{} // a host without VMs: [] rather than null on the wire
	}
	var res ActivityCheckResult
	err := c.do(ctx, http.MethodPost, PathActivityCheck, req, &res)
	return res, err
}
