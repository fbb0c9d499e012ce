package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

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
		// What encoding/json takes silently.
		{"duplicate key", `{"run_id":"r1","stage":"PreFlight","stage":"Maintenance"}`, "", 400, api.CodeBadRequest, `duplicate key "stage": send each key once`},
		{"duplicate by escape", `{"run_id":"r1","run_\u0069d":"r2"}`, "", 400, api.CodeBadRequest, `duplicate key "run_id"`},
		{"duplicate unknown", `{"run_id":"r1","x":1,"x":2}`, "", 400, api.CodeBadRequest, `unknown field "x": the fields are payload, run_id, stage, timeout`},
		{"case variant", `{"run_id":"r1","Stage":"PreFlight"}`, "", 400, api.CodeBadRequest, `key "Stage" is not "stage": keys are case-sensitive, send "stage"`},
		{"upper case", `{"RUN_ID":"r1"}`, "", 400, api.CodeBadRequest, `key "RUN_ID" is not "run_id"`},
		{"unicode fold", `{"run_id":"r1","ſtage":"PreFlight"}`, "", 400, api.CodeBadRequest, `key "ſtage" is not "stage"`},
		{"case variant after the key", `{"run_id":"r1","Run_Id":"r2"}`, "", 400, api.CodeBadRequest, `key "Run_Id" is not "run_id"`},
		{"not utf-8", "{\"run_id\":\"r1\xff\"}", "", 400, api.CodeBadRequest, "request body is not UTF-8: invalid byte 0xff at byte 13"},
		{"not utf-8 after DEL", "{\"run_id\":\"\x7f\xff\"}", "", 400, api.CodeBadRequest, "request body is not UTF-8: invalid byte 0xff at byte 12"},
		{"whitespace only", " \n", "", 400, api.CodeBadRequest, "empty request body"},
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

// nestedRequest has every shape the key check walks: a struct in a struct, a slice of structs, a
// map, an interface, a pointer and a type with its own decoder.
type nestedRequest struct {
	Name  string            `json:"name"`
	Inner *sampleRequest    `json:"inner,omitempty"`
	Items []struct{ K int } `json:"items"`
	Meta  map[string]any    `json:"meta"`
	Any   any               `json:"any"`
	At    time.Time         `json:"at"`
}

