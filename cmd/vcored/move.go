package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/bench"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/topology"
	"github.com/vcored/vcored/vcore/client"
)

// runMove implements `vcored move SUBSYSTEM --to-node N [--mode live|restart]`
// and `vcored move SUBSYSTEM --back`: core moves the subsystem
// (POST /v1/subsystems/NAME/move; root only) and the result is printed.
// A request core refuses (unknown subsystem, node without a vcore, the
// node it is on, a restart move without a persistent dataspace) exits 2
// with core's reason; nothing was changed.
func runMove(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "move", "[--socket PATH] (--to-node N [--mode live|restart] | --back) [--json] SUBSYSTEM")
	socket := fs.String("socket", "/run/vcored/core.sock", "core's socket")
	toNode := fs.Int("to-node", -1, "the node to move the subsystem to")
	mode := fs.String("mode", "live", "live (keep running, migrate pages) or restart (checkpoint, stop, start there, restore lazily)")
	back := fs.Bool("back", false, "move the subsystem back to the node its vcore file puts it on")
	asJSON := fs.Bool("json", false, "print JSON")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	// Flags may come before and after the subsystem's name.
	var names []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		names = append(names, fs.Arg(0))
		args = fs.Args()[1:]
	}
	var name string
	var rest []string
	if len(names) > 0 {
		name, rest = names[0], names[1:]
	}
	switch {
	case name == "" || len(rest) > 0:
		return usagef("want one SUBSYSTEM, got %q", append([]string{name}, rest...))
	case *back && *toNode >= 0:
		return usagef("--back and --to-node exclude each other")
	case !*back && *toNode < 0:
		return usagef("say where: --to-node N, or --back")
	case *mode != api.MoveLive && *mode != api.MoveRestart:
		return usagef("--mode %q: want live or restart", *mode)
	}
	req := api.MoveRequest{Subsystem: name, ToNode: *toNode, Mode: *mode, Back: *back}
	if *back {
		req.ToNode = 0
		req.Mode = ""
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "mode" {
				req.Mode = *mode
			}
		})
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var res api.MoveResult
	cl := api.NewUnboundedClient(*socket)
	err := cl.Do(ctx, http.MethodPost, "/v1/subsystems/"+url.PathEscape(name)+"/move", req, &res)
	if err != nil {
		var se *api.StatusError
		if errors.As(err, &se) {
			if se.Code == http.StatusBadRequest || se.Code == http.StatusForbidden || se.Code == http.StatusNotFound {
				return usagef("%s", se.Msg)
			}
			return errors.New(se.Msg)
		}
		return dialError(*socket, e.geteuid(), err)
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	verb := "moved"
	if res.Back {
		verb = "moved back"
	}
	fmt.Fprintf(e.stdout, "subsystem %s %s from node %d to node %d (%s): downtime %.1f ms, total %.1f ms, %d bytes",
		res.Subsystem, verb, res.FromNode, res.ToNode, res.Mode, res.DowntimeMS, res.TotalMS, res.Bytes)
	if res.GBps > 0 {
		fmt.Fprintf(e.stdout, " (%.2f GB/s)", res.GBps)
	}
	fmt.Fprintf(e.stdout, "; %d pages on node %d, %d left behind\n", res.Pages, res.ToNode, res.PagesLeftBehind)
	for _, w := range res.Warnings {
		fmt.Fprintf(e.stdout, "warning: %s\n", w)
	}
	return nil
}

// movedNote says where a moved subsystem went or came from.
func movedNote(s api.Subsystem) string {
	switch {
	case s.MovedTo != nil && *s.MovedTo >= 0:
		return fmt.Sprintf(" (to node%d)", *s.MovedTo)
	case s.MovedTo != nil:
		return " (to another node)"
	case s.MovedFrom != nil:
		return fmt.Sprintf(" (moved here from node%d, %s)", *s.MovedFrom, s.MoveMode)
	}
	return ""
}

// printMoves lists the subsystems running away from their configured node.
func printMoves(w io.Writer, moves []api.Move) {
	if len(moves) == 0 {
		return
	}
	fmt.Fprintln(w, "MOVED SUBSYSTEM\tCONFIGURED ON\tRUNS ON\tMODE\tSINCE\tCGROUP")
	for _, m := range moves {
		fmt.Fprintf(w, "%s\tnode%d\tnode%d\t%s\t%s\t%s\n", m.Subsystem, m.HomeNode, m.Node, m.Mode, m.At.Format(time.RFC3339), m.Cgroup)
	}
	fmt.Fprintln(w)
}

