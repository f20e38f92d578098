package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// ErrWarning marks a problem that does not make a file invalid: the daemon
// may still start (e.g. a subsystem's program that is installed later).
var ErrWarning = errors.New("config: warning")

// ErrRead: the file cannot be read (it does not exist, or permissions).
var ErrRead = errors.New("config: cannot read file")

// ReadError is the *Error for a file that cannot be read: "file: no such
// file", without a line, like every other problem of a whole file.
func ReadError(name string, err error) *Error {
	msg := err.Error()
	var pe *fs.PathError
	if errors.As(err, &pe) {
		msg = pe.Err.Error() // the path is already the error's file
	}
	if errors.Is(err, fs.ErrNotExist) {
		msg = "no such file"
	}
	return &Error{File: name, Msg: msg, Err: fmt.Errorf("%w: %w", ErrRead, err)}
}

// CommandWarnings checks that each subsystem's program exists and is an
// executable file on this host, as the vcore will look it up when it
// starts the subsystem: a name with a slash as it is, a name without one in
// the subsystem's PATH (its env table's PATH, else this process's). Every
// problem is an *Error wrapping ErrWarning, at the line of the command key:
//
//	node0.toml:12: subsystem[0].command: "/usr/bin/foo" not found (warning)
//
// They are warnings, not errors: the program may be installed later.
func (v *VCore) CommandWarnings() Errors {
	var out Errors
	for i, s := range v.Subsystems {
		if len(s.Command) == 0 {
			continue
		}
		path, ok := s.Env["PATH"]
		if !ok {
			path = os.Getenv("PATH")
		}
		msg := checkProgram(s.Command[0], path)
		if msg == "" {
			continue
		}
		key := keyPath(indexPath("subsystem", i), "command")
		out = append(out, &Error{File: v.File, Line: lineOf(v.lines, key), Key: key, Msg: msg + " (warning)", Err: ErrWarning})
	}
	return out
}

// checkProgram reports why prog cannot be executed, or "". It follows
// exec.LookPath: a name with a slash is used as it is; any other is searched
// in the directories of path (empty entries and relative directories are
// skipped: exec.LookPath refuses programs found relative to the current
// directory).
func checkProgram(prog, path string) string {
	if strings.Contains(prog, "/") {
		return executable(prog, fmt.Sprintf("%q", prog))
	}
	firstProblem := ""
	for _, dir := range filepath.SplitList(path) {
		if !filepath.IsAbs(dir) {
			continue
		}
		cand := filepath.Join(dir, prog)
		msg := executable(cand, fmt.Sprintf("%q (%s)", prog, cand))
		if msg == "" {
			return ""
		}
		if _, err := os.Stat(cand); err == nil && firstProblem == "" {
			firstProblem = msg
		}
	}
	if firstProblem != "" {
		return firstProblem
	}
	return fmt.Sprintf("%q not found in PATH", prog)
}

// executable reports why file is not an executable regular file, or "".
func executable(file, name string) string {
	st, err := os.Stat(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return name + " not found"
	case err != nil:
		return fmt.Sprintf("%s cannot be checked: %v", name, err)
	case st.IsDir():
		return name + " is a directory"
	case st.Mode()&0o111 == 0:
		return name + " is not executable"
	}
	return ""
}
