package config

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/vcored/vcored/internal/hw"
)

// The decoding strategy: the TOML library parses the document into a tree
// of plain values (map[string]any); this file's walker then reads each
// expected key with the type and checks it must have and reports every
// mismatch, instead of stopping at the first as struct decoding would. Keys
// left unread at the end of a table are unknown keys. Line numbers come from
// keyLines.

// decoder collects the problems of one file.
type decoder struct {
	file  string
	lines map[string]int
	errs  Errors
	// asked holds every key path the walker looked for, present or not,
	// without array indices ("subsystem.memory"): the keys a file kind
	// has. The test that keeps docs/CONFIG.md complete reads it.
	asked map[string]bool
}

// parseTOML parses data and returns the root table, or the syntax error.
func parseTOML(name string, data []byte) (*decoder, *table, error) {
	d := &decoder{file: name, asked: map[string]bool{}}
	var root map[string]any
	if _, err := toml.Decode(string(data), &root); err != nil {
		e := &Error{File: name, Msg: err.Error(), Err: fmt.Errorf("%w: %w", ErrSyntax, err)}
		var pe toml.ParseError
		if errors.As(err, &pe) {
			e.Line = pe.Position.Line
			if st := pe.Position.Start; st > 0 && st <= len(data) {
				// The library counts a newline that ends a bad line as the
				// next line; the offset is exact.
				e.Line = 1 + strings.Count(string(data[:st]), "\n")
			}
			e.Msg = pe.Message
			if pe.LastKey != "" {
				e.Msg = fmt.Sprintf("%s (after key %s)", pe.Message, pe.LastKey)
			}
		}
		return nil, nil, Errors{e}
	}
	d.lines = keyLines(data)
	return d, d.table("", root), nil
}

// add records a problem at key (whose line is looked up).
func (d *decoder) add(key string, class error, cause error, format string, a ...any) {
	err := class
	if cause != nil {
		err = fmt.Errorf("%w: %w", class, cause)
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: lineOf(d.lines, key), Key: key, Msg: fmt.Sprintf(format, a...), Err: err})
}

// table is one TOML table being read.
type table struct {
	d    *decoder
	path string
	m    map[string]any
	read map[string]bool
}

func (d *decoder) table(path string, m map[string]any) *table {
	return &table{d: d, path: path, m: m, read: map[string]bool{}}
}

func (t *table) key(k string) string { return keyPath(t.path, k) }

// get returns the value of key k and marks it as read.
func (t *table) get(k string) (any, bool) {
	t.ask(k)
	v, ok := t.m[k]
	if ok {
		t.read[k] = true
	}
	return v, ok
}

// has reports whether key k is present (without reading it).
func (t *table) has(k string) bool { t.ask(k); _, ok := t.m[k]; return ok }

// ask records that the walker knows key k of this table.
func (t *table) ask(k string) { t.d.asked[stripIndices(t.key(k))] = true }

