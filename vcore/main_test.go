package vcore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/cgroups"
)

// Environment guards of the re-exec'd helpers. With shimEnv set, the test
// binary started as `<test> exec-in-cgroup --procs F... -- cmd` does what
// `vcored exec-in-cgroup` does (the vcore under test uses the test binary
// as its shim). helperEnv selects TestHelperVCore / TestHelperWorker.
const (
	shimEnv   = "VCORED_VCORE_TEST_SHIM"
	helperEnv = "VCORED_VCORE_TEST_HELPER"
)

func TestMain(m *testing.M) {
	if os.Getenv(shimEnv) == "1" && len(os.Args) > 1 && os.Args[1] == "exec-in-cgroup" {
		runShim(os.Args[2:])
	}
	if os.Getenv(helperEnv) != "" {
		os.Exit(m.Run())
	}
	os.Setenv(shimEnv, "1") // inherited by the vcore's subsystems
	code := m.Run()
	// Every test removes its partition cgroup tree; check none is left.
	for _, pattern := range []string{cgroups.DefaultRoot + "/" + testCgroupParent(), cgroups.DefaultRoot + "/*/" + testCgroupParent()} {
		if left, _ := filepath.Glob(pattern); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "FAIL: test cgroups left behind: %s\n", strings.Join(left, ", "))
			code = 1
		}
	}
	os.Exit(code)
}

// testCgroupParent is the cgroup under which this test process creates its
// partitions (unique per test binary run).
func testCgroupParent() string { return fmt.Sprintf("vcored-test-vcore-%d", os.Getpid()) }

// runShim is `vcored exec-in-cgroup --procs FILE... -- argv`.
func runShim(args []string) {
	var files []string
	for len(args) >= 2 && args[0] == "--procs" {
		files = append(files, args[1])
		args = args[2:]
	}
	if len(args) < 2 || args[0] != "--" {
		fmt.Fprintf(os.Stderr, "test shim: bad arguments %q\n", args)
		os.Exit(127)
	}
	err := cgroups.JoinAndExec(files, args[1:])
	fmt.Fprintf(os.Stderr, "test shim: %v\n", err)
	os.Exit(127)
}
