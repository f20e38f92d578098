package bench

// The move mode (issue 12 §3/§5): one subsystem with a persistent
// dataspace, moved live from the first node to the second, then back with
// a restart move — downtime, total time and bytes side by side. The
// subsystem is `vcored move-worker` (it fills every page, or after a
// restart reads and verifies every page, then holds its memory). A
// machine with one node that can host a vcore cannot move anything live:
// RunMove says so (Skipped) and times only the restart move's mechanics
// on that node — the source's final checkpoint while frozen and stop, the
// start and the lazy restore of every page, through the vcore's own move
// routes (MoveMeasure.SameNode).
//
// Wiring (the registry row and Run's dispatch live with the checkpoint
// modes): a row {Name: ModeMove, Family: ModeMove, OptIn: true, Doc:
// MoveDoc}; in Run, when the plan holds ModeMove, call RunMove and report
// MoveBench.Live/Restart as the report's checkpoint.move.live/restart
// (downtime_ms, total_ms, bytes).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// ModeMove names the move mode.
const ModeMove = "move"

// MoveDoc is the mode's line for --help.
const MoveDoc = "a subsystem with a persistent dataspace moved live to another node, then back with a restart move:" +
	" downtime, total time, bytes (needs two nodes; only with --modes)"

// Move mode sizes: pages of the moved dataspace.
const (
	MovePages      = 262144 // 1 GiB of 4 KiB pages
	QuickMovePages = 16384  // 64 MiB
)

// MoveConfig configures RunMove.
type MoveConfig struct {
	Exe     string
	Machine *topology.Machine
	// Pages of the moved dataspace (0: MovePages, or QuickMovePages).
	Pages int
	Quick bool
	// Dir is a scratch directory (removed by the caller);
	// CgroupParent is the daemons' cgroup parent (removed by RunMove).
	Dir          string
	CgroupParent string
	Log          *slog.Logger
}

// MoveMeasure is one move as core answered it.
type MoveMeasure struct {
	FromNode        int      `json:"from_node"`
	ToNode          int      `json:"to_node"`
	DowntimeMS      float64  `json:"downtime_ms"`
	TotalMS         float64  `json:"total_ms"`
	Bytes           uint64   `json:"bytes"`
	GBps            float64  `json:"gb_per_s"`
	Pages           uint64   `json:"pages"`
	PagesLeftBehind uint64   `json:"pages_left_behind"`
	Warnings        []string `json:"warnings,omitempty"`
	// SameNode: the restart mechanics timed on one node (the machine
	// has no second one); no page changed node.
	SameNode bool `json:"same_node,omitempty"`
}

// MoveBench is the move mode's result.
type MoveBench struct {
	Pages   int          `json:"pages"`
	Live    *MoveMeasure `json:"live,omitempty"`
	Restart *MoveMeasure `json:"restart,omitempty"`
	// Verified: the restarted worker read every page back intact.
	Verified bool `json:"verified"`
	// Skipped says what was not measured and why (one node: no live
	// move).
	Skipped string `json:"skipped,omitempty"`
}

// moveNodes picks the two partitions a move goes between: the first two
// nodes that have CPUs besides core's.
func moveNodes(m *topology.Machine) (Layout, []Partition, error) {
	layout, err := PlanLayout(m)
	if err != nil {
		return layout, nil, err
	}
	var out []Partition
	for _, p := range layout.Partitions {
		if !p.CPUs.IsEmpty() && !slices.ContainsFunc(out, func(q Partition) bool { return q.Node == p.Node }) {
			out = append(out, p)
		}
	}
	return layout, out, nil
}

