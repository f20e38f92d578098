package hw

import (
	"errors"
	"testing"
)

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Bytes
		str  string
	}{
		{"0", 0, "0B"},
		{"4096", 4096, "4KiB"},
		{"1000", 1000, "1000B"},
		{"512MiB", 512 * MiB, "512MiB"},
		{"2GiB", 2 * GiB, "2GiB"},
		{"1536MiB", 1536 * MiB, "1536MiB"},
		{"1G", GiB, "1GiB"},
		{" 64 MiB ", 64 * MiB, "64MiB"},
		{"3B", 3, "3B"},
		{"1TiB", TiB, "1TiB"},
	} {
		got, err := ParseBytes(tc.in)
		if err != nil {
			t.Fatalf("ParseBytes(%q): %v", tc.in, err)
		}
		if got != tc.want || got.String() != tc.str {
			t.Errorf("ParseBytes(%q) = %d (%s), want %d (%s)", tc.in, got, got, tc.want, tc.str)
		}
	}
	for _, in := range []string{"", "4GB?", "4GB", "4gb", "-1", "1.5GiB", "MiB", "99999999999TiB", "12 parsecs"} {
		if _, err := ParseBytes(in); !errors.Is(err, ErrBadSize) {
			t.Errorf("ParseBytes(%q): err = %v, want ErrBadSize", in, err)
		}
	}
}

func TestHuman(t *testing.T) {
	for b, want := range map[Bytes]string{0: "0B", 900: "900B", 512 * MiB: "512MiB", 5597396 * KiB: "5.3GiB", 1536 * MiB: "1.5GiB", 150 * GiB: "150GiB", 2047: "2.0KiB"} {
		if got := b.Human(); got != want {
			t.Errorf("Bytes(%d).Human() = %q, want %q", uint64(b), got, want)
		}
	}
}
