package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/topology"
)

// TestMain lets a test run this binary as vcored: with VCORED_TEST_MAIN=1
// in its environment the test binary is the command (os.Args[1:] are its
// arguments), so daemons under test run as real processes.
func TestMain(m *testing.M) {
	if os.Getenv("VCORED_TEST_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

// runAs runs the command in-process as if the effective uid were uid.
func runAs(uid int, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, log: newLogger(&errb), geteuid: func() int { return uid }}
	code = runEnv(e, args)
	return code, out.String(), errb.String()
}

func runCmd(args ...string) (code int, stdout, stderr string) { return runAs(os.Geteuid(), args...) }

// TestFlagErrorOnce: a bad flag is reported once, with a pointer to --help,
// not followed by the whole usage; --help prints the usage on stdout.
func TestFlagErrorOnce(t *testing.T) {
	for _, cmd := range []string{"status", "check", "core", "vcore", "topology", "bench", "worker"} {
		code, out, errs := runCmd(cmd, "--bogus")
		if code != exitUsage {
			t.Errorf("%s --bogus: exit %d, want %d", cmd, code, exitUsage)
		}
		if n := strings.Count(errs, "flag provided but not defined"); n != 1 {
			t.Errorf("%s --bogus: the error is printed %d times:\n%s", cmd, n, errs)
		}
		want := fmt.Sprintf("vcored %s: flag provided but not defined: -bogus (run 'vcored %s --help' for its flags)\n", cmd, cmd)
		if errs != want || out != "" {
			t.Errorf("%s --bogus: stderr %q stdout %q, want stderr %q", cmd, errs, out, want)
		}
	}
	code, out, errs := runCmd("status", "--help")
	if code != exitOK || !strings.HasPrefix(out, "usage: vcored status") || !strings.Contains(out, "-socket") || errs != "" {
		t.Errorf("status --help: exit %d stdout %q stderr %q", code, out, errs)
	}
}

func TestDidYouMean(t *testing.T) {
	for typo, want := range map[string]string{"statsu": "status", "chekc": "check", "stat": "status", "vcroe": "vcore", "topolgy": "topology", "Core": "core"} {
		code, _, errs := runCmd(typo)
		if code != exitUsage || !strings.Contains(errs, fmt.Sprintf("did you mean %q?", want)) {
			t.Errorf("%s: exit %d, stderr %q; want a suggestion of %q", typo, code, errs, want)
		}
	}
	code, _, errs := runCmd("xyzzy")
	if code != exitUsage || strings.Contains(errs, "did you mean") || !strings.Contains(errs, "unknown command \"xyzzy\"") || !strings.Contains(errs, "commands:") {
		t.Errorf("xyzzy: exit %d, stderr %q; want the usage and no suggestion", code, errs)
	}
	if s := suggest("exec-in-cgroup"); s != "" {
		t.Errorf("hidden commands are suggested: %q", s)
	}
	for _, c := range []struct {
		a, b string
		d    int
	}{{"", "", 0}, {"abc", "abc", 0}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"statsu", "status", 1}, {"ab", "ba", 1}} {
		if d := editDistance(c.a, c.b); d != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, d, c.d)
		}
	}
}

func TestVersion(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/vcored/vcored", Version: "v0.3.0"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "16ed9e1abc"}, {Key: "vcs.time", Value: "2026-11-29T22:00:00Z"}, {Key: "vcs.modified", Value: "true"}}}
	want := "vcored v0.3.0 (module github.com/vcored/vcored, go1.26.0)\nrevision 16ed9e1abc, committed 2026-11-29T22:00:00Z, with uncommitted changes\n"
	if got := versionString(bi); got != want {
		t.Errorf("versionString = %q, want %q", got, want)
	}
	bi.Settings = nil
	if got := versionString(bi); !strings.Contains(got, "revision unknown (built without VCS stamping") {
		t.Errorf("without VCS settings: %q", got)
	}
	for _, arg := range []string{"--version", "version"} {
		code, out, _ := runCmd(arg)
		if code != exitOK || !strings.HasPrefix(out, "vcored ") || !strings.Contains(out, "module github.com/vcored/vcored") {
			t.Errorf("%s: exit %d, stdout %q", arg, code, out)
		}
	}
}

