package api

import (
	"context"
	"net/http"
)

// Health returns the agent's health report (GET /v1/health), which the agent answers from
// memory. Any answer means the agent lives; OK false says that something it watches (its
// heartbeat writes) is not well.
func (c *Client) Health(ctx context.Context) (HealthReport, error) {
	var h HealthReport
	err := c.do(ctx, http.MethodGet, PathHealth, nil, &h)
	return h, err
}
