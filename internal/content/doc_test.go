package content

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// docSplitmix64 and docWord are written from the pseudocode in
// docs/PROTOCOL.md ("The pattern content"), not from this package.
func docSplitmix64(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

func docWord(seed, off uint64) uint64 { return docSplitmix64(seed) ^ (off * 0x9E3779B97F4A7C15) }

// TestPatternDocExample reads the worked example of docs/PROTOCOL.md and
// checks every row (word and little-endian bytes) against Pattern, and the
// documented pseudocode against PatternWord for many seeds and offsets.
func TestPatternDocExample(t *testing.T) {
	f, err := os.Open("../../docs/PROTOCOL.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	heading := regexp.MustCompile(`^### Worked example: seed (\d+)$`)
	keyLine := regexp.MustCompile("^`splitmix64\\((\\d+)\\) = 0x([0-9a-f]{16})`")
	row := regexp.MustCompile("^\\| (\\d+) \\| `0x([0-9a-f]{16})` \\| `([0-9a-f ]+)` \\|$")
	var seed uint64
	inExample, rows, keys := false, 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := heading.FindStringSubmatch(line); m != nil {
			seed, _ = strconv.ParseUint(m[1], 10, 64)
			inExample = true
			continue
		}
		if strings.HasPrefix(line, "#") {
			inExample = false
		}
		if !inExample {
			continue
		}
		if m := keyLine.FindStringSubmatch(line); m != nil {
			s, _ := strconv.ParseUint(m[1], 10, 64)
			key, _ := strconv.ParseUint(m[2], 16, 64)
			if s != seed || splitmix64(s) != key {
				t.Errorf("doc: splitmix64(%d) = %#016x; the code gives %#016x", s, key, splitmix64(s))
			}
			keys++
			continue
		}
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		off, _ := strconv.ParseUint(m[1], 10, 64)
		word, _ := strconv.ParseUint(m[2], 16, 64)
		want, err := hex.DecodeString(strings.ReplaceAll(m[3], " ", ""))
		if err != nil || len(want) != 8 {
			t.Fatalf("doc row %q: bad bytes", line)
		}
		if got := PatternWord(seed, off); got != word {
			t.Errorf("doc: word(%d) of seed %d = %#016x; PatternWord gives %#016x", off, seed, word, got)
		}
		page := make([]byte, off+8)
		if err := Pattern(seed).Fill(page, 0); err != nil {
			t.Fatal(err)
		}
		if got := page[off : off+8]; !bytes.Equal(got, want) {
			t.Errorf("doc: bytes at %d of seed %d are % x; Fill writes % x", off, seed, want, got)
		}
		rows++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if keys != 1 || rows < 4 {
		t.Fatalf("found %d key lines and %d rows of the worked example in docs/PROTOCOL.md", keys, rows)
	}
	for _, seed := range []uint64{0, 1, 3, 7, 1 << 63, ^uint64(0)} {
		for off := uint64(0); off < 1<<20; off += 4088 {
			if a, b := docWord(seed, off&^7), PatternWord(seed, off&^7); a != b {
				t.Fatalf("seed %d offset %d: documented %#x, PatternWord %#x", seed, off&^7, a, b)
			}
		}
	}
}
