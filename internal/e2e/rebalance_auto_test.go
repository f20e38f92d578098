package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
)

// autoRefusal is how a core that cannot move subsystems refuses
// rebalance = "auto" (core.checkRebalance).
const autoRefusal = `rebalance: "auto" needs moves between nodes, which this core cannot make; use "advise"`

// startCoreAuto starts core with a config asking for rebalance = "auto"
// (extra is appended). It returns the running core, or nil and the refusal
// after checking that core refused cleanly: exit 2, the file and line of the
// key named, no socket left.
func (c *cluster) startCoreAuto(t *testing.T, extra string) (*daemon, string) {
	t.Helper()
	body := c.coreConfig("rebalance = \"auto\"\n" + extra)
	cfg := c.write("core.toml", body)
	d := c.start("core", c.coreSocket(), "core", "--config", cfg)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var info api.Info
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := api.NewClient(d.socket).Get(ctx, "/v1/info", &info)
		cancel()
		if err == nil {
			c.core = d
			return d, ""
		}
		select {
		case <-d.done:
			line := keyLine(body, "rebalance = ")
			var ee *exec.ExitError
			if !errorsAs(d.err, &ee) || ee.ExitCode() != 2 || !strings.Contains(d.log.String(), fmt.Sprintf("%s:%d: %s", cfg, line, autoRefusal)) {
				t.Fatalf("core with rebalance = \"auto\" exited (%v) without the refusal %q at %s:%d:\n%s", d.err, autoRefusal, cfg, line, d.log)
			}
			if _, err := os.Stat(c.coreSocket()); err == nil {
				t.Errorf("core refused rebalance = \"auto\" and left its socket")
			}
			return nil, d.log.String()
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("core did not answer on %s within 20s\n%s", d.socket, d.log)
	return nil, ""
}

// TestRebalanceAutoOneNode: rebalance = "auto" passes `vcored check`. A
// core that cannot move subsystems refuses it at start (exit 2, naming the
// line, no socket); one that can runs the sampler in auto mode and, with a
// single partition, moves nothing, saying why in /v1/rebalance and `vcored
// status`, and exports the move counters at 0.
func TestRebalanceAutoOneNode(t *testing.T) {
	c := newCluster(t)
	cfg := c.write("check.toml", c.coreConfig("rebalance = \"auto\"\nrebalance_interval = \"200ms\"\n"))
	if out, err := exec.Command(vcoredBin, "check", cfg).CombinedOutput(); err != nil {
		t.Errorf("vcored check with rebalance = \"auto\": %v\n%s", err, out)
	}
	core, refusal := c.startCoreAuto(t, "rebalance_interval = \"200ms\"\n")
	if core == nil {
		t.Logf("this core cannot move subsystems and refused auto as it should:\n%s", refusal)
		return
	}
	c.startVCore(0, c.vcoreConfig(0, sleeper+burner("burner")))
	var last api.Rebalance
	eventually(t, 60*time.Second, "samples in auto mode", func() (bool, string) {
		last = get[api.Rebalance](t, c.coreSocket(), "/v1/rebalance")
		_, ok := rebalanceSubsystem(last, "node0/burner")
		return ok && last.Samples >= 3, fmt.Sprintf("%+v", last)
	})
	if last.Mode != "auto" || last.InFlight != nil || len(last.Moves) != 0 || last.MovesDone+last.MovesFailed != 0 ||
		!strings.Contains(last.Decision, "nowhere to move") {
		t.Errorf("one partition in auto mode: %+v, want no move and a decision saying there is nowhere to move", last)
	}
	m := getText(t, c.coreSocket(), "/metrics")
	for _, want := range []string{`vcored_rebalance_moves_total{mode="live",result="done"} 0`, "vcored_rebalance_move_in_flight 0"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	out, err := exec.Command(vcoredBin, "status", "--socket", c.coreSocket()).CombinedOutput()
	if err != nil || !regexp.MustCompile(`REBALANCE auto every 200ms: .* moves done 0, failed 0`).Match(out) || !strings.Contains(string(out), "nowhere to move") {
		t.Errorf("vcored status: %v\n%s", err, out)
	}
}

// keyLine is the line of body that starts with prefix (0: none).
func keyLine(body, prefix string) int {
	for i, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			return i + 1
		}
	}
	return 0
}