// moveWorkerReady is what `vcored move-worker` writes once its memory is
// in place: DIR/ready-PID.json.
type moveWorkerReady struct {
	Pid   int     `json:"pid"`
	Addr  uintptr `json:"addr"`
	Pages int     `json:"pages"`
	// Restored: a restart found the memory filled before; every page was
	// read (restored on first touch) and verified.
	Restored bool   `json:"restored"`
	TouchNS  int64  `json:"touch_ns"` // the fill or the verifying read
	Error    string `json:"error,omitempty"`
}

// runMoveWorker is the subsystem the move benchmark moves (hidden): it
// attaches persistent dataspace --dataspace of --pages pages; a first run
// fills every page with pattern seed 1 and creates DIR/filled, a later one
// (after a restart move) reads and verifies every page. Either way it
// writes DIR/ready-PID.json, then holds its memory until killed.
func runMoveWorker(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "move-worker", "--dir DIR [--dataspace NAME] [--pages N]")
	dir := fs.String("dir", "", "directory for the ready files")
	name := fs.String("dataspace", "mem", "the persistent dataspace to attach")
	pages := fs.Int("pages", 1024, "pages of the dataspace")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *dir == "" || *pages < 1 {
		return usagef("want --dir and --pages ≥ 1")
	}
	ps := os.Getpagesize()
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	m, err := client.Attach(actx, *name, *pages*ps)
	cancel()
	if err != nil {
		return err
	}
	mem := m.Bytes()
	r := moveWorkerReady{Pid: os.Getpid(), Addr: m.Addr(), Pages: *pages}
	filled := filepath.Join(*dir, "filled")
	start := time.Now()
	if _, err := os.Stat(filled); err == nil {
		r.Restored = true
		for p := range *pages {
			if err := content.VerifyPattern(mem[p*ps:(p+1)*ps], 1, uint64(p*ps)); err != nil {
				r.Error = fmt.Sprintf("page %d: %v", p, err)
				break
			}
		}
	} else {
		for p := range *pages {
			content.Pattern(1).Fill(mem[p*ps:(p+1)*ps], uint64(p*ps))
		}
		if err := os.WriteFile(filled, nil, 0o644); err != nil {
			return err
		}
	}
	r.TouchNS = time.Since(start).Nanoseconds()
	b, _ := json.Marshal(r)
	out := filepath.Join(*dir, fmt.Sprintf("ready-%d.json", r.Pid))
	if err := os.WriteFile(out+".tmp", b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		return err
	}
	<-ctx.Done()
	runtime.KeepAlive(mem)
	return nil
}

// takeMoveMode removes bench.ModeMove from modes; move reports whether it
// was there, only whether nothing else is left.
func takeMoveMode(modes []string) (rest []string, move, only bool) {
	for _, m := range modes {
		if m == bench.ModeMove {
			move = true
		} else {
			rest = append(rest, m)
		}
	}
	return rest, move, move && len(rest) == 0
}

// runMoveMode runs the bench's move mode (`vcored bench --modes move`) and
// prints its figures; with jsonPath (and no other mode) it writes them as
// {"checkpoint": {"move": {"live": …, "restart": …}}}.
func runMoveMode(ctx context.Context, e *env, exe string, m *topology.Machine, quick bool, jsonPath string) error {
	res, err := runMoveBench(ctx, e, exe, m, quick)
	if err != nil || jsonPath == "" {
		return err
	}
	doc := map[string]any{"checkpoint": map[string]any{"move": res}}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(jsonPath, append(b, '\n'), 0o644)
}

// runMoveBench runs the move mode and prints its table.
func runMoveBench(ctx context.Context, e *env, exe string, m *topology.Machine, quick bool) (*bench.MoveBench, error) {
	dir, err := os.MkdirTemp("", "vcored-bench-move-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	res, err := bench.RunMove(ctx, bench.MoveConfig{Exe: exe, Machine: m, Quick: quick, Dir: dir,
		CgroupParent: fmt.Sprintf("vcored-bench-move-%d", os.Getpid()), Log: e.log})
	if res != nil {
		fmt.Fprint(e.stdout, bench.FormatMove(res))
	}
	return res, err
}

// moveFigures is a measured move as the report's checkpoint.move.live /
// .restart (nil when not measured).
func moveFigures(m *bench.MoveMeasure) *bench.MoveFigures {
	if m == nil {
		return nil
	}
	return &bench.MoveFigures{DowntimeMS: m.DowntimeMS, TotalMS: m.TotalMS, Bytes: int64(m.Bytes)}
}
