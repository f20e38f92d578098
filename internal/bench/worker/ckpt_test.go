package worker

import (
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
	"unsafe"

	"github.com/vcored/vcored/internal/bench"
)

// TestCkptPageWords: a written page holds bench.CkptWord of its
// generation at every word, verifies against that generation, and fails
// against another one or with one word changed, naming the offset.
func TestCkptPageWords(t *testing.T) {
	const ps = 4096
	mem := make([]byte, 3*ps)
	writePage(mem, 1, ps, 7, 3)
	words := unsafeWords(mem[ps : 2*ps])
	for j, w := range words {
		if want := bench.CkptWord(7, 3, uint64(ps+8*j)); w != want {
			t.Fatalf("word %d = %#x, want %#x", j, w, want)
		}
	}
	if err := checkPage(mem, 1, ps, 7, 3); err != nil {
		t.Errorf("check: %v", err)
	}
	if err := checkPage(mem, 0, ps, 7, 0); err != nil {
		t.Errorf("zero page: %v", err)
	}
	if err := checkPage(mem, 1, ps, 7, 2); !errors.Is(err, ErrVerify) {
		t.Errorf("older generation: %v", err)
	}
	words[100] ^= 1
	if err := checkPage(mem, 1, ps, 7, 3); !errors.Is(err, ErrVerify) || !strings.Contains(err.Error(), "offset 0x1320") {
		t.Errorf("changed word: %v", err)
	}
}

// TestCkptFlags: --ckpt-role makes the scenario's config; bad ones are
// usage errors.
func TestCkptFlags(t *testing.T) {
	attach := func(context.Context, string, int) (Mapping, error) { return nil, errors.New("unused") }
	parse := func(args ...string) (Config, error) {
		fs := flag.NewFlagSet("worker", flag.ContinueOnError)
		f := BindFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return f.Config(attach)
	}
	cfg, err := parse("--ckpt-role", "restore", "--ckpt-control", "/c", "--dataspace", "p,u", "--pages", "64",
		"--ckpt-track-pages", "16", "--ckpt-epochs", "2", "--ckpt-passes", "4", "--ckpt-incrementals", "5", "--seed", "9", "--cpu", "1")
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Ckpt
	if c == nil || c.Role != "restore" || c.Control != "/c" || c.Persistent != "p" || c.Plain != "u" || c.Pages != 64 ||
		c.TrackPages != 16 || c.Epochs != 2 || c.Passes != 4 || c.Incrementals != 5 || c.Seed != 9 || c.CPU != 1 || c.Attach == nil {
		t.Errorf("config %+v", c)
	}
	for _, bad := range [][]string{
		{"--ckpt-role", "nap", "--ckpt-control", "/c", "--dataspace", "p,u", "--pages", "4"},
		{"--ckpt-role", "restore", "--dataspace", "p,u", "--pages", "4"},
		{"--ckpt-role", "restore", "--ckpt-control", "/c", "--dataspace", "p", "--pages", "4"},
		{"--ckpt-role", "restore", "--ckpt-control", "/c", "--dataspace", "p,u", "--pages", "4", "--ckpt-track-pages", "5"},
		{"--ckpt-role", "restore", "--ckpt-control", "/c", "--dataspace", "p,u"},
	} {
		if _, err := parse(bad...); !errors.Is(err, bench.ErrUsage) {
			t.Errorf("%v: %v, want a usage error", bad, err)
		}
	}
}

func unsafeWords(b []byte) []uint64 { return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8) }
