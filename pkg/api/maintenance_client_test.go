package api

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorded is one request as the test server saw it.
type recorded struct{ method, path, body string }

// fakeAgent is an HTTPS server that records requests and answers each with status and body.
func fakeAgent(t *testing.T, status int, body string, opts ...Option) (*Client, func() []recorded) {
	return slowFakeAgent(t, 0, status, body, opts...)
}

// slowFakeAgent is fakeAgent answering after delay.
func slowFakeAgent(t *testing.T, delay time.Duration, status int, body string, opts ...Option) (*Client, func() []recorded) {
	t.Helper()
	var (
		mu  sync.Mutex
		got []recorded
	)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, recorded{method: r.Method, path: r.URL.EscapedPath(), body: string(b)})
		mu.Unlock()
		time.Sleep(delay)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	tc := srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
	tc.ServerName = "example.com" // in httptest's certificate
	tc.MinVersion = tls.VersionTLS12
	c := NewClient("kvm1", srv.Listener.Addr().String(), tc, opts...)
	t.Cleanup(c.Close)
	return c, func() []recorded {
		mu.Lock()
		defer mu.Unlock()
		return append([]recorded(nil), got...)
	}
}

func TestMaintenanceClientRequests(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name         string
		call         func(c *Client) error
		method, path string
		body         string
	}{
		{"EnterMaintenance", func(c *Client) error { _, err := c.EnterMaintenance(ctx); return err },
			http.MethodPost, "/v1/maintenance", ""},
		{"CancelMaintenance", func(c *Client) error { _, err := c.CancelMaintenance(ctx); return err },
			http.MethodDelete, "/v1/maintenance", ""},
		{"Maintenance", func(c *Client) error { _, err := c.Maintenance(ctx); return err },
			http.MethodGet, "/v1/maintenance", ""},
		{"VMXML", func(c *Client) error { _, err := c.VMXML(ctx, "my vm/1"); return err },
			http.MethodGet, "/v1/vms/my%20vm%2F1/xml", ""},
		{"DefineAndStartVM", func(c *Client) error { return c.DefineAndStartVM(ctx, "<domain/>") },
			http.MethodPost, "/v1/vms", `{"xml":"\u003cdomain/\u003e"}`},
		{"StartVM", func(c *Client) error { return c.StartVM(ctx, "web1") },
			http.MethodPost, "/v1/vms/web1/start", ""},
		{"RemoveVM", func(c *Client) error { return c.RemoveVM(ctx, "web?1") },
			http.MethodDelete, "/v1/vms/web%3F1", ""},
		{"MigrateVM", func(c *Client) error {
			return c.MigrateVM(ctx, "web1", MigrateRequest{DestURI: "qemu+tls://kvm2/system", TimeoutS: 60})
		}, http.MethodPost, "/v1/vms/web1/migrate", `{"dest_uri":"qemu+tls://kvm2/system","timeout_s":60}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, got := fakeAgent(t, http.StatusOK, `{"agent_state":"hostInMaintenance","name":"web1","xml":"<domain/>"}`)
			if err := tc.call(c); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			reqs := got()
			if len(reqs) != 1 || reqs[0].method != tc.method || reqs[0].path != tc.path || reqs[0].body != tc.body {
				t.Errorf("%s sent %+v, want %s %s %s", tc.name, reqs, tc.method, tc.path, tc.body)
			}
		})
	}
}

func TestMaintenanceClientAnswers(t *testing.T) {
	ctx := context.Background()
	c, _ := fakeAgent(t, http.StatusOK, `{"agent_state":"hostInMaintenance","since":"2025-03-01T10:00:00Z"}`)
	m, err := c.EnterMaintenance(ctx)
	if err != nil || m.AgentState != string(AgentStateInMaintenance) || !m.Since.Equal(time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("EnterMaintenance = %+v, %v", m, err)
	}

	c, _ = fakeAgent(t, http.StatusOK, `{"name":"web1","xml":"<domain><name>web1</name></domain>"}`)
	if x, err := c.VMXML(ctx, "web1"); err != nil || x != "<domain><name>web1</name></domain>" {
		t.Errorf("VMXML = %q, %v", x, err)
	}

	c, _ = fakeAgent(t, http.StatusConflict, `{"error":"host is in maintenance","code":"in_maintenance"}`)
	err = c.DefineAndStartVM(ctx, "<domain/>")
	if !IsCode(err, CodeInMaintenance) || !strings.Contains(err.Error(), "host is in maintenance") {
		t.Errorf("DefineAndStartVM refused = %v, want %s", err, CodeInMaintenance)
	}

	c, _ = fakeAgent(t, http.StatusNoContent, "")
	if err := c.RemoveVM(ctx, "web1"); err != nil {
		t.Errorf("RemoveVM with 204: %v", err)
	}
}

func TestMaintenanceClientRefusesEmptyName(t *testing.T) {
	c, got := fakeAgent(t, http.StatusOK, `{}`)
	ctx := context.Background()
	_, err := c.VMXML(ctx, "")
	for _, err := range []error{err, c.StartVM(ctx, ""), c.RemoveVM(ctx, ""), c.MigrateVM(ctx, "", MigrateRequest{DestURI: "x"})} {
		if err == nil || !strings.Contains(err.Error(), "vm name is empty") {
			t.Errorf("err = %v, want vm name is empty", err)
		}
	}
	if reqs := got(); len(reqs) != 0 {
		t.Errorf("sent %+v for an empty name", reqs)
	}
}

func TestMaintenanceCodesHTTPStatus(t *testing.T) {
	for code, want := range map[string]int{
		CodeInMaintenance: 409, CodeConflict: 409, CodeMigrationUnsupported: 501,
	} {
		if got := HTTPStatus(code); got != want {
			t.Errorf("HTTPStatus(%q) = %d, want %d", code, got, want)
		}
	}
}

func TestPathVM(t *testing.T) {
	if got, want := PathVM("a b/c"), "/v1/vms/a%20b%2Fc"; got != want {
		t.Errorf("PathVM = %q, want %q", got, want)
	}
}

// A migration outlasts the client's request timeout: MigrateVM waits for the agent's answer.
func TestMigrateVMOutlastsRequestTimeout(t *testing.T) {
	c, _ := slowFakeAgent(t, 300*time.Millisecond, http.StatusNoContent, "", WithRequestTimeout(100*time.Millisecond))
	ctx := context.Background()
	if err := c.StartVM(ctx, "web1"); !IsUnreachable(err) {
		t.Fatalf("StartVM past the request timeout = %v, want unreachable", err)
	}
	if err := c.MigrateVM(ctx, "web1", MigrateRequest{DestURI: "qemu+tls://kvm2/system"}); err != nil {
		t.Fatalf("MigrateVM: %v", err)
	}
}
