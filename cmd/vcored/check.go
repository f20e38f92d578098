package main

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/topology"
)

// runCheck validates configuration files without starting anything:
//
//	vcored check [--sysfs DIR] FILE...
//
// Each file's kind is detected with config.DetectKind (a file with a
// top-level node, core_socket, memory, cpus or [[subsystem]] key is a vcore
// file; any other is a core file). At most one core file may be given; vcore
// files are checked against it, or against the default core configuration
// when none is given. Every file is checked against the topology of this
// host, or of the sysfs tree DIR. A file with no problem prints "FILE: ok" on
// stdout; every problem prints as "file:line: key: message" on stderr, and
// the exit code is then 2. A file that cannot be read is a problem of that
// file ("file: no such file"). A subsystem command that is not an executable
// file on this host is a warning ("file:line: key: ... (warning)", on
// stderr): it does not change the exit code.
func runCheck(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "check", "[--sysfs DIR] FILE...\n\n"+
		"Validate core and vcore configuration files against this machine (or a sysfs tree).\n"+
		"A file with a top-level node, core_socket, memory, cpus or [[subsystem]] key is a vcore file,\n"+
		"any other a core file; vcore files are checked against the core file given with them.\n"+
		"Prints \"FILE: ok\" per good file; lists every problem and exits 2 otherwise.")
	sysfs := fs.String("sysfs", "", "read the topology from this sysfs tree instead of the host's /sys")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	files := fs.Args()
	if len(files) == 0 {
		return usagef("no files given (usage: vcored check [--sysfs DIR] FILE...)")
	}
	m, err := checkMachine(*sysfs)
	if err != nil {
		return err
	}

	problems := map[string]config.Errors{} // file → its problems
	other := map[string][]string{}         // file → problems that are not config.Errors
	warnings := map[string]config.Errors{} // file → warnings (they do not fail the check)
	report := func(file string, err error) {
		if err == nil {
			return
		}
		if es, ok := config.AsErrors(err); ok {
			for _, p := range es {
				problems[p.File] = append(problems[p.File], p)
			}
			return
		}
		other[file] = append(other[file], err.Error())
	}

	var core *config.Core
	coreFile := ""
	coreBroken := false
	var vcores []*config.VCore
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			report(f, config.ReadError(f, err))
			continue
		}
		switch config.DetectKind(data) {
		case config.KindCore:
			if coreFile != "" {
				report(f, fmt.Errorf("%s: a second core file (%s is the first); give one core file per check", f, coreFile))
				continue
			}
			coreFile = f
			c, err := config.ParseCore(f, data)
			report(f, err)
			core, coreBroken = c, err != nil
		case config.KindVCore:
			v, err := config.ParseVCore(f, data)
			report(f, err)
			if v != nil {
				vcores = append(vcores, v)
				warnings[f] = append(warnings[f], v.CommandWarnings()...)
			}
		}
	}
	if core != nil {
		report(core.File, core.Validate(m))
	}
	unchecked := map[string]bool{}
	if !coreBroken {
		for _, v := range vcores {
			report(v.File, v.Validate(m, core))
		}
		if len(vcores) > 1 {
			report("", config.ValidateVCores(m, core, vcores))
		}
	} else {
		for _, v := range vcores {
			unchecked[v.File] = true
		}
	}

	n, bad := 0, 0
	for _, f := range files {
		ps, others := problems[f], other[f]
		// Warnings are listed with the problems, in line order.
		all := append(slices.Clone(ps), warnings[f]...)
		slices.SortStableFunc(all, func(a, b *config.Error) int { return cmp.Compare(a.Line, b.Line) })
		for _, p := range all {
			fmt.Fprintln(e.stderr, p)
		}
		for _, o := range others {
			fmt.Fprintln(e.stderr, o)
		}
		switch {
		case len(ps) == 0 && len(others) == 0 && unchecked[f]:
			fmt.Fprintf(e.stdout, "%s: not checked against the machine: the core file %s has errors\n", f, coreFile)
		case len(ps) == 0 && len(others) == 0:
			fmt.Fprintf(e.stdout, "%s: ok\n", f)
		default:
			bad++
			n += len(ps) + len(others)
		}
	}
	if n > 0 {
		return usagef("%d problem(s) in %d of %d file(s)", n, bad, len(files))
	}
	return nil
}

// checkMachine returns the topology files are checked against: the sysfs
// tree dir, or the host's.
func checkMachine(dir string) (*topology.Machine, error) {
	if dir == "" {
		m, err := topology.Host()
		if err != nil {
			return nil, fmt.Errorf("read this machine's topology: %w", err)
		}
		return m, nil
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, usagef("--sysfs %s: not a directory", dir)
	}
	m, err := topology.Discover(os.DirFS(dir))
	if err != nil {
		return nil, usagef("--sysfs %s: %w", dir, err)
	}
	return m, nil
}
