package api

import (
	"errors"
	"fmt"
	"net/http"
)

// ErrorBody is the JSON body of every error answer of the agent.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error codes of ErrorBody.Code. Callers branch on codes, never on messages.
const (
	CodeBadRequest       = "bad_request"        // malformed JSON, unknown field, bad value (400)
	CodeTooLarge         = "request_too_large"  // body over the limit (413)
	CodeNotFound         = "not_found"          // no such endpoint or object (404)
	CodeMethodNotAllowed = "method_not_allowed" // endpoint exists, method does not (405)
	CodeTimeout          = "timeout"            // the handler ran past its deadline (503)
	CodeHypervisor       = "hypervisor_error"   // libvirt failed (502)
	CodeInternal         = "internal"           // a bug in the agent (500)
	CodeNoScript         = "no_script"          // the stage has no script on the host (404)
	CodeScriptRefused    = "script_refused"     // the stage's script fails a safety check (409)

	CodeInMaintenance        = "in_maintenance"        // the host is in maintenance and starts no VM (409)
	CodeConflict             = "conflict"              // the VM already runs (409)
	CodeMigrationUnsupported = "migration_unsupported" // the hypervisor cannot live-migrate (501)
)

// Error is an error answer from an agent: it was reached and refused or failed the request.
type Error struct {
	// Host is the inventory name of the agent's host.
	Host string
	// Status is the HTTP status code.
	Status int
	// Code is ErrorBody.Code, or "http_<status>" when the body was not an ErrorBody (a proxy, a
	// wrong port).
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("agent %s: %s (%s, HTTP %d)", e.Host, e.Message, e.Code, e.Status)
}

// IsCode reports whether err is, or wraps, an *Error with code.
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// UnreachableError means no answer came from the agent: it could not be dialled, the connection
// broke, or it did not answer in time. For HA this is "the agent is not talking", which is not
// yet "the host is dead".
type UnreachableError struct {
	Host    string
	Address string
	Err     error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("agent %s at %s is unreachable: %v (is kvmagent running there? `systemctl status kvmagent` on the host; in a lab `kvmctl lab start-agent %s`)", e.Host, e.Address, e.Err, e.Host)
}

// Unwrap returns the transport error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// IsUnreachable reports whether err means that the agent gave no answer, as opposed to an answer
// (*Error) or a TLS refusal (*TLSError).
func IsUnreachable(err error) bool {
	var u *UnreachableError
	return errors.As(err, &u)
}

// TLSError means something answered at the address but the mutual TLS check failed on one side:
// its certificate is not the expected host's or not from the fleet CA, or it refused ours. This
// is a configuration problem, not an outage, and retrying will not help.
type TLSError struct {
	Host    string
	Address string
	Err     error
}

func (e *TLSError) Error() string {
	return fmt.Sprintf("agent %s at %s: tls refused: %v: check that the agent's certificate was issued for %s by this fleet's CA (`kvmctl pki issue-agent %s`) and that the host's address is right",
		e.Host, e.Address, e.Err, e.Host, e.Host)
}

// Unwrap returns the TLS error.
func (e *TLSError) Unwrap() error { return e.Err }

// HTTPStatus is the HTTP status an agent answers with for code.
func HTTPStatus(code string) int {
	switch code {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeNotFound, CodeNoScript:
		return http.StatusNotFound
	case CodeScriptRefused:
		return http.StatusConflict
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeTimeout:
		return http.StatusServiceUnavailable
	case CodeHypervisor:
		return http.StatusBadGateway
	case CodeInMaintenance, CodeConflict:
		return http.StatusConflict
	case CodeMigrationUnsupported:
		return http.StatusNotImplemented
	default:
		return http.StatusInternalServerError
	}
}
