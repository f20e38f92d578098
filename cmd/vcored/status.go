package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
)

// statusReport is what `vcored status --json` prints.
type statusReport struct {
	Info       api.Info                   `json:"info"`
	Partitions []api.Partition            `json:"partitions,omitempty"`
	VCores     []api.VCore                `json:"vcores,omitempty"`
	Subsystems map[string][]api.Subsystem `json:"subsystems"`           // keyed by vcore socket
	Containers map[string][]api.External  `json:"containers,omitempty"` // placed by `vcored nri`, keyed by vcore socket
	Rebalance  *api.Rebalance             `json:"rebalance,omitempty"`  // core's, unless rebalance = "off"
	Moves      []api.Move                 `json:"moves,omitempty"`      // subsystems core moved away from their node
	Errors     []string                   `json:"errors,omitempty"`
}

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "status", "[--socket PATH] [--json]")
	socket := fs.String("socket", "/run/vcored/core.sock", "socket of a core (shows everything) or of one vcore")
	asJSON := fs.Bool("json", false, "print JSON instead of tables")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments: %v", fs.Args())
	}
	rep, err := collectStatus(ctx, *socket, e.geteuid())
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printStatus(e, rep)
	return nil
}

// collectStatus asks the daemon at socket who it is; for a core it also
// asks every vcore it knows for its subsystems.
func collectStatus(ctx context.Context, socket string, euid int) (*statusReport, error) {
	c := api.NewClient(socket)
	rep := &statusReport{Subsystems: map[string][]api.Subsystem{}}
	if err := c.Get(ctx, "/v1/info", &rep.Info); err != nil {
		return nil, dialError(socket, euid, err)
	}
	var vcoreSockets []string
	switch rep.Info.Role {
	case "core":
		if err := c.Get(ctx, "/v1/partitions", &rep.Partitions); err != nil {
			return nil, err
		}
		if err := c.Get(ctx, "/v1/vcores", &rep.VCores); err != nil {
			return nil, err
		}
		collectRebalance(ctx, c, rep)
		if err := c.Get(ctx, "/v1/moves", &rep.Moves); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		}
		for _, v := range rep.VCores {
			if v.Connected {
				vcoreSockets = append(vcoreSockets, v.Socket)
			}
		}
	case "vcore":
		vcoreSockets = []string{socket}
	default:
		return nil, fmt.Errorf("%s: unknown daemon role %q", socket, rep.Info.Role)
	}
	for _, s := range vcoreSockets {
		var subs []api.Subsystem
		if err := api.NewClient(s).Get(ctx, "/v1/subsystems", &subs); err != nil {
			rep.Errors = append(rep.Errors, err.Error())
			continue
		}
		rep.Subsystems[s] = subs
		collectContainers(ctx, rep, s)
	}
	return rep, nil
}

// dialError explains why nobody answered on socket: nothing listens there
// (no socket file, or one left behind by a daemon that is gone), the socket
// file's permissions, or the daemon refusing this user.
func dialError(socket string, euid int, err error) error {
	const start = "start core with 'vcored core --config /etc/vcored/core.toml' (or 'systemctl start vcored-core'), " +
		"or give the socket of a running daemon with --socket"
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("no daemon listening at %s (no such socket); is it running? %s", socket, start)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("no daemon listening at %s (the socket file is left from a daemon that has exited); is it running? %s", socket, start)
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%s: permission denied: vcored accepts root and members of core's socket_group only (you are uid %d): %w", socket, euid, err)
	case euid != 0:
		return fmt.Errorf("no answer on %s (vcored accepts root and members of core's socket_group only; you are uid %d): %w", socket, euid, err)
	}
	return fmt.Errorf("no daemon answers on %s: %w", socket, err)
}

