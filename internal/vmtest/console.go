package vmtest

import (
	"strconv"
	"strings"
)

// Sentinel starts the line the guest prints last: "VMTEST-EXIT <code>",
// where code is 0 when every test binary passed.
const Sentinel = "VMTEST-EXIT"

// ResultPrefix starts the line the guest prints after each test binary:
// "VMTEST-RESULT <name> <exit code> <seconds>".
const ResultPrefix = "VMTEST-RESULT"

// Exit codes of the harness besides the tests' own.
const (
	ExitTimeout     = 124 // the guest did not finish within the timeout
	ExitNoSentinel  = 125 // the guest stopped (panic, crash) without printing the sentinel
	ExitHarness     = 126 // the harness itself failed (build, qemu missing, ...)
	ExitInterrupted = 130 // a signal stopped the run
)

// ParseSentinel reports whether line is the sentinel line and the exit code
// it carries. Serial consoles end lines with "\r\n" and the kernel may print
// on the same line first, so the sentinel is searched anywhere in the line
// and surrounding blanks and carriage returns are ignored.
func ParseSentinel(line string) (code int, ok bool) {
	i := strings.LastIndex(line, Sentinel+" ")
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(line[i+len(Sentinel):])
	if len(f) == 0 {
		return 0, false
	}
	code, err := strconv.Atoi(f[0])
	if err != nil || code < 0 || code > 255 {
		return 0, false
	}
	return code, true
}

// BinaryResult is one test binary's outcome as the guest reported it.
type BinaryResult struct {
	Name    string
	Code    int
	Seconds float64
}

// ParseResult parses a "VMTEST-RESULT <name> <code> <seconds>" line.
func ParseResult(line string) (BinaryResult, bool) {
	i := strings.Index(line, ResultPrefix+" ")
	if i < 0 {
		return BinaryResult{}, false
	}
	f := strings.Fields(line[i+len(ResultPrefix):])
	if len(f) != 3 {
		return BinaryResult{}, false
	}
	code, err1 := strconv.Atoi(f[1])
	secs, err2 := strconv.ParseFloat(f[2], 64)
	if err1 != nil || err2 != nil {
		return BinaryResult{}, false
	}
	return BinaryResult{Name: f[0], Code: code, Seconds: secs}, true
}

// IsPanicLine reports whether a console line shows a kernel panic.
func IsPanicLine(line string) bool {
	return strings.Contains(line, "Kernel panic - not syncing")
}
