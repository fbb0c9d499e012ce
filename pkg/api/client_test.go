package api

import (
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func TestDecodeError(t *testing.T) {
	c := &Client{host: "kvm1"}
	for _, tc := range []struct {
		status   int
		body     string
		code     string
		contains string
	}{
		{400, `{"error":"bad JSON at byte 3","code":"bad_request"}`, CodeBadRequest, "bad JSON at byte 3"},
		{502, "<html>proxy error</html>", "http_502", "proxy error"},
		{404, "", "http_404", "Not Found"},
		{500, `{"unexpected":true}`, "http_500", "unexpected"},
		{503, strings.Repeat("x", 500), "http_503", "..."},
	} {
		err := c.decodeError(tc.status, []byte(tc.body))
		var e *Error
		if !errors.As(err, &e) || e.Status != tc.status || e.Code != tc.code || !strings.Contains(e.Message, tc.contains) {
			t.Errorf("decodeError(%d, %q) = %#v", tc.status, tc.body, err)
			continue
		}
		if !IsCode(err, tc.code) || IsUnreachable(err) {
			t.Errorf("%v: IsCode/IsUnreachable wrong", err)
		}
		if !strings.Contains(err.Error(), "agent kvm1") {
			t.Errorf("Error() = %q, want the host", err.Error())
		}
	}
}

func TestHTTPStatus(t *testing.T) {
	for code, want := range map[string]int{
		CodeBadRequest: 400, CodeTooLarge: 413, CodeNotFound: 404, CodeMethodNotAllowed: 405,
		CodeTimeout: 503, CodeHypervisor: 502, CodeInternal: 500, "something_new": 500,
	} {
		if got := HTTPStatus(code); got != want {
			t.Errorf("HTTPStatus(%s) = %d, want %d", code, got, want)
		}
	}
}

func TestClientForHostMissingPKI(t *testing.T) {
	_, err := ClientForHost(filepath.Join(t.TempDir(), "nope"), "kvm1", "127.0.0.1:9250")
	if err == nil || !strings.Contains(err.Error(), "ca.crt") {
		t.Errorf("err = %v, want it to name ca.crt", err)
	}
}

func TestErrorWrapping(t *testing.T) {
	inner := errors.New("connection refused")
	u := &UnreachableError{Host: "kvm1", Address: "10.0.0.1:9250", Err: inner}
	wrapped := errors.Join(errors.New("ctx"), u)
	if !IsUnreachable(wrapped) || !errors.Is(wrapped, inner) {
		t.Errorf("unreachable not found through wrapping")
	}
	te := &TLSError{Host: "kvm1", Address: "10.0.0.1:9250", Err: inner}
	if IsUnreachable(te) || !strings.Contains(te.Error(), "kvmctl pki issue-agent kvm1") {
		t.Errorf("TLSError = %v", te)
	}
	if PathStatus != "/v1/status" || PathHealthz != "/v1/healthz" || http.StatusText(HTTPStatus(CodeTimeout)) == "" {
		t.Errorf("paths changed")
	}
}
