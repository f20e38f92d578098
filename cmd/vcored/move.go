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
	"time"

	"github.com/vcored/vcored/internal/api"
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
