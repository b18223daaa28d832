// Package services is Orchestra's write side: aggregates, commands and their
// validation, the unit of work, and the small interfaces (event store, clock)
// it needs from the outside. It speaks only in domain terms.
package services

import (
	"errors"
	"fmt"

	"github.com/orchestra-fleet/orchestra/events"
)

// Error codes: the one vocabulary every layer maps from. The gateway turns
// them into HTTP statuses in one place.
const (
	EINVALID      = "invalid"      // bad input; nothing changed
	EBADREQUEST   = "bad_request"  // a malformed request: an unknown or bad query parameter or header
	ECONFLICT     = "conflict"     // a stale write or a state that forbids the change
	ENOTFOUND     = "not_found"    // the named object does not exist
	EUNAUTHORIZED = "unauthorized" // no or bad credentials
	EFORBIDDEN    = "forbidden"    // credentials lack the role
	ETOOLARGE     = "too_large"    // input beyond a documented limit
	EUNAVAILABLE  = "unavailable"  // a dependency is not reachable; try again
	EINTERNAL     = "internal"     // a bug or an unexpected failure
)

// Error is an application error with a code and a message fit for users.
type Error struct {
	Code    string
	Field   string // the input at fault, when there is one
	Message string
}

func (e *Error) Error() string {
	if e.Field != "" {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

// Errorf builds an *Error.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// FieldErrorf builds an *Error about one input field.
func FieldErrorf(code, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first application error in err's chain:
// an *Error, a *ConflictError, or a catalog validation error; EINTERNAL for
// anything else and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	var c *ConflictError
	var f *events.FieldError
	var u *events.UnknownTypeError
	switch {
	case errors.As(err, &e):
		return e.Code
	case errors.As(err, &c):
		return ECONFLICT
	case errors.As(err, &f), errors.As(err, &u):
		return EINVALID
	}
	return EINTERNAL
}

// ConflictError reports a stale write: the unit expected an aggregate at one
// sequence and the log has it at another. Nothing of the unit was written.
type ConflictError struct {
	Aggregate events.Aggregate
	Expected  uint64 // 0: the unit expected the aggregate not to exist
	Actual    uint64 // 0: the aggregate does not exist
}

func (e *ConflictError) Error() string {
	switch {
	case e.Expected == 0:
		return fmt.Sprintf("conflict: %s already exists (at sequence %d)", e.Aggregate, e.Actual)
	case e.Actual == 0:
		return fmt.Sprintf("conflict: %s was expected at sequence %d but does not exist", e.Aggregate, e.Expected)
	}
	return fmt.Sprintf("conflict: %s was expected at sequence %d but is at %d", e.Aggregate, e.Expected, e.Actual)
}
