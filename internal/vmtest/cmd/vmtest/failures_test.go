package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestFailuresNameTheFailingTestAndItsLog(t *testing.T) {
	var console, sum bytes.Buffer
	f := newFailures(&console, "[2N] ")
	in := `[2N] === RUN   TestGood
[2N]     good_test.go:1: fine
[2N] --- PASS: TestGood (0.10s)
[2N] === RUN   TestBad
[2N]     bad_test.go:42: want 16 pages of b, got 3
[2N] --- FAIL: TestBad (1.20s)
[2N] FAIL	vcored/internal/e2e	3.1s
`
	// Written in odd pieces, as a pipe would deliver it.
	for len(in) > 0 {
		n := min(7, len(in))
		f.Write([]byte(in[:n]))
		in = in[n:]
	}
	if !strings.Contains(console.String(), "TestGood") {
		t.Fatal("console not passed through")
	}
	f.report(&sum)
	got := sum.String()
	for _, want := range []string{"TestBad (1.20s)", "bad_test.go:42: want 16 pages of b, got 3", "FAIL\tvcored/internal/e2e"} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "TestGood") || strings.Contains(got, "fine") {
		t.Errorf("summary names a passing test:\n%s", got)
	}
}

func TestFailuresKeepTheAssertionsNotTheDaemonLogs(t *testing.T) {
	var console, sum bytes.Buffer
	f := newFailures(&console, "")
	f.Write([]byte("=== RUN   TestX\n    x_test.go:156: advice metric missing\n    harness_test.go:296: --- core log:\n"))
	for range 40 {
		f.Write([]byte("    time=... level=INFO msg=\"lease released\"\n"))
	}
	f.Write([]byte("--- FAIL: TestX (1.91s)\n"))
	f.report(&sum)
	got := sum.String()
	if !strings.Contains(got, "x_test.go:156: advice metric missing") || strings.Contains(got, "lease released") ||
		!strings.Contains(got, "(40 more lines") {
		t.Errorf("summary:\n%s", got)
	}
}
