package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/config"
)

// runCheckpoint implements `vcored checkpoint [--vcore SOCKET] SUBSYSTEM`:
// ask the vcore to checkpoint the subsystem's persistent dataspaces
// (POST /v1/subsystems/NAME/checkpoint; root only) and print what it wrote.
func runCheckpoint(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "checkpoint", "[--vcore SOCKET] [--json] [--timeout DURATION] SUBSYSTEM")
	socket := fs.String("vcore", config.DefaultVCoreSocket(0), "socket of the vcore running the subsystem")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("want one SUBSYSTEM, got %d arguments", fs.NArg())
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var res api.CheckpointResult
	path := "/v1/subsystems/" + url.PathEscape(fs.Arg(0)) + "/checkpoint"
	if err := api.NewClient(*socket).Post(ctx, path, &res); err != nil {
		return dialError(*socket, e.geteuid(), err)
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	fmt.Fprintf(e.stdout, "subsystem %s: frozen %s, total %s, %d pages, %d bytes written\n",
		res.Subsystem, time.Duration(res.FrozenNS).Round(time.Microsecond), time.Duration(res.TotalNS).Round(time.Microsecond), res.Pages, res.Bytes)
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DATASPACE\tATTACHED\tPAGES\tBYTES\tLAYERS\tIMAGE")
	for _, d := range res.Dataspaces {
		note := ""
		if d.Rescan {
			note += " (rescan)"
		}
		if d.Compacted {
			note += " (compacted)"
		}
		if d.WrittenFrozen {
			note += " (written frozen)"
		}
		fmt.Fprintf(tw, "%s\t%v\t%d\t%d\t%d%s\t%s\n", d.Name, d.Attached, d.Pages, d.Bytes, d.Layers, note, d.Image)
	}
	return tw.Flush()
}
