package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kvmctl/kvmctl/pkg/api"
	"github.com/kvmctl/kvmctl/pkg/virt"
)

// sampleRequest stands for the request bodies later endpoints decode (stages, maintenance).
type sampleRequest struct {
	RunID   string `json:"run_id"`
	Stage   string `json:"stage"`
	Timeout int    `json:"timeout"`
	Payload string `json:"payload,omitempty"`
}

func TestDecodeJSON(t *testing.T) {
	for _, tc := range []struct {
		name, body, ctype string
		status            int
		code, msg         string
	}{
		{"ok", `{"run_id":"r1","stage":"PreFlight","timeout":60}`, "application/json", 0, "", ""},
		{"ok charset", `{"run_id":"r1"}`, "application/json; charset=utf-8", 0, "", ""},
		{"ok no content type", `{"run_id":"r1"}`, "", 0, "", ""},
		{"syntax", `{"run_id":`, "", 400, api.CodeBadRequest, "truncated"},
		{"garbage", `{"run_id" 1}`, "", 400, api.CodeBadRequest, "bad JSON at byte"},
		{"unknown field", `{"run_id":"r1","forced":true}`, "", 400, api.CodeBadRequest, `unknown field "forced"`},
		{"wrong type", `{"timeout":"soon"}`, "", 400, api.CodeBadRequest, `field "timeout" wants int`},
		{"empty", ``, "", 400, api.CodeBadRequest, "empty request body"},
		{"two values", `{}{}`, "", 400, api.CodeBadRequest, "more than one JSON value"},
		{"trailing garbage", `{} x`, "", 400, api.CodeBadRequest, "invalid character"},
		{"too large", `{"payload":"` + strings.Repeat("a", MaxRequestBytes) + `"}`, "", 413, api.CodeTooLarge, "larger than 1048576 bytes"},
		{"content type", `{}`, "text/plain", 415, api.CodeBadRequest, "send application/json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, api.PathStages, strings.NewReader(tc.body))
			if tc.ctype != "" {
				r.Header.Set("Content-Type", tc.ctype)
			}
			w := httptest.NewRecorder()
			var v sampleRequest
			e := decodeJSON(w, r, &v)
			if tc.status == 0 {
				if e != nil {
					t.Fatalf("decodeJSON = %v", e)
				}
				if v.RunID != "r1" {
					t.Errorf("decoded %+v", v)
				}
				return
			}
			if e == nil {
				t.Fatalf("decodeJSON accepted %q", abbreviate(tc.body))
			}
			if e.Status != tc.status || e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("decodeJSON = %d %s %q, want %d %s containing %q", e.Status, e.Code, e.Msg, tc.status, tc.code, tc.msg)
			}
			// What the client gets.
			writeError(w, e)
			var eb api.ErrorBody
			if err := json.Unmarshal(w.Body.Bytes(), &eb); err != nil || eb.Code != tc.code || eb.Error != e.Msg || w.Code != tc.status {
				t.Errorf("answer %d %q (%v)", w.Code, w.Body.String(), err)
			}
		})
	}
}

// FuzzDecodeRequest: the request decoder never panics, never accepts a body over its limit and
// never accepts what encoding/json would refuse.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"run_id":"r1","stage":"PreFlight","timeout":60,"payload":"a b"}`,
		`{}`, `[]`, `null`, `{"x":1}`, `{"timeout":1e999}`, `{"run_id":"\ud800"}`, `{} {}`, ` {}  `,
		`{"payload":"` + strings.Repeat("a", 100) + `"}`, "\x00", `{"run_id":"a","run_id":"b"}`,
	} {
		f.Add([]byte(s))
	}
	const limit = 64
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest(http.MethodPost, api.PathStages, bytes.NewReader(body))
		w := httptest.NewRecorder()
		var v sampleRequest
		e := decodeJSONLimit(w, r, &v, limit)
		if e == nil {
			if len(body) > limit {
				t.Fatalf("accepted %d bytes over a limit of %d", len(body), limit)
			}
			if !json.Valid(body) {
				t.Fatalf("accepted invalid JSON %q", body)
			}
			return
		}
		if e.Status < 400 || e.Status > 499 || e.Code == "" || e.Msg == "" {
			t.Fatalf("bad refusal %+v", e)
		}
	})
}

func TestMiddlewareRecoversPanics(t *testing.T) {
	f := newFleet(t)
	a, err := New(f.testConfig("kvm1", "b"), panicHypervisor{})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	a.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, api.PathStatus, nil))
	body, _ := io.ReadAll(w.Body)
	if w.Code != http.StatusInternalServerError || !bytes.Contains(body, []byte(`"code":"internal"`)) {
		t.Errorf("panic answer = %d %s", w.Code, body)
	}
}

// panicHypervisor panics on every call (its embedded interface is nil), standing for a bug in
// a handler.
type panicHypervisor struct{ virt.Hypervisor }