func TestDecodeJSONNested(t *testing.T) {
	for _, tc := range []struct{ body, msg string }{
		{`{"inner":{"run_id":"a","run_id":"b"}}`, `duplicate key "run_id" in inner: send each key once`},
		{`{"inner":{"Run_ID":"a"}}`, `key "Run_ID" in inner is not "run_id"`},
		{`{"items":[{"K":1},{"k":2}]}`, `key "k" in items[1] is not "K"`},
		{`{"items":[{"K":1,"K":2}]}`, `duplicate key "K" in items[0]`},
		{`{"meta":{"a":1,"b":{"c":1,"c":2}}}`, `duplicate key "c" in meta.b`},
		{`{"meta":{"a":1,"a":2}}`, `duplicate key "a" in meta`},
		{`{"any":[{"x":{"y":1,"y":1}}]}`, `duplicate key "y" in any[0].x`},
		{`{"inner":{"nope":1}}`, `unknown field "nope" in inner: the fields are payload, run_id, stage, timeout`},
		{`{"any":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, "JSON nested deeper than 32 levels"},
	} {
		r := httptest.NewRequest(http.MethodPost, api.PathStages, strings.NewReader(tc.body))
		var v nestedRequest
		e := decodeJSON(httptest.NewRecorder(), r, &v)
		if e == nil || e.Status != http.StatusBadRequest || !strings.Contains(e.Msg, tc.msg) {
			t.Errorf("%s: %v, want 400 containing %q", tc.body, e, tc.msg)
		}
	}
	// What is exact is taken, a map's keys are free, a time is its own decoder's business.
	body := `{"name":"n","inner":{"run_id":"r1"},"items":[{"K":1}],"meta":{"Name":1,"NAME":2},"any":{"a":{"A":1}},"at":"2026-01-02T03:04:05Z"}`
	var v nestedRequest
	if e := decodeJSON(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, api.PathStages, strings.NewReader(body)), &v); e != nil {
		t.Fatalf("exact nested body: %v", e)
	}
	if v.Inner.RunID != "r1" || v.Items[0].K != 1 || len(v.Meta) != 2 || v.At.Year() != 2026 {
		t.Errorf("decoded %+v", v)
	}
}

// FuzzDecodeRequest: the request decoder never panics, never accepts a body over its limit,
// never accepts what encoding/json would refuse, and what it accepts has each key once per
// object and every struct key spelt exactly as its field.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"run_id":"r1","stage":"PreFlight","timeout":60,"payload":"a b"}`,
		`{}`, `[]`, `null`, `{"x":1}`, `{"timeout":1e999}`, `{"run_id":"\ud800"}`, `{} {}`, ` {}  `,
		`{"payload":"` + strings.Repeat("a", 100) + `"}`, "\x00", `{"run_id":"a","run_id":"b"}`,
		`{"Stage":"x"}`, `{"\u017ftage":"x"}`, `{"run_\u0069d":"a"}`, "{\"run_id\":\"\xff\"}",
		`{"inner":{"run_id":"a"},"items":[{"K":1}],"meta":{"a":{"b":1}},"any":[{"c":2}]}`,
		`{"meta":{"a":1,"a":2}}`, `{"items":[{"k":1}]}`,
		// Raw DEL and U+0085 are valid in a JSON string: the UTF-8 check must look past them.
		"{\"run_id\":\"\x7f\xff\"}", "{\"payload\":\"\u0085\xfe\"}",
	} {
		f.Add([]byte(s))
	}
	const limit = 256
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, v := range []any{new(sampleRequest), new(nestedRequest)} {
			r := httptest.NewRequest(http.MethodPost, api.PathStages, bytes.NewReader(body))
			w := httptest.NewRecorder()
			e := decodeJSONLimit(w, r, v, limit)
			if e != nil {
				if e.Status < 400 || e.Status > 499 || e.Code == "" || e.Msg == "" {
					t.Fatalf("bad refusal %+v", e)
				}
				continue
			}
			if len(body) > limit {
				t.Fatalf("accepted %d bytes over a limit of %d", len(body), limit)
			}
			if !json.Valid(body) || !utf8.Valid(body) {
				t.Fatalf("accepted invalid JSON %q", body)
			}
			if bad := strictKeysViolation(body, v); bad != "" {
				t.Fatalf("accepted %q into %T: %s", body, v, bad)
			}
		}
	})
}

// strictKeysViolation finds, independently of checkKeys, a key that appears twice in one object
// of body, or a key of the top-level object (or of sampleRequest's) that is not exactly a field.
func strictKeysViolation(body []byte, v any) string {
	exact := map[string]bool{}
	switch v.(type) {
	case *sampleRequest:
		exact = map[string]bool{"run_id": true, "stage": true, "timeout": true, "payload": true}
	case *nestedRequest:
		exact = map[string]bool{"name": true, "inner": true, "items": true, "meta": true, "any": true, "at": true}
	}
	// Collect every object's keys with a stack of objects; the top-level object is the first.
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		object, wantKey bool
		keys            map[string]bool
	}
	var stack []*frame
	objects := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		top := func() *frame {
			if len(stack) == 0 {
				return nil
			}
			return stack[len(stack)-1]
		}
		switch tok := tok.(type) {
		case json.Delim:
			switch tok {
			case '{', '[':
				if f := top(); f != nil && f.object {
					f.wantKey = true
				}
				stack = append(stack, &frame{object: tok == '{', wantKey: tok == '{', keys: map[string]bool{}})
				if tok == '{' {
					objects++
				}
			default:
				stack = stack[:len(stack)-1]
			}
			continue
		case string:
			if f := top(); f != nil && f.object && f.wantKey {
				if f.keys[tok] {
					return fmt.Sprintf("key %q twice", tok)
				}
				f.keys[tok] = true
				if len(stack) == 1 && objects == 1 && !exact[tok] {
					return fmt.Sprintf("top-level key %q is not a field", tok)
				}
				f.wantKey = false
				continue
			}
		}
		if f := top(); f != nil && f.object {
			f.wantKey = true
		}
	}
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