// TestStatusNoDaemon: nothing listening is said as such, not blamed on
// permissions.
func TestStatusNoDaemon(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "core.sock")
	for _, uid := range []int{0, 1000} {
		code, _, errs := runAs(uid, "status", "--socket", missing)
		want := "vcored status: no daemon listening at " + missing + " (no such socket); is it running? start core with 'vcored core"
		if code != exitFailure || !strings.HasPrefix(errs, want) || strings.Contains(errs, "socket_group") {
			t.Errorf("uid %d, no socket: exit %d, stderr %q, want it to start with %q", uid, code, errs, want)
		}
	}
	// A socket file nobody listens on (left by a daemon that died).
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	code, _, errs := runCmd("status", "--socket", stale)
	if want := "no daemon listening at " + stale + " (the socket file is left from a daemon that has exited)"; code != exitFailure || !strings.Contains(errs, want) {
		t.Errorf("stale socket: exit %d, stderr %q, want %q", code, errs, want)
	}
	// Permission problems are still named as such.
	err = dialError("/run/vcored/core.sock", 1000, fmt.Errorf("dial: %w", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)}))
	if !strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), "uid 1000") {
		t.Errorf("EACCES: %v", err)
	}
	err = dialError("/run/vcored/core.sock", 1000, errors.New("EOF"))
	if !strings.Contains(err.Error(), "socket_group") {
		t.Errorf("refused by the daemon as uid 1000: %v", err)
	}
}

// TestDaemonsNeedRoot: core and vcore refuse a non-root user at once, before
// reading their file, with exit 2 and a message that says why.
func TestDaemonsNeedRoot(t *testing.T) {
	for _, cmd := range []string{"core", "vcore"} {
		code, _, errs := runAs(1000, cmd, "--config", "/nonexistent/vcored.toml")
		want := "vcored " + cmd + ": must run as root (it creates cgroups"
		if code != exitUsage || !strings.HasPrefix(errs, want) || !strings.Contains(errs, "you are uid 1000") || strings.Contains(errs, "nonexistent") {
			t.Errorf("%s as uid 1000: exit %d, stderr %q, want exit 2 and %q", cmd, code, errs, want)
		}
		// As root, a missing file is said in the file:line format of config errors.
		if code, _, errs := runAs(0, cmd, "--config", "/nonexistent/vcored.toml"); code != exitUsage || errs != "vcored "+cmd+": /nonexistent/vcored.toml: no such file\n" {
			t.Errorf("%s, missing file: exit %d, stderr %q", cmd, code, errs)
		}
		// --help still works for everyone.
		if code, out, _ := runAs(1000, cmd, "--help"); code != exitOK || !strings.Contains(out, "usage: vcored "+cmd) {
			t.Errorf("%s --help as uid 1000: exit %d", cmd, code)
		}
	}
}

// writeVCoreNoCore writes a vcore file for node 0 of this host whose core
// socket nobody listens on.
func writeVCoreNoCore(t *testing.T, logLevel string) (file, coreSock string) {
	dir := t.TempDir()
	coreSock = filepath.Join(dir, "core.sock")
	body := fmt.Sprintf("node = 0\ncore_socket = %q\nsocket = %q\nstate_dir = %q\nmemory = \"64MiB\"\n", coreSock, filepath.Join(dir, "v.sock"), filepath.Join(dir, "state"))
	if logLevel != "" {
		body += fmt.Sprintf("log_level = %q\n", logLevel)
	}
	return writeFile(t, dir, "node0.toml", body), coreSock
}

// TestVCoreWaitsForCoreLoudly: a vcore started before core says at once
// (info level) where it waits, then gives up after --core-timeout with
// exit 1; with log_level = "warn" the info line is not logged.
func TestVCoreWaitsForCoreLoudly(t *testing.T) {
	if os.Getenv("VCORED_DEBUG") != "" {
		t.Skip("VCORED_DEBUG overrides log_level")
	}
	for _, level := range []string{"", "info", "warn"} {
		file, coreSock := writeVCoreNoCore(t, level)
		start := time.Now()
		code, _, errs := runCmd("vcore", "--config", file, "--core-timeout", "1500ms")
		took := time.Since(start)
		if code != exitFailure || !strings.Contains(errs, "core is not reachable at "+coreSock+" (tried for 1.5s)") {
			t.Fatalf("log_level %q: exit %d, stderr:\n%s", level, code, errs)
		}
		if took < time.Second {
			t.Errorf("gave up after %v, before --core-timeout 1.5s", took)
		}
		waiting := fmt.Sprintf("level=INFO msg=\"waiting for core at %s\"", coreSock)
		if level == "warn" {
			if strings.Contains(errs, "level=INFO") {
				t.Errorf("log_level warn: info lines logged:\n%s", errs)
			}
			continue
		}
		if n := strings.Count(errs, waiting); n != 1 {
			t.Errorf("log_level %q: %q logged %d times, want once:\n%s", level, waiting, n, errs)
		}
	}
	if code, _, errs := runCmd("vcore", "--config", "x.toml", "--core-timeout", "0s"); code != exitUsage || !strings.Contains(errs, "--core-timeout") {
		t.Errorf("--core-timeout 0s: exit %d, stderr %q", code, errs)
	}
}

