package config

import (
	"bufio"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const configDoc = "../../docs/CONFIG.md"

// docRow is one key row of docs/CONFIG.md.
type docRow struct {
	kind Kind
	key  string // full path without indices: "subsystem.dataspace.seed"
	def  string // the default cell
	line int
}

var (
	docArray = regexp.MustCompile(`\[\[([a-z_.]+)\]\]`)
	docKey   = regexp.MustCompile("^\\| `([a-z_]+)` \\|")
)

// readConfigDoc parses the key tables of docs/CONFIG.md: a "## " heading
// naming core.toml or vcore files starts a file kind; a "### " heading
// naming an array of tables ([[subsystem]]) starts that table, whose rows'
// keys are under it; every row "| `key` | type | default | meaning |" is a
// key. The arrays of tables named by headings are keys too.
func readConfigDoc(t *testing.T) []docRow {
	t.Helper()
	f, err := os.Open(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var rows []docRow
	kind, prefix, inKind := KindCore, "", false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			inKind, prefix = true, ""
			switch {
			case strings.Contains(line, "core.toml"):
				kind = KindCore
			case strings.Contains(line, "vcore file"):
				kind = KindVCore
			default:
				inKind = false
			}
		case strings.HasPrefix(line, "### ") && inKind:
			prefix = ""
			if m := docArray.FindStringSubmatch(line); m != nil {
				prefix = m[1]
				rows = append(rows, docRow{kind: kind, key: prefix, line: n})
			}
		case inKind:
			m := docKey.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			cells := strings.Split(line, " | ")
			if len(cells) < 4 {
				t.Fatalf("%s:%d: a key row needs key, type, default and meaning", configDoc, n)
			}
			key := m[1]
			if prefix != "" {
				key = prefix + "." + key
			}
			rows = append(rows, docRow{kind: kind, key: key, def: cells[len(cells)-2], line: n})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// parserKeys returns every key the parser of kind asks for: a document with
// one of each table makes it ask for every key of every table.
func parserKeys(t *testing.T, kind Kind) []string {
	t.Helper()
	var d *decoder
	if kind == KindCore {
		_, d, _ = parseCore("core.toml", []byte("[[dataspace]]\n"))
	} else {
		_, d, _ = parseVCore("node0.toml", []byte("[[subsystem]]\n[subsystem.env]\n[[subsystem.dataspace]]\n"))
	}
	if d == nil {
		t.Fatal("the skeleton document does not parse as TOML")
	}
	var keys []string
	for k := range d.asked {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// TestConfigDocCoversEveryKey: docs/CONFIG.md documents exactly the keys
// the parsers know, per file kind. A key added to the parser without a row
// (or a row left for a removed key) fails here.
func TestConfigDocCoversEveryKey(t *testing.T) {
	rows := readConfigDoc(t)
	for _, kind := range []Kind{KindCore, KindVCore} {
		var doc []string
		for _, r := range rows {
			if r.kind == kind {
				doc = append(doc, r.key)
			}
		}
		slices.Sort(doc)
		known := parserKeys(t, kind)
		if len(known) < 10 {
			t.Fatalf("%s: the parser asked for only %v", kind, known)
		}
		for _, k := range known {
			if _, found := slices.BinarySearch(doc, k); !found {
				t.Errorf("%s file key %q is not documented in docs/CONFIG.md: add a row to its table", kind, k)
			}
		}
		for i, k := range doc {
			if i > 0 && doc[i-1] == k {
				t.Errorf("docs/CONFIG.md documents %s key %q twice", kind, k)
			}
			if _, found := slices.BinarySearch(known, k); !found {
				t.Errorf("docs/CONFIG.md documents %s key %q, which the parser does not know", kind, k)
			}
		}
	}
}

// TestConfigDocDefaults: every default written in docs/CONFIG.md as one
// TOML value in backticks gives, written into a file, the same
// configuration as leaving the key out. Defaults in words ("required",
// "the partition") are not checked.
func TestConfigDocDefaults(t *testing.T) {
	single := regexp.MustCompile("^`([^`]+)`$")
	const (
		vcoreBase = "node = 0\nmemory = \"1GiB\"\n"
		subBase   = "[[subsystem]]\nname = \"s\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\n"
		dsBase    = "name = \"d\"\nsize = \"4KiB\"\ncontent = \"pattern\"\n"
	)
	checked := 0
	for _, r := range readConfigDoc(t) {
		m := single.FindStringSubmatch(strings.TrimSpace(r.def))
		if m == nil {
			continue
		}
		path := strings.Split(r.key, ".")
		k := path[len(path)-1]
		line := k + " = " + m[1] + "\n"
		var without, with string
		switch table := strings.Join(path[:len(path)-1], "."); {
		case r.kind == KindCore && table == "":
			without, with = "", line
		case r.kind == KindCore && table == "dataspace":
			without, with = "[[dataspace]]\n"+dsBase, "[[dataspace]]\n"+dsBase+line
		case r.kind == KindVCore && table == "":
			without, with = vcoreBase, vcoreBase+line
		case r.kind == KindVCore && table == "subsystem":
			without, with = vcoreBase+subBase, vcoreBase+subBase+line
		case r.kind == KindVCore && table == "subsystem.dataspace":
			without, with = vcoreBase+subBase+"[[subsystem.dataspace]]\n"+dsBase, vcoreBase+subBase+"[[subsystem.dataspace]]\n"+dsBase+line
		default:
			t.Errorf("%s:%d: no test document for %s key %q", configDoc, r.line, r.kind, r.key)
			continue
		}
		a, errA := parseKind(r.kind, without)
		b, errB := parseKind(r.kind, with)
		if errA != nil || errB != nil {
			t.Errorf("%s:%d: %s = %s: %v / %v", configDoc, r.line, r.key, m[1], errA, errB)
			continue
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s:%d: %s key %q: the documented default %s is not the default:\nabsent:  %+v\nwritten: %+v", configDoc, r.line, r.kind, r.key, m[1], a, b)
		}
		checked++
	}
	if checked < 15 {
		t.Errorf("only %d defaults checked; is the table format still | `key` | type | `default` | meaning |?", checked)
	}
}

// parseKind parses data as a file of kind and clears what depends on line
// numbers.
func parseKind(kind Kind, data string) (any, error) {
	if kind == KindCore {
		c, err := ParseCore("f.toml", []byte(data))
		if c != nil {
			c.lines = nil
		}
		return c, err
	}
	v, err := ParseVCore("f.toml", []byte(data))
	if v != nil {
		v.lines = nil
	}
	return v, err
}
