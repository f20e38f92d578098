package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vcored/vcored/policy/policytest"
)

// seeds adds the example files and the test documents to a fuzz corpus.
func seeds(f *testing.F) {
	f.Add([]byte(fullCore))
	f.Add([]byte(fullVCore))
	f.Add([]byte("node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\ncpus = \"1-2\"\nmemory = \"4GB?\"\n"))
	f.Add([]byte("a = { b = [ { c = '''\n''' } ] }\n[x.y]\n[[x.z]]\n"))
	paths, _ := filepath.Glob("../../configs/*.toml")
	more, _ := filepath.Glob("../../configs/*/*.toml")
	for _, p := range append(paths, more...) {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
}

// checkFuzzResult asserts the contract for any input: either a config or
// an Errors of well-formed problems, never both, never a panic.
func checkFuzzResult(t *testing.T, ok bool, err error) {
	if ok == (err != nil) {
		t.Fatalf("config returned: %t, err: %v", ok, err)
	}
	if err == nil {
		return
	}
	var es Errors
	if !errors.As(err, &es) || len(es) == 0 {
		t.Fatalf("err is not a non-empty Errors: %v", err)
	}
	for _, e := range es {
		if e.File != "fuzz.toml" || e.Msg == "" || e.Err == nil || e.Line < 0 {
			t.Fatalf("malformed problem %#v", e)
		}
	}
}

func FuzzParseCore(f *testing.F) {
	seeds(f)
	machine := policytest.TwoSocketSMT2()
	f.Fuzz(func(t *testing.T, data []byte) {
		keyLines(data) // must not panic or hang even on invalid TOML
		c, err := ParseCore("fuzz.toml", data)
		checkFuzzResult(t, c != nil, err)
		if c != nil {
			_ = c.Validate(machine)
		}
	})
}

func FuzzParseVCore(f *testing.F) {
	seeds(f)
	machine := policytest.TwoSocketSMT2()
	core := DefaultCore()
	core.File = "core.toml"
	f.Fuzz(func(t *testing.T, data []byte) {
		DetectKind(data)
		v, err := ParseVCore("fuzz.toml", data)
		checkFuzzResult(t, v != nil, err)
		if v != nil {
			_ = v.Validate(machine, nil)
			_ = v.Validate(machine, core)
			_ = ValidateVCores(machine, core, []*VCore{v, v})
		}
	})
}