// stripIndices turns "subsystem[1].dataspace[0].name" into
// "subsystem.dataspace.name".
func stripIndices(path string) string {
	var b strings.Builder
	skip := false
	for _, r := range path {
		switch {
		case r == '[':
			skip = true
		case r == ']':
			skip = false
		case !skip:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func (t *table) wrongType(k, want string, v any) {
	t.d.add(t.key(k), ErrType, nil, "expected %s, got %s", want, describe(v))
}

// required reports k as missing when it is absent; it returns presence.
func (t *table) required(k, what string) bool {
	if t.has(k) {
		return true
	}
	t.d.add(t.key(k), ErrMissing, nil, "required: %s", what)
	return false
}

// str reads a string; ok is false when absent or mistyped.
func (t *table) str(k string) (s string, ok bool) {
	v, present := t.get(k)
	if !present {
		return "", false
	}
	s, ok = v.(string)
	if !ok {
		t.wrongType(k, "a string", v)
	}
	return s, ok
}

// setString reads a string into dst when present and passing check (which
// may be nil and returns a complaint or "").
func (t *table) setString(k string, dst *string, check func(string) string) {
	s, ok := t.str(k)
	if !ok {
		return
	}
	if check != nil {
		if msg := check(s); msg != "" {
			t.d.add(t.key(k), ErrValue, nil, "%s", msg)
			return
		}
	}
	*dst = s
}

// setInt reads an integer in [lo, hi] into dst.
func (t *table) setInt(k string, dst *int, lo, hi int) {
	v, ok := t.get(k)
	if !ok {
		return
	}
	n, ok := v.(int64)
	if !ok {
		t.wrongType(k, "an integer", v)
		return
	}
	if n < int64(lo) || n > int64(hi) {
		t.d.add(t.key(k), ErrValue, nil, "%d is out of range [%d, %d]", n, lo, hi)
		return
	}
	*dst = int(n)
}

// setSize reads a size string ("512MiB") into dst; ok reports success.
func (t *table) setSize(k string, dst *hw.Bytes) (ok bool) {
	s, ok := t.str(k)
	if !ok {
		return false
	}
	b, err := hw.ParseBytes(s)
	if err != nil {
		t.d.add(t.key(k), ErrValue, err, "%s", trimPkg(err))
		return false
	}
	*dst = b
	return true
}

// setDuration reads a non-negative duration string ("30s") into dst.
func (t *table) setDuration(k string, dst *time.Duration) {
	s, ok := t.str(k)
	if !ok {
		return
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		t.d.add(t.key(k), ErrValue, err, "bad duration %q (use e.g. \"500ms\", \"30s\", \"2m\")", s)
		return
	}
	if dur < 0 {
		t.d.add(t.key(k), ErrValue, nil, "duration %q is negative", s)
		return
	}
	*dst = dur
}

// setCPUs reads a CPU list string ("0-3,8") into dst.
func (t *table) setCPUs(k string, dst *hw.CPUSet, allowEmpty bool) {
	s, ok := t.str(k)
	if !ok {
		return
	}
	set, err := hw.ParseCPUSet(s)
	if err != nil {
		t.d.add(t.key(k), ErrValue, err, "%s", trimPkg(err))
		return
	}
	if set.IsEmpty() && !allowEmpty {
		t.d.add(t.key(k), ErrValue, nil, "empty CPU list")
		return
	}
	*dst = set
}

// setEnum reads one of the allowed strings into dst.
func setEnum[T ~string](t *table, k string, dst *T, allowed ...T) {
	s, ok := t.str(k)
	if !ok {
		return
	}
	if !slices.Contains(allowed, T(s)) {
		names := make([]string, len(allowed))
		for i, a := range allowed {
			names[i] = fmt.Sprintf("%q", a)
		}
		t.d.add(t.key(k), ErrValue, nil, "%q is not one of %s", s, strings.Join(names, ", "))
		return
	}
	*dst = T(s)
}

// strings reads an array of strings.
func (t *table) strings(k string) ([]string, bool) {
	v, ok := t.get(k)
	if !ok {
		return nil, false
	}
	arr, ok := v.([]any)
	if !ok {
		t.wrongType(k, "an array of strings", v)
		return nil, false
	}
	out := make([]string, 0, len(arr))
	good := true
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			t.d.add(indexPath(t.key(k), i), ErrType, nil, "expected a string, got %s", describe(e))
			good = false
			continue
		}
		out = append(out, s)
	}
	return out, good
}

// sub returns the table at key k (a [k] section or an inline table), or nil.
func (t *table) sub(k string) *table {
	v, ok := t.get(k)
	if !ok {
		return nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.wrongType(k, "a table", v)
		return nil
	}
	return t.d.table(t.key(k), m)
}

// tables returns the tables of an array of tables ([[k]] sections or an
// array of inline tables).
func (t *table) tables(k string) []*table {
	v, ok := t.get(k)
	if !ok {
		return nil
	}
	var ms []map[string]any
	switch a := v.(type) {
	case []map[string]any:
		ms = a
	case []any:
		for i, e := range a {
			m, ok := e.(map[string]any)
			if !ok {
				t.d.add(indexPath(t.key(k), i), ErrType, nil, "expected a table, got %s", describe(e))
				continue
			}
			ms = append(ms, m)
		}
	default:
		t.wrongType(k, fmt.Sprintf("an array of tables ([[%s]])", k), v)
		return nil
	}
	out := make([]*table, len(ms))
	for i, m := range ms {
		out[i] = t.d.table(indexPath(t.key(k), i), m)
	}
	return out
}

// done reports every key of t that nobody read as unknown.
func (t *table) done() {
	var unknown []string
	for k := range t.m {
		if !t.read[k] {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	for _, k := range unknown {
		t.d.add(t.key(k), ErrUnknownKey, nil, "unknown key")
	}
}

// describe names a decoded TOML value's type, with the value when short.
func describe(v any) string {
	switch x := v.(type) {
	case string:
		return fmt.Sprintf("string %q", x)
	case int64:
		return fmt.Sprintf("integer %d", x)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return fmt.Sprintf("float %v", x)
		}
		return fmt.Sprintf("float %g", x)
	case bool:
		return fmt.Sprintf("boolean %t", x)
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date/time"
	}
	return fmt.Sprintf("%T", v)
}

// trimPkg drops the "hw: " prefix of a leaf package's error message.
func trimPkg(err error) string { return strings.TrimPrefix(err.Error(), "hw: ") }

// namePattern is what subsystem and dataspace names look like: they become
// cgroup directory names, file names and wire identifiers.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

func checkName(s string) string {
	if !namePattern.MatchString(s) {
		return fmt.Sprintf("bad name %q: use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit", s)
	}
	return ""
}

// maxSocketPath is the room in sockaddr_un.sun_path (108 bytes with the NUL).
const maxSocketPath = 107

func checkSocketPath(s string) string {
	switch {
	case !strings.HasPrefix(s, "/"):
		return fmt.Sprintf("socket path %q must be absolute", s)
	case len(s) > maxSocketPath:
		return fmt.Sprintf("socket path %q is longer than %d bytes (the limit of a unix socket address)", s, maxSocketPath)
	case strings.ContainsRune(s, 0):
		return fmt.Sprintf("socket path %q contains a NUL byte", s)
	}
	return ""
}

func checkAbsDir(s string) string {
	if !strings.HasPrefix(s, "/") || strings.ContainsRune(s, 0) {
		return fmt.Sprintf("directory %q must be an absolute path", s)
	}
	return ""
}

// cgroupName is one component of a cgroup path.
var cgroupName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,254}$`)
