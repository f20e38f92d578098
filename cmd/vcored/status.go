package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

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
	rep, err := collectStatus(ctx, *socket)
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
func collectStatus(ctx context.Context, socket string) (*statusReport, error) {
	c := api.NewClient(socket)
	rep := &statusReport{Subsystems: map[string][]api.Subsystem{}}
	if err := c.Get(ctx, "/v1/info", &rep.Info); err != nil {
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("no daemon answers on %s (vcored accepts root and members of core's socket_group only; you are uid %d): %w",
				socket, os.Geteuid(), err)
		}
		return nil, fmt.Errorf("no daemon answers on %s: %w", socket, err)
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

func printStatus(e *env, rep *statusReport) {
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "%s pid %d, pager %s\n\n", rep.Info.Role, rep.Info.Pid, rep.Info.PagerMode)
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
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s/%s\t%s/%s\n", s.Name, state, dash(strings.Join(pids, ",")), s.Restarts,
				s.CPUs, s.Mems, hw.Bytes(s.MemoryUsageBytes).Human(), limit(s.MemoryLimitBytes),
				hw.Bytes(s.QuotaUsedBytes).Human(), limit(s.QuotaLimitBytes))
		}
		fmt.Fprintln(w)
	}
	printContainers(w, rep)
	for _, err := range rep.Errors {
		fmt.Fprintf(w, "error: %s\n", err)
	}
	w.Flush()
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
