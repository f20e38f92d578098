package config

import (
	"testing"
)

func TestKeyLines(t *testing.T) {
	doc := `# a comment with [[subsystem]] and key = "value"
node = 0
memory = "1GiB"   # trailing comment
"quoted.key" = 1
note = """
[[subsystem]]
fake = 1
"""
lit = '''
x = 1'''

[[subsystem]]
name = "a"
command = [
  "sh", # comment = inside
  "-c",
  "echo [x] = y",
]
env = { A = "1", B = "2" }
limits.soft = 3

[subsystem.env2]
HOME = "/root"

[[subsystem.dataspace]]
name = "d0"

[[subsystem]]
name = "b"
list = [{ x = 1 },
  { x = 2 }]

[[subsystem.dataspace]]
name = "d1"
[[subsystem.dataspace]]
name = "d2"
`
	lines := keyLines([]byte(doc))
	want := map[string]int{
		"node":                           2,
		"memory":                         3,
		`"quoted.key"`:                   4,
		"note":                           5,
		"lit":                            9,
		"subsystem[0]":                   12,
		"subsystem[0].name":              13,
		"subsystem[0].command":           14,
		"subsystem[0].command[1]":        16,
		"subsystem[0].command[2]":        17,
		"subsystem[0].env.B":             19,
		"subsystem[0].limits.soft":       20,
		"subsystem[0].env2":              22,
		"subsystem[0].env2.HOME":         23,
		"subsystem[0].dataspace[0].name": 26,
		"subsystem[1]":                   28,
		"subsystem[1].list[1].x":         31,
		"subsystem[1].dataspace[0]":      33,
		"subsystem[1].dataspace[1].name": 36,
	}
	for k, w := range want {
		if got := lines[k]; got != w {
			t.Errorf("line of %s = %d, want %d", k, got, w)
		}
	}
	for _, fake := range []string{"fake", "x", "subsystem[2]"} {
		if l, ok := lines[fake]; ok {
			t.Errorf("%s recorded at line %d; it is inside a string or absent", fake, l)
		}
	}
	if got := lineOf(lines, "subsystem[1].dataspace[1].size"); got != 35 {
		t.Errorf("lineOf an absent key = %d, want its table's line 35", got)
	}
	if got := lineOf(lines, "nothing.here"); got != 0 {
		t.Errorf("lineOf unknown = %d, want 0", got)
	}
}
