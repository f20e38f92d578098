// Command vmtest runs the project's multi-node integration tests inside qemu
// guests with emulated NUMA topologies (see package internal/vmtest).
//
//	go run ./internal/vmtest/cmd/vmtest --nodes 2,4 --cpus-per-node 2 --mem-per-node 512M
//
// It builds vcored and the guest test binaries statically, packs them into
// an initramfs, boots one guest per node count in --nodes (in order), streams
// each console prefixed with "[Nn] ", prints a summary and exits with the
// first failing guest's code: the tests' own code, 124 on timeout, 125 when
// a guest stopped without the sentinel (panic), 126 when the harness failed,
// 130 when interrupted by a signal.
package main

import (
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/vmtest"
)

func main() {
	os.Exit(run())
}

type options struct {
	nodes       []int
	cpusPerNode int
	memPerNode  hw.Bytes
	timeout     time.Duration
	keep        bool
	runRE       string
	count       int
	pkgs        string
	kernel      string
	qemu        string
	cacheDir    string
	verbose     bool
	gzip        bool
	noVcored    bool
	extras      []vmtest.Extra
}

func parseNodes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--nodes %q: want a node count or a comma list like 2,4", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func run() int {
	var o options
	o.memPerNode = 512 * hw.MiB
	nodes := flag.String("nodes", "2", "NUMA node count of the guest, or a comma list (2,4) to boot one guest per count")
	flag.IntVar(&o.cpusPerNode, "cpus-per-node", 2, "CPUs per node")
	flag.TextVar(&o.memPerNode, "mem-per-node", o.memPerNode, "RAM per node (512M, 1G, ...)")
	flag.DurationVar(&o.timeout, "timeout", 8*time.Minute, "limit for each guest, boot to power-off")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (binaries, initramfs) and print its path")
	flag.StringVar(&o.runRE, "run", "", "pass -test.run=REGEX to every test binary")
	flag.IntVar(&o.count, "count", 0, "pass -test.count=N to every test binary (repeat to find a rare failure)")
	flag.StringVar(&o.pkgs, "pkgs", "", "comma list of packages to test in the guest (default: every package with *_numa_test.go plus vmtest.CorePackages)")
	flag.StringVar(&o.kernel, "kernel", "", "guest kernel bzImage (default: newest "+vmtest.KernelGlob+")")
	flag.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "qemu binary")
	flag.StringVar(&o.cacheDir, "cache-dir", "", "where the extracted vmlinux is cached (default: <module>/.vmtest-cache)")
	flag.BoolVar(&o.verbose, "v", true, "run test binaries with -test.v")
	flag.BoolVar(&o.gzip, "gzip", false, "gzip the initramfs (smaller file, slower boot under TCG)")
	flag.BoolVar(&o.noVcored, "no-vcored", false, "do not build vcored into the guest")
	flag.Func("extra", "HOST[=GUEST]: also install this host file in the guest (default GUEST: "+vmtest.DefaultExtraDir+"/<name>), with the\ninterpreter and libraries of a dynamic binary; repeatable, or a comma list", func(s string) error {
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f == "" {
				continue
			}
			x, err := vmtest.ParseExtra(f)
			if err != nil {
				return err
			}
			o.extras = append(o.extras, x)
		}
		return nil
	})
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "vmtest: unexpected arguments %q\n", flag.Args())
		return 2
	}
	var err error
	if o.nodes, err = parseNodes(*nodes); err != nil {
		fmt.Fprintln(os.Stderr, "vmtest:", err)
		return 2
	}
	for _, n := range o.nodes {
		t := vmtest.Topology{Nodes: n, CPUsPerNode: o.cpusPerNode, MemPerNode: o.memPerNode}
		if err := t.Validate(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := runAll(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmtest:", strings.TrimPrefix(err.Error(), "vmtest: "))
	}
	return code
}

// guestRun is one booted guest's result, for the summary.
type guestRun struct {
	topo  vmtest.Topology
	out   vmtest.Outcome
	fails *failures
}

func runAll(ctx context.Context, o options) (int, error) {
	t0 := time.Now()
	root, err := vmtest.ModuleRoot(".")
	if err != nil {
		return vmtest.ExitHarness, err
	}
	if o.cacheDir == "" {
		o.cacheDir = filepath.Join(root, ".vmtest-cache")
	}
	tmp, err := os.MkdirTemp("", "vmtest-")
	if err != nil {
		return vmtest.ExitHarness, err
	}
	if o.keep {
		defer fmt.Printf("vmtest: kept %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}

	kernel, err := pickKernel(o)
	if err != nil {
		return vmtest.ExitHarness, err
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return vmtest.ExitHarness, fmt.Errorf("busybox: %w (apt-get install busybox-static)", err)
	}

	// Build.
	var pkgs []string
	if o.pkgs != "" {
		for _, p := range strings.Split(o.pkgs, ",") {
			if p = strings.TrimSpace(p); p != "" {
				if !strings.HasPrefix(p, ".") {
					p = "./" + p
				}
				pkgs = append(pkgs, p)
			}
		}
	} else {
		var notes []string
		if pkgs, notes, err = vmtest.GuestPackages(root); err != nil {
			return vmtest.ExitHarness, err
		}
		for _, n := range notes {
			fmt.Println("vmtest:", n)
		}
	}
	b := vmtest.Builder{Root: root}
	img := vmtest.Image{Busybox: busybox}
	if !o.noVcored {
		fmt.Println("vmtest: building vcored")
		if img.Vcored, err = b.Vcored(tmp); err != nil {
			return vmtest.ExitHarness, fmt.Errorf("%w\n(--no-vcored runs the guest without it)", err)
		}
	}
	for _, x := range o.extras {
		xs, err := vmtest.WithLibs(x)
		if err != nil {
			return vmtest.ExitHarness, err
		}
		for _, l := range xs[1:] {
			fmt.Printf("vmtest: %s needs %s\n", x.Host, l.Host)
		}
		img.Extras = append(img.Extras, xs...)
	}
	for _, p := range pkgs {
		fmt.Printf("vmtest: building test binary of %s\n", p)
		tb, ok, err := b.TestBinary(p, tmp)
		if err != nil {
			return vmtest.ExitHarness, err
		}
		if !ok {
			fmt.Printf("vmtest: %s has no tests, left out\n", p)
			continue
		}
		img.Binaries = append(img.Binaries, tb)
	}
	if len(img.Binaries) == 0 {
		return vmtest.ExitHarness, errors.New("no test binaries to run")
	}
	// Leave the guest time to report and power off after a stuck test.
	perBinary := o.timeout - 45*time.Second
	if perBinary < 30*time.Second {
		perBinary = o.timeout / 2
	}
	img.TestArgs = []string{"-test.timeout=" + perBinary.String()}
	if o.verbose {
		img.TestArgs = append(img.TestArgs, "-test.v")
	}
	if o.count > 0 {
		img.TestArgs = append(img.TestArgs, fmt.Sprintf("-test.count=%d", o.count))
	}
	if o.runRE != "" {
		img.TestArgs = append(img.TestArgs, "-test.run="+o.runRE)
	}
	build := time.Since(t0)
	fmt.Printf("vmtest: built %d test binaries in %s\n", len(img.Binaries), build.Round(time.Second))

	// Boot one guest per node count.
	var runs []guestRun
	code := 0
	for _, n := range o.nodes {
		if ctx.Err() != nil {
			break
		}
		img.Topology = vmtest.Topology{Nodes: n, CPUsPerNode: o.cpusPerNode, MemPerNode: o.memPerNode}
		initrd := filepath.Join(tmp, "initramfs-"+img.Topology.String()+".cpio")
		if o.gzip {
			initrd += ".gz"
		}
		if err := writeInitrd(initrd, img, o.gzip); err != nil {
			return vmtest.ExitHarness, err
		}
		var out vmtest.Outcome
		prefix := fmt.Sprintf("[%dN] ", n)
		fails := newFailures(os.Stdout, prefix)
		for attempt := 1; ; attempt++ {
			fmt.Printf("vmtest: booting %s guest (%s, timeout %s)\n", img.Topology, filepath.Base(kernel), o.timeout)
			out, err = vmtest.Boot{
				Topology: img.Topology, Kernel: kernel, Initrd: initrd, Qemu: o.qemu,
				Timeout: o.timeout, Console: fails, Prefix: prefix,
			}.Run(ctx)
			if err != nil {
				return vmtest.ExitHarness, err
			}
			// A guest that never reached /init is qemu's failure, not the
			// tests': boot it again (at most three attempts).
			if !out.NoBoot || attempt == 3 || ctx.Err() != nil {
				break
			}
			fmt.Printf("vmtest: the %s guest did not reach /init (attempt %d); booting it again\n", img.Topology, attempt)
		}
		if !o.keep {
			os.Remove(initrd)
		}
		runs = append(runs, guestRun{img.Topology, out, fails})
		if out.Code != 0 && code == 0 {
			code = out.Code
		}
	}
	summary(os.Stdout, runs, build, time.Since(t0))
	if ctx.Err() != nil {
		return vmtest.ExitInterrupted, errors.New("interrupted")
	}
	return code, nil
}

func pickKernel(o options) (string, error) {
	bz := o.kernel
	if bz == "" {
		var err error
		if bz, err = vmtest.FindKernel(); err != nil {
			return "", err
		}
	}
	vmlinux, err := vmtest.CachedVmlinux(bz, o.cacheDir)
	if err != nil {
		fmt.Printf("vmtest: %v; booting the bzImage instead\n", err)
		return bz, nil
	}
	return vmlinux, nil
}

func writeInitrd(path string, img vmtest.Image, gz bool) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	var w io.Writer = f
	var zw *gzip.Writer
	if gz {
		zw, _ = gzip.NewWriterLevel(f, gzip.BestSpeed)
		w = zw
	}
	err = vmtest.WriteInitramfs(w, img)
	if zw != nil {
		err = errors.Join(err, zw.Close())
	}
	err = errors.Join(err, f.Close())
	if err != nil {
		return fmt.Errorf("write initramfs %s: %w", path, err)
	}
	return nil
}

func summary(w io.Writer, runs []guestRun, build, total time.Duration) {
	fmt.Fprintf(w, "\nvmtest: summary (build %s, total %s)\n", build.Round(time.Second), total.Round(time.Second))
	for _, r := range runs {
		status := "PASS"
		switch {
		case r.out.Interrupted:
			status = "INTERRUPTED"
		case r.out.TimedOut:
			status = "TIMEOUT"
		case !r.out.Sentinel && r.out.Panicked:
			status = "PANIC"
		case !r.out.Sentinel:
			status = "NO-SENTINEL"
		case r.out.Code != 0:
			status = "FAIL"
		}
		fmt.Fprintf(w, "  %-16s %-11s exit %3d  wall %6s  (init up after %s)\n",
			r.topo, status, r.out.Code, r.out.Wall.Round(100*time.Millisecond), r.out.Up.Round(100*time.Millisecond))
		for _, br := range r.out.Results {
			res := "ok"
			if br.Code != 0 {
				res = fmt.Sprintf("FAIL (exit %d)", br.Code)
			}
			fmt.Fprintf(w, "      %-24s %6.1fs  %s\n", br.Name, br.Seconds, res)
		}
		if r.fails != nil {
			r.fails.report(w)
		}
	}
}
