package config

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Classes of configuration problems. Every *Error wraps exactly one of them,
// so callers can test with errors.Is.
var (
	// ErrSyntax: the file is not valid TOML.
	ErrSyntax = errors.New("config: syntax error")
	// ErrUnknownKey: a key that the file kind does not have (often a typo).
	ErrUnknownKey = errors.New("config: unknown key")
	// ErrType: a value of the wrong TOML type (a number where a string is due).
	ErrType = errors.New("config: wrong type")
	// ErrValue: a value of the right type that is not acceptable (a bad
	// size, list, duration or enum value, a number out of range).
	ErrValue = errors.New("config: bad value")
	// ErrMissing: a required key is absent.
	ErrMissing = errors.New("config: missing key")
	// ErrConflict: values that are fine alone but not together, or not on
	// this machine (a CPU of another node, a quota larger than the node).
	ErrConflict = errors.New("config: conflict")
)

// Error is one problem in one configuration file.
type Error struct {
	File string // file name as given to Load/Parse
	Line int    // 1-based; 0 when the problem has no single line (e.g. a missing key)
	Key  string // dotted key path with array indices, e.g. "subsystem[0].memory"; "" for the whole file
	Msg  string // what is wrong, for humans
	Err  error  // wraps one of the Err* classes and, when there is one, the underlying cause
}

// Error formats the problem as "file:line: key: message"; the line and key
// parts are left out when unknown.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": ")
		b.WriteString(e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the problem class (and cause).
func (e *Error) Unwrap() error { return e.Err }

// Errors is every problem found in one or more files, ordered by file, line
// and key. A non-empty Errors is returned as the error of Parse*, Load* and
// Validate; errors.As(err, &errs) gets the list, errors.As(err, &e) with
// e *Error the first problem.
type Errors []*Error

// Error lists the problems, one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap gives errors.Is and errors.As access to every problem.
func (es Errors) Unwrap() []error {
	out := make([]error, len(es))
	for i, e := range es {
		out[i] = e
	}
	return out
}

// sorted returns es ordered by file, line, key (stable for equal positions).
func (es Errors) sorted() Errors {
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Key < b.Key
	})
	return es
}

// asError returns nil for no problems (never a typed nil) and the sorted
// list otherwise.
func (es Errors) asError() error {
	if len(es) == 0 {
		return nil
	}
	return es.sorted()
}

// AsErrors flattens err into the list of configuration problems it holds:
// an Errors, a single *Error, or a join of those. ok is false when err holds
// anything else (which the caller then reports as it is).
func AsErrors(err error) (es Errors, ok bool) {
	if err == nil {
		return nil, true
	}
	switch v := err.(type) {
	case Errors:
		return v, true
	case *Error:
		return Errors{v}, true
	case interface{ Unwrap() []error }:
		for _, e := range v.Unwrap() {
			sub, ok := AsErrors(e)
			if !ok {
				return nil, false
			}
			es = append(es, sub...)
		}
		return es, true
	}
	return nil, false
}
