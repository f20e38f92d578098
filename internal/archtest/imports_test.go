package archtest

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/vcored/vcored/"

// adapters maps a third-party import path prefix to the only package
// directory (relative to the module root) allowed to import it outside tests.
var adapters = map[string]string{
	"golang.org/x/sys/unix":                  "internal/linux",
	"github.com/BurntSushi/toml":             "internal/config",
	"github.com/containerd/cgroups":          "internal/cgroups",
	"github.com/prometheus/":                 "internal/metrics",
	"github.com/HdrHistogram/":               "internal/hist",
	"gonum.org/v1/plot":                      "internal/plot",
	"github.com/shirou/gopsutil":             "internal/sysinfo",
	"github.com/schollz/progressbar":         "internal/progress",
	"github.com/opencontainers/runtime-spec": "internal/cgroups",
	"github.com/containerd/nri":              "internal/nri",
}

// engines may not be imported by mechanisms.
var engines = []string{"core", "vcore"}

// mechanisms are the packages (and their subtrees) that sit below the engines.
var mechanisms = []string{"pager", "ramalloc", "topology", "policy", "internal"}

func TestImportRules(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		dir := filepath.ToSlash(filepath.Dir(rel))
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for prefix, owner := range adapters {
				if strings.HasPrefix(p, prefix) && dir != owner && !strings.HasPrefix(dir, owner+"/") {
					t.Errorf("%s imports %s: only %s may (keep each third-party library behind one adapter)", rel, p, owner)
				}
			}
			if !strings.HasPrefix(p, module) {
				continue
			}
			target := strings.TrimPrefix(p, module)
			for _, m := range mechanisms {
				if dir != m && !strings.HasPrefix(dir, m+"/") {
					continue
				}
				for _, e := range engines {
					if target == e || strings.HasPrefix(target, e+"/") {
						if target == "vcore/client" {
							continue // the worker-side client is a leaf library, not the engine
						}
						t.Errorf("%s (a mechanism) imports engine package %s", rel, target)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 10 {
		t.Fatalf("checked only %d files: is the walk rooted at the module?", checked)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found: %v", err)
	}
}
