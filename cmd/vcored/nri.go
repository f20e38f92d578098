package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/nri"
)

// runNRI is `vcored nri`: the containerd NRI plugin that places the
// containers of annotated pods on the vcores' partitions (README,
// "Kubernetes (NRI)"). It runs until SIGTERM/SIGINT, reconnecting to
// containerd when it restarts.
func runNRI(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "nri", "[--nri-socket PATH] [--core-socket PATH | --vcore SOCKET...]")
	sock := fs.String("nri-socket", nri.DefaultNRISocket, "containerd's NRI `socket`")
	core := fs.String("core-socket", nri.DefaultCoreSocket, "core's `socket` (asked for the vcores)")
	var vcores []string
	fs.Func("vcore", "a vcore `socket` (repeatable; instead of asking core)", func(s string) error {
		vcores = append(vcores, s)
		return nil
	})
	name := fs.String("name", nri.DefaultPluginName, "the plugin's `name` in containerd")
	idx := fs.String("idx", nri.DefaultPluginIdx, "the plugin's two-digit `index` (order among NRI plugins)")
	mem := fs.String("default-memory", nri.DefaultMemory.String(), "memory of a placed container without a limit (`size`)")
	shared := fs.String("shared-cpus", "", "confine containers of pods without the annotation to these `cpus` (empty: leave them alone)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	m, err := hw.ParseBytes(*mem)
	if err != nil || m == 0 {
		return usagef("--default-memory %q: want a size like 256MiB", *mem)
	}
	if *shared != "" {
		if _, err := hw.ParseCPUSet(*shared); err != nil {
			return usagef("--shared-cpus %q: %v", *shared, err)
		}
	}
	if len(*idx) != 2 || strings.Trim(*idx, "0123456789") != "" {
		return usagef("--idx %q: want two digits", *idx)
	}
	p := nri.New(nri.Config{
		NRISocket: *sock, CoreSocket: *core, VCores: vcores,
		PluginName: *name, PluginIdx: *idx, DefaultMemory: m, SharedCPUs: *shared, Log: e.log,
	})
	return p.Run(ctx)
}

// collectContainers adds the containers the NRI plugin placed on the vcore
// at socket to rep (`vcored status`). A vcore without the endpoint (404)
// has none.
func collectContainers(ctx context.Context, rep *statusReport, socket string) {
	var list []api.External
	err := api.NewClient(socket).Get(ctx, "/v1/external", &list)
	switch {
	case err != nil && strings.Contains(err.Error(), "404"):
	case err != nil:
		rep.Errors = append(rep.Errors, err.Error())
	case len(list) > 0:
		if rep.Containers == nil {
			rep.Containers = map[string][]api.External{}
		}
		rep.Containers[socket] = list
	}
}

// printContainers prints the CONTAINERS tables of `vcored status`.
func printContainers(w io.Writer, rep *statusReport) {
	for _, sock := range slices.Sorted(maps.Keys(rep.Containers)) {
		fmt.Fprintf(w, "CONTAINERS of %s\n", sock)
		fmt.Fprintln(w, "POD/CONTAINER\tID\tNODE\tCPUS\tMEMS\tMEMORY\tQUOTA (USED/LIMIT)\tWORKERS")
		for _, c := range rep.Containers[sock] {
			name := c.Namespace + "/" + c.Pod + "/" + c.Container
			if c.Pod == "" {
				name = "-"
			}
			id := c.ID
			if len(id) > 13 {
				id = id[:13]
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s/%s\t%d\n", name, id, c.Node, c.Assigned, c.Mems,
				hw.Bytes(c.Memory).Human(), hw.Bytes(c.QuotaUsedBytes).Human(), hw.Bytes(c.QuotaLimitBytes).Human(), c.Workers)
		}
		fmt.Fprintln(w)
	}
}
