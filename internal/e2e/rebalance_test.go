package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
)

const rebalanceAdvise = "rebalance = \"advise\"\nrebalance_interval = \"200ms\"\n"

// burner is a subsystem that keeps one CPU busy when nothing else wants it:
// at nice 19 it yields to its vcore (which shares the partition's CPUs) and
// to everything else on a busy test machine.
func burner(name string) string {
	return fmt.Sprintf(`
[[subsystem]]
name = %q
command = ["sh", "-c", "renice -n 19 -p $$ >/dev/null; while :; do :; done"]
cpus = 1
memory = "32MiB"
`, name)
}

func rebalanceSubsystem(st api.Rebalance, name string) (api.RebalanceSubsystem, bool) {
	for _, p := range st.Partitions {
		for _, s := range p.Subsystems {
			if s.Name == name {
				return s, true
			}
		}
	}
	return api.RebalanceSubsystem{}, false
}

// TestRebalanceAdviseSamplesLoad: core with rebalance = "advise" samples
// the real CPU use of the subsystems of a live partition (a busy loop shows
// up, a sleeper does not), learns from the vcore which subsystem is
// movable, and with one partition advises nothing: there is nowhere to
// move. The metrics carry the sampled load.
func TestRebalanceAdviseSamplesLoad(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(rebalanceAdvise))
	c.startVCore(0, c.vcoreConfig(0, sleeper+burner("burner")+"movable = true\n"))
	sleeperPid(t, c.vcoreSocket(0))

	var last api.Rebalance
	eventually(t, 60*time.Second, "the burner's CPU use sampled", func() (bool, string) {
		last = get[api.Rebalance](t, c.coreSocket(), "/v1/rebalance")
		b, ok1 := rebalanceSubsystem(last, "node0/burner")
		s, ok2 := rebalanceSubsystem(last, "node0/sleeper")
		// At nice 19 on a shared machine the burner may get only a few
		// per cent of its CPU; the sleeper gets none.
		return ok1 && ok2 && b.Usage >= 0.01 && s.Usage < b.Usage/2 && b.Error == "", fmt.Sprintf("%+v", last)
	})
	t.Logf("sample %d: imbalance %.2f, waiting %q, partitions %+v", last.Samples, last.Imbalance, last.Waiting, last.Partitions)
	if last.Mode != "advise" || len(last.Advice) != 0 || !strings.Contains(last.Waiting, "nowhere to move") {
		t.Errorf("one live partition: mode %q advice %+v waiting %q, want advise, none, nowhere to move", last.Mode, last.Advice, last.Waiting)
	}
	if p := last.Partitions[0]; p.Node != 0 || p.MemFreeBytes == 0 || p.Load <= 0 {
		t.Errorf("partition %+v: want node 0 with free memory and load", p)
	}
	b, _ := rebalanceSubsystem(last, "node0/burner")
	if b.CPUs != 1 || b.MemoryBytes != 32<<20 || b.Cgroup != c.cgroup+"/node0/burner" || b.Source == "" || !b.Movable {
		t.Errorf("burner %+v: want 1 CPU, 32MiB, cgroup %s/node0/burner, a source, movable (from the vcore)", b, c.cgroup)
	}
	if s, _ := rebalanceSubsystem(last, "node0/sleeper"); s.Movable {
		t.Errorf("sleeper %+v: movable without the key", s)
	}
	metrics := getText(t, c.coreSocket(), "/metrics")
	for _, want := range []string{"vcored_rebalance_imbalance ", `vcored_rebalance_partition_load{node="0"} `} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(metrics, "vcored_rebalance_advice{") {
		t.Errorf("an advice metric with nowhere to move")
	}
}

