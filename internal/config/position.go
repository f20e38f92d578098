package config

import (
	"regexp"
	"strconv"
	"strings"
)

// The TOML library does not expose where each key is (its MetaData keeps one
// position per dotted key name, so the keys of the second [[subsystem]]
// overwrite those of the first). keyLines recovers them with a small scanner
// that runs only over documents the library has already accepted, so it can
// be forgiving: it needs to follow tables, keys and where values end, not to
// validate anything. Unknown paths fall back to their parent's line.

// keyLines maps every key path of a (syntactically valid) TOML document to
// the line where it first appears. Paths are written as keyPath builds them:
// "socket", "subsystem[1].memory", "subsystem[0].dataspace[0].name",
// "subsystem[0].env.HOME".
func keyLines(data []byte) map[string]int {
	s := &keyScanner{src: string(data), line: 1, out: map[string]int{}, arrays: map[string]int{}}
	s.document()
	return s.out
}

type keyScanner struct {
	src    string
	i      int
	line   int
	ctx    string         // path of the current [table] or [[array]] element
	out    map[string]int // path → first line
	arrays map[string]int // path of an array of tables → elements seen so far
}

func (s *keyScanner) eof() bool { return s.i >= len(s.src) }
func (s *keyScanner) peek() byte {
	if s.eof() {
		return 0
	}
	return s.src[s.i]
}

// advance moves one byte, counting lines.
func (s *keyScanner) advance() {
	if s.src[s.i] == '\n' {
		s.line++
	}
	s.i++
}

func (s *keyScanner) record(path string) {
	if _, ok := s.out[path]; !ok {
		s.out[path] = s.line
	}
}

// skipSpace skips blanks and, when nl is set, newlines and comments too.
func (s *keyScanner) skipSpace(nl bool) {
	for !s.eof() {
		switch c := s.peek(); {
		case c == ' ' || c == '\t' || c == '\r':
			s.i++
		case nl && c == '\n':
			s.advance()
		case nl && c == '#':
			s.skipLine()
		default:
			return
		}
	}
}

// skipLine moves to the start of the next line.
func (s *keyScanner) skipLine() {
	for !s.eof() && s.peek() != '\n' {
		s.i++
	}
	if !s.eof() {
		s.advance()
	}
}

func (s *keyScanner) document() {
	for {
		s.skipSpace(true)
		if s.eof() {
			return
		}
		start := s.i
		if s.peek() == '[' {
			s.header()
		} else {
			s.keyValue(s.ctx)
		}
		s.skipSpace(false)
		if s.peek() == '#' || s.peek() == '\n' {
			s.skipLine()
		}
		if s.i == start { // never loop without progress
			s.advance()
		}
	}
}

// header reads "[a.b]" or "[[a.b]]" and makes it the current context.
func (s *keyScanner) header() {
	s.i++ // '['
	array := s.peek() == '['
	if array {
		s.i++
	}
	keys := s.keys()
	path := ""
	for j, k := range keys {
		path = keyPath(path, k)
		last := j == len(keys)-1
		if n, ok := s.arrays[path]; ok && !(last && array) {
			path = indexPath(path, n-1) // [a.b] after [[a]] means the last a
		}
		if last && array {
			n := s.arrays[path]
			s.arrays[path] = n + 1
			path = indexPath(path, n)
		}
		s.record(path)
	}
	s.ctx = path
	for !s.eof() && s.peek() == ']' {
		s.i++
	}
}

// keyValue reads "a.b = value" inside table ctx.
func (s *keyScanner) keyValue(ctx string) {
	keys := s.keys()
	if len(keys) == 0 {
		return
	}
	path := ctx
	for _, k := range keys {
		path = keyPath(path, k)
		s.record(path)
	}
	s.skipSpace(false)
	if s.peek() != '=' {
		return
	}
	s.i++
	s.skipSpace(false)
	s.value(path)
}

// keys reads a dotted key of bare and quoted parts.
func (s *keyScanner) keys() []string {
	var keys []string
	for {
		s.skipSpace(false)
		switch c := s.peek(); {
		case c == '"' || c == '\'':
			keys = append(keys, s.quoted(c))
		case isBareKeyByte(c):
			j := s.i
			for !s.eof() && isBareKeyByte(s.peek()) {
				s.i++
			}
			keys = append(keys, s.src[j:s.i])
		default:
			return keys
		}
		s.skipSpace(false)
		if s.peek() != '.' {
			return keys
		}
		s.i++
	}
}

// quoted reads a one-line string starting at the quote q and returns its
// content (escapes are decoded for basic strings, best effort).
func (s *keyScanner) quoted(q byte) string {
	s.i++
	var b strings.Builder
	for !s.eof() {
		c := s.peek()
		if c == '\n' {
			break
		}
		s.i++
		if c == q {
			break
		}
		if c == '\\' && q == '"' && !s.eof() {
			raw := `"\` + string(s.peek())
			s.i++
			if u, err := strconv.Unquote(raw + `"`); err == nil {
				b.WriteString(u)
				continue
			}
			b.WriteString(raw[1:])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// value skips one value, recording the keys of inline tables and the
// elements of arrays under path.
func (s *keyScanner) value(path string) {
	switch {
	case strings.HasPrefix(s.src[s.i:], `"""`), strings.HasPrefix(s.src[s.i:], `'''`):
		delim := s.src[s.i : s.i+3]
		s.i += 3
		for !s.eof() && !strings.HasPrefix(s.src[s.i:], delim) {
			if delim == `"""` && s.peek() == '\\' {
				s.i++
				if s.eof() {
					return
				}
			}
			s.advance()
		}
		s.i = min(s.i+3, len(s.src))
		for !s.eof() && s.peek() == delim[0] { // up to two quotes may end the content
			s.i++
		}
	case s.peek() == '"' || s.peek() == '\'':
		s.quoted(s.peek())
	case s.peek() == '[':
		s.i++
		for n := 0; ; n++ {
			s.skipSpace(true)
			if s.eof() || s.peek() == ']' {
				break
			}
			start := s.i
			elem := indexPath(path, n)
			s.record(elem)
			s.value(elem)
			s.skipSpace(true)
			if s.peek() == ',' {
				s.i++
			} else if s.i == start {
				s.advance()
			}
		}
		if !s.eof() {
			s.i++
		}
	case s.peek() == '{':
		s.i++
		for {
			s.skipSpace(false)
			if s.eof() || s.peek() == '}' || s.peek() == '\n' {
				break
			}
			start := s.i
			s.keyValue(path)
			s.skipSpace(false)
			if s.peek() == ',' {
				s.i++
			} else if s.i == start {
				s.advance()
			}
		}
		if !s.eof() && s.peek() == '}' {
			s.i++
		}
	default: // number, bool, date: up to a delimiter
		for !s.eof() && !strings.ContainsRune(",]}#\n", rune(s.peek())) {
			s.i++
		}
	}
}

func isBareKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// keyPath appends key k to path, quoting k when it is not a bare key.
func keyPath(path, k string) string {
	if !bareKey.MatchString(k) {
		k = strconv.Quote(k)
	}
	if path == "" {
		return k
	}
	return path + "." + k
}

// indexPath appends an array index: "subsystem" → "subsystem[2]".
func indexPath(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// lineOf returns the line of path, or of its nearest recorded ancestor, or 0.
func lineOf(lines map[string]int, path string) int {
	for path != "" {
		if l, ok := lines[path]; ok {
			return l
		}
		cut := max(strings.LastIndexByte(path, '.'), strings.LastIndexByte(path, '['))
		if cut < 0 {
			return 0
		}
		path = path[:cut]
	}
	return 0
}
