package vmtest

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// CorePackages run in every guest besides the packages that hold a
// *_numa_test.go file (those are found automatically). Add a package here
// to run its whole test suite on the multi-node kernel; a listed package
// that does not exist (yet) or has no tests is left out with a note.
//
// A package listed here must pass on the guest's kernel (Debian 6.1, cgroup
// v2 only, no cgroup v1 hierarchy) within the per-guest timeout.
// ./internal/linux is not listed: on 6.1 its in-process
// TestUffdWakeRefaults does not see the woken fault raised again (the
// cross-process takeover test of ./pager, which the failover design relies
// on, does pass there). ./internal/supervise and ./vcore are not listed:
// their unit tests assume dash's sh and nodes with GiBs of memory; the
// ./internal/e2e suite exercises both on cgroup v2 in the guest.
var CorePackages = []string{
	"./topology",
	"./pager",            // fault serving and takeover on the 6.1 kernel
	"./ramalloc",         // node-bound memory on real nodes
	"./internal/cgroups", // the v2 code paths on a cgroup2-only host
}

// NumaTestSuffix names the files that mark a package for the guest.
const NumaTestSuffix = "_numa_test.go"

// ModuleRoot returns the directory holding go.mod, searching upward from dir.
func ModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("vmtest: no go.mod above %s", dir)
		}
	}
}

// NumaPackages returns the packages under root ("./topology", ...) that
// hold a *_numa_test.go file, sorted. Hidden directories and testdata are
// not searched.
func NumaPackages(root string) ([]string, error) {
	set := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(d.Name(), NumaTestSuffix) {
			rel, err := filepath.Rel(root, filepath.Dir(p))
			if err != nil {
				return err
			}
			set[pkgArg(rel)] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("vmtest: searching %s for *%s: %w", root, NumaTestSuffix, err)
	}
	out := make([]string, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Strings(out)
	return out, nil
}

// pkgArg turns a directory relative to the module root into a go package
// argument ("./internal/linux").
func pkgArg(rel string) string {
	rel = filepath.ToSlash(filepath.Clean(rel))
	if rel == "." {
		return "."
	}
	return "./" + strings.TrimPrefix(rel, "./")
}

// GuestPackages returns the default guest package list: every package with a
// *_numa_test.go file plus those CorePackages that exist and have tests. The
// notes say what was left out and why.
func GuestPackages(root string) (pkgs, notes []string, err error) {
	numa, err := NumaPackages(root)
	if err != nil {
		return nil, nil, err
	}
	set := map[string]bool{}
	for _, p := range numa {
		set[p] = true
	}
	for _, p := range CorePackages {
		if set[p] {
			continue
		}
		if !hasTests(filepath.Join(root, filepath.FromSlash(p))) {
			notes = append(notes, fmt.Sprintf("%s left out: no such package or no *_test.go files", p))
			continue
		}
		set[p] = true
	}
	for p := range set {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	return pkgs, notes, nil
}

func hasTests(dir string) bool {
	m, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	return len(m) > 0
}

// BinaryName is the guest name of a package's test binary:
// "./internal/linux" → "internal_linux".
func BinaryName(pkg string) string {
	p := strings.TrimPrefix(filepath.ToSlash(filepath.Clean(pkg)), "./")
	if p == "." || p == "" {
		return "root"
	}
	return strings.ReplaceAll(p, "/", "_")
}

// Builder builds static binaries with the go tool.
type Builder struct {
	Root string // module root; commands run there
	Go   string // go binary ("go" when empty)
}

// ErrBuild is wrapped by every build failure.
var ErrBuild = errors.New("vmtest: build failed")

func (b Builder) run(args ...string) error {
	goBin := b.Go
	if goBin == "" {
		goBin = "go"
	}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = b.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: go %s: %w\n%s", ErrBuild, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

// Vcored builds ./cmd/vcored statically into dir and returns its path.
func (b Builder) Vcored(dir string) (string, error) {
	out := filepath.Join(dir, "vcored")
	if err := b.run("build", "-o", out, "./cmd/vcored"); err != nil {
		return "", err
	}
	return out, nil
}

// TestBinary builds pkg's test binary statically into dir. ok is false
// when the package has no tests (go test -c then writes nothing).
func (b Builder) TestBinary(pkg, dir string) (tb TestBinary, ok bool, err error) {
	name := BinaryName(pkg)
	out := filepath.Join(dir, name+".test")
	if err := b.run("test", "-c", "-o", out, pkg); err != nil {
		return TestBinary{}, false, err
	}
	if _, err := os.Stat(out); err != nil {
		return TestBinary{}, false, nil
	}
	rel := strings.TrimPrefix(filepath.ToSlash(filepath.Clean(pkg)), "./")
	if rel == "." {
		rel = ""
	}
	tb = TestBinary{Name: name, Path: out, Pkg: rel}
	td := filepath.Join(b.Root, filepath.FromSlash(rel), "testdata")
	if st, err := os.Stat(td); err == nil && st.IsDir() {
		tb.Testdata = td
	}
	return tb, true, nil
}
