package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/content"
)

// TestReplicaFileContent: a core-owned read-only dataspace with file
// content. The first worker's faults are forwarded to core, which also
// sends the vcore each page it mapped (ReplicaPage); a second worker of the
// same vcore gets every page from the vcore's node-local replica, without a
// forward, and both see exactly the file's bytes (the file holds the
// pattern of seed 13, so the workers' pattern check compares every byte of
// every page with the file). The same file declared writable is never
// replicated: both workers' faults are forwarded.
func TestReplicaFileContent(t *testing.T) {
	c := newCluster(t)
	const pages = 1024
	ps := os.Getpagesize()
	file := make([]byte, pages*ps)
	if err := content.Pattern(13).Fill(file, 0); err != nil {
		t.Fatal(err)
	}
	src := c.write("lib.bin", string(file))
	c.startCore(c.coreConfig(fmt.Sprintf(`
[[dataspace]]
name = "lib"
size = "%d"
content = "file"
source = %q

[[dataspace]]
name = "rwlib"
size = "%d"
content = "file"
source = %q
writable = true
`, len(file), src, len(file), src)))
	first, second := c.path("first.json"), c.path("second.json")
	sub := func(name, result, wait string) string {
		cmd := []string{vcoredBin, "worker", "--mode", "uffd", "--result", result, "--dataspace", "lib,rwlib",
			"--pages", fmt.Sprint(pages), "--verify", "pattern:13"}
		if wait != "" {
			cmd = append(cmd, "--wait-file", wait)
		}
		q := make([]string, len(cmd))
		for i, a := range cmd {
			q[i] = fmt.Sprintf("%q", a)
		}
		return fmt.Sprintf(`
[[subsystem]]
name = %q
command = [%s]
memory = "96MiB"
restart = "never"
dataspaces = ["lib", "rwlib"]
`, name, strings.Join(q, ", "))
	}
	c.startVCore(0, c.vcoreConfig(0, `replica_budget = "8MiB"`+"\n"+sub("first", first, "")+sub("second", second, first)))
	waitResult(t, c, first, pages)
	waitResult(t, c, second, pages)

	lib, rw := pagerStats(t, c.vcoreSocket(0), "lib"), pagerStats(t, c.vcoreSocket(0), "rwlib")
	t.Logf("lib: %d faults, %d forwarded, %d from the replica; rwlib: %d faults, %d forwarded, %d from the replica",
		lib.Faults, lib.Forwarded, lib.Replicated, rw.Faults, rw.Forwarded, rw.Replicated)
	// The first worker's faults are forwarded (a fault raised twice may be
	// forwarded twice); the second's are served from the replica.
	if lib.Forwarded < pages || lib.Forwarded >= 2*pages || lib.Replicated < pages {
		t.Errorf("read-only file dataspace: %d forwarded, %d from the replica; want the first worker's %d pages forwarded, the second's from the replica",
			lib.Forwarded, lib.Replicated, pages)
	}
	if rw.Replicated != 0 || rw.Forwarded < 2*pages {
		t.Errorf("writable file dataspace: %d forwarded, %d from the replica; want every fault of both workers (%d pages each) forwarded",
			rw.Forwarded, rw.Replicated, pages)
	}
	if core := pagerStats(t, c.coreSocket(), "lib"); core.Faults < pages || core.Faults >= 2*pages {
		t.Errorf("core resolved %d faults of lib, want the first worker's %d (the second's came from the replica)", core.Faults, pages)
	}
}