// TestCoreLogLevel runs `vcored core` (this test binary as vcored) with
// log_level info and warn, stops it with SIGTERM and checks which lines
// it logged.
func TestCoreLogLevel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("core needs root")
	}
	if os.Getenv("VCORED_DEBUG") != "" {
		t.Skip("VCORED_DEBUG overrides log_level")
	}
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	if m.AllowedCPUs.Len() < 2 {
		t.Skipf("core keeps one CPU and needs one left for a partition; have %s", m.AllowedCPUs)
	}
	lowest, _ := m.AllowedCPUs.Min()
	for _, level := range []string{"info", "warn"} {
		t.Run(level, func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "core.sock")
			cg := fmt.Sprintf("vcored-test-cmd-loglevel-%d", os.Getpid())
			file := writeFile(t, dir, "core.toml", fmt.Sprintf("socket = %q\nstate_dir = %q\ncgroup_parent = %q\nreserved_cpus = \"%d\"\nreserved_memory = \"64MiB\"\nlog_level = %q\n",
				sock, filepath.Join(dir, "state"), cg, lowest, level))
			var out bytes.Buffer
			cmd := exec.Command(os.Args[0], "core", "--config", file)
			cmd.Env = append(withoutEnv(os.Environ(), "VCORED_DEBUG"), "VCORED_TEST_MAIN=1")
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() {
				cmd.Process.Kill()
				<-done
				removeCgroup(cg) // core removes it on a clean stop; this is for a failed run
			})
			// Wait for the socket while core runs; no deadline on a slow
			// start, only on core exiting.
			for {
				if _, err := os.Stat(sock); err == nil {
					break
				}
				select {
				case err := <-done:
					done <- err
					t.Fatalf("core exited before listening (%v):\n%s", err, out.String())
				case <-time.After(20 * time.Millisecond):
				}
			}
			cmd.Process.Signal(syscall.SIGTERM)
			err := <-done
			done <- err
			if err != nil {
				t.Fatalf("core: %v\n%s", err, out.String())
			}
			logged := out.String()
			switch level {
			case "info":
				if !strings.Contains(logged, `level=INFO msg="core starting"`) {
					t.Errorf("log_level info: no info line:\n%s", logged)
				}
			case "warn":
				if strings.Contains(logged, "level=INFO") {
					t.Errorf("log_level warn: info lines logged:\n%s", logged)
				}
			}
		})
	}
}

func withoutEnv(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// removeCgroup removes what a core under test may have left (nothing on a
// clean stop).
func removeCgroup(name string) {
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		os.Remove(filepath.Join(root, name))
		ents, _ := os.ReadDir(root)
		for _, e := range ents {
			os.Remove(filepath.Join(root, e.Name(), name))
		}
	}
}

// TestDaemonsNeedRootForReal runs `vcored core` and `vcored vcore` (this
// test binary as vcored) as user nobody: exit 2 and the reason, before the
// configuration is even read.
func TestDaemonsNeedRootForReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a command as another user")
	}
	dir, err := os.MkdirTemp("", fmt.Sprintf("vcored-cmd-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // go test's build directory is private to root
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "vcored.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, cmdName := range []string{"core", "vcore"} {
		var out bytes.Buffer
		cmd := exec.Command(bin, cmdName, "--config", "/nonexistent/vcored.toml")
		cmd.Env = []string{"VCORED_TEST_MAIN=1", "PATH=/usr/bin:/bin"}
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = &out, &out
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitUsage {
			t.Fatalf("%s as nobody: %v, want exit %d\n%s", cmdName, err, exitUsage, out.String())
		}
		want := "vcored " + cmdName + ": must run as root (it creates cgroups"
		if !strings.HasPrefix(out.String(), want) || !strings.Contains(out.String(), "you are uid 65534") {
			t.Errorf("%s as nobody said %q, want %q...", cmdName, out.String(), want)
		}
	}
}