// TestRebalanceOffAndBadMode: without the key /v1/rebalance says off; a
// mode that does not exist is refused by vcored check and by core (exit 2,
// file:line, no socket). (rebalance = "auto": rebalance_auto_test.go.)
func TestRebalanceOffAndBadMode(t *testing.T) {
	c := newCluster(t)
	body := c.coreConfig("rebalance = \"always\"\n")
	bad := c.write("core.toml", body)
	want := fmt.Sprintf(`%s:%d: rebalance: "always" is not one of "off", "advise", "auto"`, bad, keyLine(body, "rebalance = "))
	out, err := exec.Command(vcoredBin, "check", bad).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte(want)) {
		t.Errorf("vcored check with a bad mode: err %v\n%s", err, out)
	}
	out, err = exec.Command(vcoredBin, "core", "--config", bad).CombinedOutput()
	var ee *exec.ExitError
	if !errorsAs(err, &ee) || ee.ExitCode() != 2 || !bytes.Contains(out, []byte(want)) {
		t.Errorf("core with a bad mode: err %v\n%s", err, out)
	}
	if _, err := os.Stat(c.coreSocket()); err == nil {
		t.Error("core with a bad rebalance mode created its socket")
	}
	c.startCore(c.coreConfig(""))
	if st := get[api.Rebalance](t, c.coreSocket(), "/v1/rebalance"); st.Mode != "off" || st.Samples != 0 {
		t.Errorf("default: %+v, want mode off and no samples", st)
	}
}

// TestNumaRebalanceAdvice: on a machine with two nodes whose partitions
// have CPUs, more busy loops than CPUs on the first and a sleeper on the
// second make core advise moving a busy loop from the first node to the
// second. Needs several NUMA nodes (make vmtest); the move itself is left
// to the moves work.
func TestNumaRebalanceAdvice(t *testing.T) {
	c := newCluster(t)
	needNodes(t, c, 2)
	var nodes []hw.Node
	for _, n := range c.machine.Nodes {
		if !c.partitionCPUs(n.ID).IsEmpty() {
			nodes = append(nodes, n.ID)
		}
	}
	if len(nodes) < 2 {
		t.Skipf("needs two nodes with CPUs left after core's; have %v", nodes)
	}
	hot, cool := nodes[0], nodes[1]
	var burners string
	for i := range c.partitionCPUs(hot).Len() + 1 {
		burners += burner(fmt.Sprintf("burner%d", i))
	}
	c.startCore(c.coreConfig(rebalanceAdvise))
	c.startVCore(0, c.vcoreConfigFor(0, hot, burners))
	c.startVCore(1, c.vcoreConfigFor(1, cool, sleeper))
	// The advice is re-derived every sample, and with two equal burners it
	// may name either, or be withdrawn for a sample: read the status and
	// the metrics until both show the same advice.
	var last api.Rebalance
	var metrics string
	eventually(t, 90*time.Second, "advice to move a burner, in status and metrics", func() (bool, string) {
		last = get[api.Rebalance](t, c.coreSocket(), "/v1/rebalance")
		if len(last.Advice) != 1 {
			return false, fmt.Sprintf("%+v", last)
		}
		a := last.Advice[0]
		metrics = getText(t, c.coreSocket(), "/metrics")
		want := fmt.Sprintf(`vcored_rebalance_advice{from="%d",mode=%q,subsystem=%q,to="%d"} 1`, a.From, a.Mode, a.Subsystem, a.To)
		return strings.Contains(metrics, want), fmt.Sprintf("status %+v; metrics lack %s", last, want)
	})
	a := last.Advice[0]
	t.Logf("advice: %+v", a)
	if a.From != int(hot) || a.To != int(cool) || !strings.HasPrefix(a.Subsystem, fmt.Sprintf("node%d/burner", hot)) || a.Mode != "live" ||
		!(a.ImbalanceAfter < a.ImbalanceBefore) {
		t.Errorf("advice %+v, want a burner of node %d to node %d, live, imbalance cut", a, hot, cool)
	}
	if !strings.Contains(c.core.log.String(), "rebalance advice") {
		t.Errorf("advice not logged:\n%s", c.core.log)
	}
}

// getText GETs path from a daemon's socket as text.
func getText(t *testing.T, socket, path string) string {
	t.Helper()
	cl := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}, Timeout: 5 * time.Second}
	resp, err := cl.Get("http://vcored" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