func printStatus(e *env, rep *statusReport) {
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "%s pid %d, pager %s\n\n", rep.Info.Role, rep.Info.Pid, rep.Info.PagerMode)
	if d := rep.Info.Degraded; d != nil {
		fmt.Fprintf(w, "DEGRADED since %s: the ledger cannot be written (claims are refused until it can): %s\n",
			d.Since.Format(time.RFC3339), d.Reason)
		if len(d.Pending) > 0 {
			fmt.Fprintf(w, "  not yet written (retried): %s\n", strings.Join(d.Pending, ", "))
		}
		fmt.Fprintln(w)
	}
	if len(rep.Partitions) > 0 {
		fmt.Fprintln(w, "PARTITION\tCPUS\tMEMS\tMEMORY\tSTATE\tHOLDER\tCGROUP")
		for _, p := range rep.Partitions {
			holder := "-"
			if p.Holder != nil {
				holder = fmt.Sprintf("%s (pid %d)", p.Holder.ID, p.Holder.Pid)
			}
			state := p.State
			if p.GraceLeft != "" {
				state += " (reclaim in " + p.GraceLeft + ")"
			}
			if p.Pending != "" {
				state += " (" + p.Pending + " not yet written to the ledger)"
			}
			if r := runningSummary(p.Running); r != "" {
				state += " — " + r
			}
			fmt.Fprintf(w, "node%d\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Node, dash(p.CPUs), dash(p.Mems),
				hw.Bytes(p.MemoryBytes).Human(), state, holder, dash(p.Cgroup))
		}
		fmt.Fprintln(w)
	}
	if len(rep.VCores) > 0 {
		fmt.Fprintln(w, "VCORE\tNODE\tPID\tCPUS\tCONNECTED\tUFFDS\tFORWARDED\tSOCKET")
		for _, v := range rep.VCores {
			fmt.Fprintf(w, "%s\t%d\t%d\t%s\t%v\t%d\t%d\t%s\n", v.ID, v.Node, v.Pid, v.CPUs, v.Connected, v.Uffds, v.Forwarded, v.Socket)
		}
		fmt.Fprintln(w)
	}
	for sock, subs := range rep.Subsystems {
		fmt.Fprintf(w, "SUBSYSTEMS of %s\n", sock)
		fmt.Fprintln(w, "NAME\tSTATE\tPIDS\tRESTARTS\tCPUS\tMEMS\tMEMORY (USED/LIMIT)\tQUOTA (USED/LIMIT)")
		for _, s := range subs {
			pids := make([]string, len(s.Pids))
			for i, p := range s.Pids {
				pids[i] = fmt.Sprint(p)
			}
			state := s.State
			if s.Adopted {
				state += " (adopted)"
			}
			state += movedNote(s)
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s/%s\t%s/%s\n", s.Name, state, dash(strings.Join(pids, ",")), s.Restarts,
				s.CPUs, s.Mems, hw.Bytes(s.MemoryUsageBytes).Human(), limit(s.MemoryLimitBytes),
				hw.Bytes(s.QuotaUsedBytes).Human(), limit(s.QuotaLimitBytes))
		}
		fmt.Fprintln(w)
	}
	printMoves(w, rep.Moves)
	printContainers(w, rep)
	printRebalance(w, rep.Rebalance)
	for _, err := range rep.Errors {
		fmt.Fprintf(w, "error: %s\n", err)
	}
	w.Flush()
}

// runningSummary says what still runs in a partition whose vcore is gone:
// "2 subsystems still running (a: pids 10,11; b: pid 12)".
func runningSummary(rs []api.Running) string {
	if len(rs) == 0 {
		return ""
	}
	var parts []string
	n := 0
	for _, r := range rs {
		pids := make([]string, len(r.Pids))
		for i, p := range r.Pids {
			pids[i] = fmt.Sprint(p)
		}
		word := "pids"
		if len(pids) == 1 {
			word = "pid"
		}
		name := r.Subsystem
		if name == "" {
			name = "partition cgroup"
		} else {
			n++
		}
		parts = append(parts, fmt.Sprintf("%s: %s %s", name, word, strings.Join(pids, ",")))
	}
	what := fmt.Sprintf("%d subsystems still running", n)
	switch {
	case n == 1:
		what = "1 subsystem still running"
	case n == 0:
		what = "processes still running"
	}
	return what + " (" + strings.Join(parts, "; ") + ")"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func limit(b uint64) string {
	if b == 0 || b >= 1<<62 {
		return "none"
	}
	return hw.Bytes(b).Human()
}
