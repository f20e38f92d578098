package progress

import (
	"bytes"
	"strings"
	"testing"
)

func TestLinesWhenNotATerminal(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, 2, Auto, "bench")
	if r.Mode() != Lines {
		t.Fatalf("mode %v on a bytes.Buffer, want Lines", r.Mode())
	}
	r.Start("local rep 1")
	r.Done()
	r.Start("central rep 1")
	r.Done()
	r.Finish()
	want := "bench (2 steps)\n[1/2] local rep 1\n[2/2] central rep 1\n"
	if buf.String() != want {
		t.Errorf("output %q, want %q", buf.String(), want)
	}
}

func TestBarDrawsSomething(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, 3, Bar, "bench")
	r.Start("step")
	r.Done()
	if !strings.Contains(buf.String(), "1/3") {
		t.Errorf("bar output %q lacks the count 1/3", buf.String())
	}
	r.Finish()
}

func TestOffAndNil(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, 3, Off, "bench")
	r.Start("x")
	r.Done()
	r.Finish()
	if buf.Len() != 0 {
		t.Errorf("Off wrote %q", buf.String())
	}
	var nr *Reporter
	nr.Start("x")
	nr.Done()
	nr.Finish()
	if nr.Mode() != Off {
		t.Error("nil reporter not Off")
	}
}
