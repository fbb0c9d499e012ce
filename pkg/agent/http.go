package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"unicode/utf8"

	"github.com/kvmctl/kvmctl/pkg/api"
)

// MaxRequestBytes is the largest request body the agent reads.
const MaxRequestBytes = 1 << 20

// httpError is an error a handler answers with: an HTTP status, an api error code and a message
// for the operator.
type httpError struct {
	Status int
	Code   string
	Msg    string
}

func (e *httpError) Error() string { return e.Msg }

func newHTTPError(code, format string, args ...any) *httpError {
	return &httpError{Status: api.HTTPStatus(code), Code: code, Msg: fmt.Sprintf(format, args...)}
}

// decodeJSON reads one JSON value from r's body into v, with MaxRequestBytes as the limit.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) *httpError {
	return decodeJSONLimit(w, r, v, MaxRequestBytes)
}

// decodeJSONLimit reads exactly one JSON value of at most limit bytes into v, strictly: the
// body must be UTF-8, every key must name a field of v exactly (no unknown field, no case
// variant) and appear once in its object, and nothing may follow the value. Every refusal is a
// 400 naming what is wrong, except a non-JSON content type (415) and a body over the limit (413).
func decodeJSONLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) *httpError {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, _ := strings.Cut(ct, ";")
		if mt = strings.TrimSpace(strings.ToLower(mt)); mt != "application/json" {
			return &httpError{Status: http.StatusUnsupportedMediaType, Code: api.CodeBadRequest,
				Msg: fmt.Sprintf("content type %q: send application/json", mt)}
		}
	}
	if r.Body == nil {
		return newHTTPError(api.CodeBadRequest, "empty request body: send a JSON object")
	}
	// The body is read whole (it is small) because it is read twice: once for its keys, which
	// encoding/json matches case-insensitively and lets repeat, once into v.
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err == nil {
		// encoding/json would turn invalid bytes into U+FFFD silently.
		if i := invalidUTF8(data); i >= 0 {
			return newHTTPError(api.CodeBadRequest, "request body is not UTF-8: invalid byte 0x%02x at byte %d", data[i], i)
		}
		err = checkKeys(data, reflect.TypeOf(v))
	}
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		err = dec.Decode(v)
	}
	if err == nil {
		return nil
	}
	var tooLarge *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooLarge):
		return newHTTPError(api.CodeTooLarge, "request body larger than %d bytes", limit)
	case isKeyError(err):
		return newHTTPError(api.CodeBadRequest, "bad JSON: %v", err)
	case errors.Is(err, io.ErrUnexpectedEOF) && len(bytes.TrimSpace(data)) == 0:
		return newHTTPError(api.CodeBadRequest, "empty request body: send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return newHTTPError(api.CodeBadRequest, "request body is truncated JSON")
	case errors.As(err, &syntax):
		return newHTTPError(api.CodeBadRequest, "bad JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typ):
		return newHTTPError(api.CodeBadRequest, "bad JSON: field %q wants %s, got %s", typ.Field, typ.Type, typ.Value)
	default:
		return newHTTPError(api.CodeBadRequest, "bad JSON: %v", err)
	}
}

// invalidUTF8 is the offset of the first byte of b that is not UTF-8, or -1.
func invalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return -1
}

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only a bug can get here: every answer type marshals.
		writeError(w, newHTTPError(api.CodeInternal, "encode answer: %v", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// writeError answers with e as an api.ErrorBody.
func writeError(w http.ResponseWriter, e *httpError) {
	b, _ := json.Marshal(api.ErrorBody{Error: e.Msg, Code: e.Code})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(e.Status)
	w.Write(append(b, '\n'))
}

// handlerFunc is an endpoint that returns its error instead of writing it, so every error
// reaches the client in the same JSON shape and is logged once.
type handlerFunc func(w http.ResponseWriter, r *http.Request) *httpError

func (a *Agent) wrap(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e := h(w, r); e != nil {
			if e.Status >= 500 {
				a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "code", e.Code, "err", e.Msg)
			}
			writeError(w, e)
		}
	})
}

// timeoutBody is what http.TimeoutHandler writes when a handler runs past its deadline.
func timeoutBody(path string) string {
	b, _ := json.Marshal(api.ErrorBody{Error: "the agent did not finish " + path + " in time", Code: api.CodeTimeout})
	return string(b)
}
