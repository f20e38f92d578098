package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const (
	checkFixtures = "../../topology/testdata/"
	configsDir    = "../../configs/"
)

// runCheckCmd runs `vcored check args...` and returns the exit code and streams.
func runCheckCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"check"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// wantOK asserts exit 0 and one "FILE: ok" line per file.
func wantOK(t *testing.T, files []string, args ...string) {
	t.Helper()
	code, out, errs := runCheckCmd(t, append(args, files...)...)
	if code != exitOK {
		t.Fatalf("vcored check %v: exit %d\nstdout:\n%s\nstderr:\n%s", append(args, files...), code, out, errs)
	}
	var want []string
	for _, f := range files {
		want = append(want, f+": ok")
	}
	if got := strings.Split(strings.TrimSpace(out), "\n"); !slices.Equal(got, want) {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

// TestCheckConfigs checks every file under configs/ against the topology it
// is written for, and fails when a file is not covered by any of the sets.
func TestCheckConfigs(t *testing.T) {
	sets := []struct {
		name  string
		sysfs string // "" = the host
		files []string
	}{
		{"dev machine fixture", checkFixtures + "single-node-2cpu", []string{configsDir + "core.toml", configsDir + "node0.toml"}},
		{"two sockets", checkFixtures + "two-socket-smt2", []string{configsDir + "two-node/core.toml", configsDir + "two-node/node0.toml", configsDir + "two-node/node1.toml"}},
	}
	covered := map[string]bool{}
	for _, s := range sets {
		t.Run(s.name, func(t *testing.T) {
			wantOK(t, s.files, "--sysfs", s.sysfs)
		})
		for _, f := range s.files {
			covered[filepath.Clean(f)] = true
		}
	}
	err := filepath.WalkDir(configsDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !covered[filepath.Clean(path)] {
			t.Errorf("%s is not checked by TestCheckConfigs: add it to a set", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestCheckConfigsOnHost checks configs/core.toml and node0.toml against
// this machine, which they are written for (CPU 0 for core, CPU 1 for the
// vcore of node 0).
func TestCheckConfigsOnHost(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skipf("configs/ needs CPUs 0 and 1; this machine has %d CPU", runtime.NumCPU())
	}
	wantOK(t, []string{configsDir + "core.toml", configsDir + "node0.toml"})
}

// TestCheckWrongTopology: the two-node set does not fit the dev machine.
func TestCheckWrongTopology(t *testing.T) {
	code, out, errs := runCheckCmd(t, "--sysfs", checkFixtures+"single-node-2cpu",
		configsDir+"two-node/core.toml", configsDir+"two-node/node0.toml", configsDir+"two-node/node1.toml")
	if code != exitUsage {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitUsage, out, errs)
	}
	for _, want := range []string{
		"two-node/core.toml:8: reserved_cpus: CPU 8 is not an online CPU of this machine (online: 0-1)",
		"two-node/node1.toml:4: node: node 1 does not exist (online nodes: 0)",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errs)
		}
	}
}

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckUnknownKey(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.toml", "# core\nsocket = \"/run/vcored/core.sock\"\nsoket = \"/run/x.sock\"\n")
	code, out, errs := runCheckCmd(t, "--sysfs", checkFixtures+"single-node-2cpu", bad)
	if code != exitUsage {
		t.Fatalf("exit %d, want %d", code, exitUsage)
	}
	if want := bad + ":3: soket: unknown key\n"; !strings.HasPrefix(errs, want) {
		t.Errorf("stderr = %q, want it to start with %q", errs, want)
	}
	if strings.Contains(out, "ok") {
		t.Errorf("stdout = %q for a bad file", out)
	}
}

// TestCheckEveryProblem: problems of several files and kinds (parse, machine,
// cross-file) are all listed, good files still say ok.
func TestCheckEveryProblem(t *testing.T) {
	dir := t.TempDir()
	core := writeFile(t, dir, "core.toml", "reserved_cpus = \"0\"\n[[dataspace]]\nname = \"dataset\"\nsize = \"64MiB\"\n")
	good := writeFile(t, dir, "good.toml", "node = 0\ncpus = \"1\"\nmemory = \"1GiB\"\n")
	parse := writeFile(t, dir, "parse.toml", "node = 0\nmemory = \"4GB?\"\nfault_around = \"x\"\n[[subsystem]]\nname = \"a\"\nmemory = \"1MiB\"\n")
	topo := writeFile(t, dir, "topo.toml", "node = 0\nsocket = \"/run/t.sock\"\nstate_dir = \"/var/t\"\ncpus = \"0-1\"\nmemory = \"1GiB\"\n"+
		"[[subsystem]]\nname = \"a\"\ncommand = [\"true\"]\nmemory = \"1MiB\"\ndataspaces = [\"nope\"]\n")
	code, out, errs := runCheckCmd(t, "--sysfs", checkFixtures+"single-node-2cpu", core, good, parse, topo)
	if code != exitUsage {
		t.Fatalf("exit %d, want %d\n%s%s", code, exitUsage, out, errs)
	}
	want := []string{
		parse + ":2: memory: bad size \"4GB?\": unknown unit (use B, KiB, MiB, GiB or TiB)",
		parse + ":3: fault_around: expected an integer, got string \"x\"",
		parse + ":4: subsystem[0].command: required: the program and its arguments, e.g. [\"sleep\", \"infinity\"]",
		topo + ":4: cpus: CPU 0 is reserved by core (reserved_cpus = \"0\" in " + core + ")",
		topo + ":4: cpus: CPUs 1 of node 0 are also leased by " + good,
		topo + ":10: subsystem[0].dataspaces[0]: dataspace \"nope\" is not declared in " + core,
		"vcored check: 6 problem(s) in 2 of 4 file(s)",
	}
	if got := strings.Split(strings.TrimSpace(errs), "\n"); !slices.Equal(got, want) {
		t.Errorf("stderr:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if wantOut := core + ": ok\n" + good + ": ok\n"; out != wantOut {
		t.Errorf("stdout = %q, want %q", out, wantOut)
	}
}

func TestCheckUsage(t *testing.T) {
	if code, _, _ := runCheckCmd(t); code != exitUsage {
		t.Errorf("no files: exit %d, want %d", code, exitUsage)
	}
	if code, _, _ := runCheckCmd(t, "--help"); code != exitOK {
		t.Errorf("--help: exit %d, want %d", code, exitOK)
	}
	if code, _, _ := runCheckCmd(t, "--sysfs", "/nonexistent-dir", configsDir+"core.toml"); code != exitUsage {
		t.Errorf("bad --sysfs: exit %d, want %d", code, exitUsage)
	}
	code, _, errs := runCheckCmd(t, "--sysfs", checkFixtures+"single-node-2cpu", filepath.Join(t.TempDir(), "missing.toml"))
	if code != exitUsage || !strings.Contains(errs, "missing.toml") {
		t.Errorf("missing file: exit %d, stderr %q", code, errs)
	}
	dir := t.TempDir()
	a := writeFile(t, dir, "a.toml", "")
	b := writeFile(t, dir, "b.toml", "")
	if code, _, errs := runCheckCmd(t, "--sysfs", checkFixtures+"single-node-2cpu", a, b); code != exitUsage || !strings.Contains(errs, "a second core file") {
		t.Errorf("two core files: exit %d, stderr %q", code, errs)
	}
}

// TestCheckMissingFile: an unreadable file is reported in the file:line
// format of every other problem (without a line), once, with exit 2.
func TestCheckMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.toml")
	code, out, errs := runCheckCmd(t, "--sysfs", checkFixtures+"single-node-2cpu", configsDir+"core.toml", missing)
	want := missing + ": no such file\nvcored check: 1 problem(s) in 1 of 2 file(s)\n"
	if code != exitUsage || errs != want {
		t.Errorf("exit %d, stderr %q; want %d, %q", code, errs, exitUsage, want)
	}
	if out != configsDir+"core.toml: ok\n" {
		t.Errorf("stdout %q", out)
	}
}

// TestCheckCommandWarnings: a subsystem program that does not exist or is
// not executable is a warning at the command's line; the file is still ok
// and the exit code 0. A program found in PATH (or the subsystem's own
// PATH) is not warned about.
func TestCheckCommandWarnings(t *testing.T) {
	dir := t.TempDir()
	noexec := writeFile(t, dir, "noexec", "#!/bin/sh\n")
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "myprog"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := writeFile(t, dir, "node0.toml", `node = 0
memory = "64MiB"
[[subsystem]]
name = "absent"
command = ["/nonexistent/foo", "--x"]
memory = "1MiB"
[[subsystem]]
name = "inpath"
command = ["sh", "-c", "true"]
memory = "1MiB"
[[subsystem]]
name = "notinpath"
command = ["vcored-no-such-program-x"]
memory = "1MiB"
[[subsystem]]
name = "noexec"
memory = "1MiB"
command = [`+fmt.Sprintf("%q", noexec)+`]
[[subsystem]]
name = "dir"
command = [`+fmt.Sprintf("%q", dir)+`]
memory = "1MiB"
[[subsystem]]
name = "ownpath"
command = ["myprog"]
memory = "1MiB"
env = { PATH = `+fmt.Sprintf("%q", bin)+` }
`)
	code, out, errs := runCheckCmd(t, "--sysfs", checkFixtures+"single-node-2cpu", f)
	if code != exitOK || out != f+": ok\n" {
		t.Errorf("exit %d, stdout %q; want 0 and ok (warnings only)\n%s", code, out, errs)
	}
	want := []string{
		f + `:5: subsystem[0].command: "/nonexistent/foo" not found (warning)`,
		f + `:13: subsystem[2].command: "vcored-no-such-program-x" not found in PATH (warning)`,
		f + `:18: subsystem[3].command: "` + noexec + `" is not executable (warning)`,
		f + `:21: subsystem[4].command: "` + dir + `" is a directory (warning)`,
	}
	if got := strings.Split(strings.TrimSpace(errs), "\n"); !slices.Equal(got, want) {
		t.Errorf("stderr:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Warnings are listed with the machine errors of a file that parses,
	// in line order; errors set the exit code.
	bad := writeFile(t, dir, "bad.toml", "node = 0\nmemory = \"64MiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"/nonexistent/foo\"]\nmemory = \"1MiB\"\ncpus = \"5\"\n[[subsystem]]\nname = \"b\"\ncommand = [\"sleep\"]\nmemory = \"1MiB\"\n")
	code, _, errs = runCheckCmd(t, "--sysfs", checkFixtures+"single-node-2cpu", bad)
	want = []string{
		bad + `:5: subsystem[0].command: "/nonexistent/foo" not found (warning)`,
		bad + `:7: subsystem[0].cpus: CPUs 5 are not in the partition "0-1"`,
		"vcored check: 1 problem(s) in 1 of 1 file(s)",
	}
	if got := strings.Split(strings.TrimSpace(errs), "\n"); code != exitUsage || !slices.Equal(got, want) {
		t.Errorf("exit %d, stderr:\n%s\nwant:\n%s", code, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
