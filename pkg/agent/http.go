package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

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

// decodeJSONLimit reads exactly one JSON value of at most limit bytes into v. Unknown fields,
// trailing data, an empty body and a non-JSON content type are refused (400, 415); a body over
// the limit is 413.
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
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Exactly one value: "{}{}" or "{} x" is a client bug worth reporting.
		var extra json.RawMessage
		if err2 := dec.Decode(&extra); err2 != io.EOF {
			if err2 == nil {
				err = errors.New("more than one JSON value in the body")
			} else {
				err = err2
			}
		}
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
	case errors.Is(err, io.EOF):
		return newHTTPError(api.CodeBadRequest, "empty request body: send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return newHTTPError(api.CodeBadRequest, "request body is truncated JSON")
	case errors.As(err, &syntax):
		return newHTTPError(api.CodeBadRequest, "bad JSON at byte %d: %v", syntax.Offset, err)
	case errors.As(err, &typ):
		return newHTTPError(api.CodeBadRequest, "bad JSON: field %q wants %s, got %s", typ.Field, typ.Type, typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		// encoding/json has no error type for this one.
		return newHTTPError(api.CodeBadRequest, "bad JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	default:
		return newHTTPError(api.CodeBadRequest, "bad JSON: %v", err)
	}
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