// RunMove runs the move mode.
func RunMove(ctx context.Context, c MoveConfig) (*MoveBench, error) {
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Pages < 1 {
		c.Pages = MovePages
		if c.Quick {
			c.Pages = QuickMovePages
		}
	}
	res := &MoveBench{Pages: c.Pages}
	layout, parts, err := moveNodes(c.Machine)
	if err != nil {
		return nil, err
	}
	if len(parts) == 0 {
		res.Skipped = "no node can host a vcore: nothing measured"
		return res, nil
	}
	sameNode := len(parts) < 2
	if sameNode {
		res.Skipped = fmt.Sprintf("live: this machine has %d NUMA node(s) (%s) that can host a vcore, a move needs two "+
			"(run it in the 2-node guest: make vmtest NODES=2); restart: its mechanics timed on node %d", len(parts), c.Machine.NodeIDs(), parts[0].Node)
		parts = append(parts, parts[0])
	}
	defer func() {
		for _, l := range removeCgroupTrees(c.CgroupParent) {
			c.Log.Warn("cgroup left behind", "path", l)
		}
	}()
	a, b := parts[0], parts[1]
	workDir := filepath.Join(c.Dir, "worker")
	if err := os.MkdirAll(workDir, 0o755); err != nil {
		return nil, err
	}
	coreSock := filepath.Join(c.Dir, "core.sock")
	bytes := hw.Bytes(c.Pages) * hw.Bytes(os.Getpagesize())
	coreTOML := fmt.Sprintf("socket = %q\nstate_dir = %q\ncgroup_parent = %q\nreserved_cpus = %q\nreserved_memory = \"64MiB\"\nlog_level = \"warn\"\n",
		coreSock, filepath.Join(c.Dir, "state", "core"), c.CgroupParent, hw.NewSet(layout.CoreCPU).String())
	vcoreTOML := func(p Partition, withWorker bool) string {
		var sb strings.Builder
		fmt.Fprintf(&sb, "node = %d\ncore_socket = %q\nsocket = %q\nstate_dir = %q\ncpus = %q\nmemory = %q\nstop_grace = \"2s\"\nlog_level = \"warn\"\n",
			p.Node, coreSock, filepath.Join(c.Dir, fmt.Sprintf("vcore%d.sock", p.Node)), filepath.Join(c.Dir, "state", fmt.Sprintf("vcore%d", p.Node)),
			p.CPUs.String(), (bytes + 192*hw.MiB).String())
		if withWorker {
			fmt.Fprintf(&sb, "\n[[subsystem]]\nname = \"mover\"\ncommand = [%q, \"move-worker\", \"--dir\", %q, \"--pages\", \"%d\"]\nmemory = %q\nrestart = \"never\"\n",
				c.Exe, workDir, c.Pages, (bytes + 128*hw.MiB).String())
			fmt.Fprintf(&sb, "\n[[subsystem.dataspace]]\nname = \"mem\"\nsize = %q\npersistent = true\n", bytes.String())
		}
		return sb.String()
	}
	write := func(name, body string) (string, error) {
		p := filepath.Join(c.Dir, name)
		return p, os.WriteFile(p, []byte(body), 0o644)
	}
	var daemons []*daemon
	defer func() {
		for _, d := range slices.Backward(daemons) {
			if err := d.stop(); err != nil {
				c.Log.Warn("stop daemon", "daemon", d.name, "err", err)
			}
		}
	}()
	cfg, err := write("core.toml", coreTOML)
	if err != nil {
		return nil, err
	}
	core, err := startDaemon("core", coreSock, filepath.Join(c.Dir, "core.log"), c.Exe, nil, "core", "--config", cfg)
	if err != nil {
		return nil, err
	}
	daemons = append(daemons, core)
	var parts0 []api.Partition
	if err := core.waitReady(ctx, "/v1/partitions", &parts0); err != nil {
		return nil, err
	}
	vcores := []Partition{a, b}
	if sameNode {
		vcores = vcores[:1]
	}
	for i, p := range vcores {
		cfg, err := write(fmt.Sprintf("vcore%d.toml", p.Node), vcoreTOML(p, i == 0))
		if err != nil {
			return nil, err
		}
		d, err := startDaemon(fmt.Sprintf("vcore%d", p.Node), filepath.Join(c.Dir, fmt.Sprintf("vcore%d.sock", p.Node)),
			filepath.Join(c.Dir, fmt.Sprintf("vcore%d.log", p.Node)), c.Exe, nil, "vcore", "--config", cfg)
		if err != nil {
			return nil, err
		}
		daemons = append(daemons, d)
		var subs []api.Subsystem
		if err := d.waitReady(ctx, "/v1/subsystems", &subs); err != nil {
			return nil, err
		}
	}
	first, err := waitMoveReady(ctx, workDir, 0, 10*time.Minute)
	if err != nil {
		return nil, err
	}
	if first.Error != "" {
		return nil, fmt.Errorf("bench: move worker: %s", first.Error)
	}
	move := func(req api.MoveRequest) (*MoveMeasure, error) {
		var r api.MoveResult
		mctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
		defer cancel()
		if err := api.NewUnboundedClient(coreSock).Do(mctx, http.MethodPost, "/v1/subsystems/mover/move", req, &r); err != nil {
			return nil, err
		}
		return &MoveMeasure{FromNode: r.FromNode, ToNode: r.ToNode, DowntimeMS: r.DowntimeMS, TotalMS: r.TotalMS, Bytes: r.Bytes,
			GBps: r.GBps, Pages: r.Pages, PagesLeftBehind: r.PagesLeftBehind, Warnings: r.Warnings}, nil
	}
	if sameNode {
		res.Restart, err = restartOnNode(ctx, filepath.Join(c.Dir, fmt.Sprintf("vcore%d.sock", a.Node)), int(a.Node), workDir, first.Pid, c.Pages)
		if err != nil {
			return res, err
		}
		res.Verified = true
		return res, nil
	}
	if res.Live, err = move(api.MoveRequest{ToNode: int(b.Node), Mode: api.MoveLive}); err != nil {
		return res, fmt.Errorf("bench: live move: %w", err)
	}
	if res.Restart, err = move(api.MoveRequest{Back: true, Mode: api.MoveRestart}); err != nil {
		return res, fmt.Errorf("bench: restart move: %w", err)
	}
	again, err := waitMoveReady(ctx, workDir, first.Pid, 10*time.Minute)
	if err != nil {
		return res, err
	}
	if again.Error != "" || !again.Restored {
		return res, fmt.Errorf("bench: the restarted move worker: restored %v: %s", again.Restored, again.Error)
	}
	res.Verified = true
	return res, nil
}

