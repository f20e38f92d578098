package main

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
)

// failures passes a guest's console through to w and remembers, for each
// test that printed "--- FAIL", the lines it logged since its "=== RUN".
// The summary repeats them, so the tail of a CI log names the failing test
// and its message without scrolling through both guests' consoles.
type failures struct {
	w       io.Writer
	prefix  string
	mu      sync.Mutex
	partial []byte
	current string              // test whose "=== RUN" or "=== CONT" came last
	logs    map[string][]string // lines logged per running test
	failed  []failure
}

type failure struct {
	test  string
	lines []string
}

// maxFailureLines bounds what one failing test contributes to the summary.
const maxFailureLines = 25

func newFailures(w io.Writer, prefix string) *failures {
	return &failures{w: w, prefix: prefix, logs: map[string][]string{}}
}

func (f *failures) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.partial = append(f.partial, p...)
	for {
		i := bytes.IndexByte(f.partial, '\n')
		if i < 0 {
			break
		}
		f.line(string(f.partial[:i]))
		f.partial = f.partial[i+1:]
	}
	return f.w.Write(p)
}

func (f *failures) line(s string) {
	s = strings.TrimRight(strings.TrimPrefix(s, f.prefix), "\r")
	switch {
	case strings.HasPrefix(s, "=== RUN   "), strings.HasPrefix(s, "=== CONT  "):
		f.current = strings.TrimSpace(s[10:])
	case strings.HasPrefix(s, "--- FAIL: "):
		name, _, _ := strings.Cut(strings.TrimSpace(s[10:]), " ")
		lines := assertions(f.logs[name])
		f.failed = append(f.failed, failure{test: strings.TrimSpace(s[10:]), lines: lines})
		delete(f.logs, name)
	case strings.HasPrefix(s, "--- PASS: "), strings.HasPrefix(s, "--- SKIP: "):
		name, _, _ := strings.Cut(strings.TrimSpace(s[10:]), " ")
		delete(f.logs, name)
	case strings.HasPrefix(s, "    ") && f.current != "":
		f.logs[f.current] = append(f.logs[f.current], strings.TrimSpace(s))
	case strings.HasPrefix(s, "panic: ") || strings.HasPrefix(s, "FAIL\t") || strings.Contains(s, "test timed out after"):
		f.failed = append(f.failed, failure{test: s})
	}
}

// testLine is a line t.Log/t.Error printed: "name_test.go:123: ...".
var testLine = regexp.MustCompile(`^[\w.-]+_test\.go:\d+: `)

// assertions keeps what a failing test said itself (its file:line lines),
// not the daemon logs a harness dumps after them, at most maxFailureLines.
func assertions(lines []string) []string {
	var out []string
	left := 0
	for _, l := range lines {
		switch {
		case !testLine.MatchString(l):
			left++
		case len(out) < maxFailureLines:
			out = append(out, l)
		default:
			left++
		}
	}
	if left > 0 {
		out = append(out, fmt.Sprintf("(%d more lines in the console above)", left))
	}
	return out
}

// report prints what failed, or nothing.
func (f *failures) report(w io.Writer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, x := range f.failed {
		fmt.Fprintf(w, "        %s\n", x.test)
		for _, l := range x.lines {
			fmt.Fprintf(w, "            %s\n", l)
		}
	}
}