// restartOnNode times a restart move's halves on one vcore (what core does
// between two): move-out (final checkpoint while frozen, stop), move-in
// (start), then until the new worker has read back and verified every
// page (restored lazily).
func restartOnNode(ctx context.Context, sock string, node int, workDir string, oldPid, pages int) (*MoveMeasure, error) {
	cl := api.NewUnboundedClient(sock)
	start := time.Now()
	var out api.MoveOut
	if err := cl.Do(ctx, http.MethodPost, "/v1/subsystems/mover/move-out", api.MoveOutRequest{Phase: api.MoveRestart, ToNode: node}, &out); err != nil {
		return nil, fmt.Errorf("bench: move-out: %w", err)
	}
	var in api.MoveIn
	req := api.MoveInRequest{Name: "mover", Mode: api.MoveRestart, FromNode: node, Spec: out.Spec, Images: out.Images}
	if err := cl.Do(ctx, http.MethodPost, "/v1/move-in", req, &in); err != nil {
		return nil, fmt.Errorf("bench: move-in: %w", err)
	}
	r, err := waitMoveReady(ctx, workDir, oldPid, 10*time.Minute)
	if err != nil {
		return nil, err
	}
	total := time.Since(start)
	if r.Error != "" || !r.Restored {
		return nil, fmt.Errorf("bench: the restarted move worker: restored %v: %s", r.Restored, r.Error)
	}
	m := &MoveMeasure{FromNode: node, ToNode: node, SameNode: true, TotalMS: float64(total.Microseconds()) / 1000,
		Bytes: uint64(out.PreCopyBytes+out.CheckpointBytes) + uint64(pages)*uint64(os.Getpagesize()), Pages: uint64(pages)}
	if in.StartedAtUnixNS > 0 && out.FrozenAtUnixNS > 0 {
		m.DowntimeMS = float64(in.StartedAtUnixNS-out.FrozenAtUnixNS) / 1e6
	}
	if r.TouchNS > 0 {
		m.GBps = float64(pages*os.Getpagesize()) / (float64(r.TouchNS) / 1e9) / 1e9
	}
	return m, nil
}

// moveReady mirrors cmd/vcored's moveWorkerReady.
type moveReady struct {
	Pid      int    `json:"pid"`
	Pages    int    `json:"pages"`
	Restored bool   `json:"restored"`
	TouchNS  int64  `json:"touch_ns"`
	Error    string `json:"error,omitempty"`
}

// waitMoveReady waits for a ready file of a worker other than notPid.
func waitMoveReady(ctx context.Context, dir string, notPid int, timeout time.Duration) (moveReady, error) {
	deadline := time.Now().Add(timeout)
	for {
		ents, _ := filepath.Glob(filepath.Join(dir, "ready-*.json"))
		for _, e := range ents {
			var r moveReady
			b, err := os.ReadFile(e)
			if err == nil && json.Unmarshal(b, &r) == nil && r.Pid != notPid {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			return moveReady{}, errors.New("bench: the move worker did not get ready")
		}
		select {
		case <-ctx.Done():
			return moveReady{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// FormatMove is the mode's text for the report.
func FormatMove(m *MoveBench) string {
	if m == nil {
		return ""
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "move of a %s persistent dataspace (verified %v):\n", hw.Bytes(m.Pages)*hw.Bytes(os.Getpagesize()), m.Verified)
	if m.Skipped != "" {
		fmt.Fprintf(&sb, "  not measured: %s\n", m.Skipped)
	}
	for _, k := range []struct {
		name string
		f    *MoveMeasure
	}{{"live", m.Live}, {"restart", m.Restart}} {
		if k.f == nil {
			continue
		}
		same := ""
		if k.f.SameNode {
			same = " (same node: the mechanics only)"
		}
		fmt.Fprintf(&sb, "  %-7s node %d -> %d%s: downtime %.1f ms, total %.1f ms, %.1f MiB (%.2f GB/s), %d pages left behind\n",
			k.name, k.f.FromNode, k.f.ToNode, same, k.f.DowntimeMS, k.f.TotalMS, float64(k.f.Bytes)/(1<<20), k.f.GBps, k.f.PagesLeftBehind)
	}
	return sb.String()
}
