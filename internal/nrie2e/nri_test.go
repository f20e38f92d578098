// Package nrie2e runs `vcored nri` against a real containerd (v2, built by
// `make nri-deps`) with runc and crictl: containerd runs with its own
// config, root, state and sockets under a temp dir, NRI enabled; the images
// are OCI tarballs built here and imported with ctr; pods use host
// networking (no CNI).
package nrie2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

const image = "docker.io/vcored/e2e:latest"

// shimDir is where containerd's shims put their sockets (fixed).
const shimDir = "/run/containerd"

// hostPaths are containerd's default places outside the test's temp dir:
// the config moves each of them, and the test checks none appears.
var hostPaths = []string{"/var/lib/containerd", "/opt/containerd", "/etc/containerd", "/run/nri", "/var/run/nri", "/etc/nri", "/opt/nri"}

// tools found by TestMain; skip is set when one is missing.
var (
	tools = map[string]string{}
	skip  string
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		skip = "needs root (containerd, cgroups, userfaultfd)"
	}
	gobin := filepath.Join(goEnv("GOPATH"), "bin")
	for _, name := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "crictl", "runc"} {
		p, err := exec.LookPath(name)
		if err != nil {
			if q := filepath.Join(gobin, name); isExec(q) {
				p, err = q, nil
			}
		}
		if err != nil && skip == "" {
			skip = fmt.Sprintf("%s not found in PATH or %s (run `make nri-deps`)", name, gobin)
			if inGuest() {
				skip = fmt.Sprintf("%s not found in the guest's PATH (make vmtest-nri installs the container tools)", name)
			}
		}
		if o := os.Getenv("NRIE2E_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); o != "" {
			p = o
		}
		tools[name] = p
	}
	os.Exit(m.Run())
}

func goEnv(k string) string {
	out, err := exec.Command("go", "env", k).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is one test's world: core, a vcore, containerd, the plugin.
type env struct {
	t        *testing.T
	dir      string
	cgParent string // the pods' cgroup parent (and vcored's)
	bin      string // vcored
	procs    []*proc
	machine  *topology.Machine
	partCPUs hw.CPUSet // the first vcore's partition
	vcores   []vcoreInfo
	ctrd     *proc
	plugin   *proc
	// absent are the hostPaths that did not exist before containerd ran.
	absent []string
	// removeShimDir: /run/containerd did not exist before the test.
	removeShimDir bool
	// crictlConfig is an empty crictl config (the flags say everything).
	crictlConfig string
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

func (e *env) path(n string) string { return filepath.Join(e.dir, n) }

func (e *env) start(name string, env []string, bin string, args ...string) *proc {
	e.t.Helper()
	p := &proc{name: name, log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	e.procs = append(e.procs, p)
	return p
}

// stop sends SIGTERM, then SIGKILL to the group after grace; it says
// whether SIGKILL was needed.
func (p *proc) stop(grace time.Duration) (killed bool) {
	select {
	case <-p.done:
		return false
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return false
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return true
	}
}

// eventually polls cond every 100 ms until it holds or d passes.
func (e *env) eventually(d time.Duration, what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(100 * time.Millisecond)
	}
	e.dumpLogs()
	e.t.Fatalf("%s: not within %s (last: %s)", what, d, last)
}

func (e *env) dumpLogs() {
	for _, p := range e.procs {
		e.t.Logf("---- %s log ----\n%s", p.name, tail(p.log.String(), 12000))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// newEnv builds the binaries and the image and starts everything, with one
// vcore on node 0 (192MiB: room for three 64MiB containers, and less than
// a node of the qemu guest has).
func newEnv(t *testing.T) *env { return newEnvOn(t, "192MiB", 0) }

// vcoreInfo is one vcore of the env: vcore<i> runs on nodes[i].
type vcoreInfo struct {
	node   hw.Node
	cpus   hw.CPUSet // its partition: the node's usable CPUs but core's
	socket string
}

// inGuest: the qemu guest of `make vmtest-nri` (no go tool there; the
// harness installed vcored, the tools and the pause binary).
func inGuest() bool { return os.Getenv("VMTEST") == "1" }

// guestPause is the pause binary's name on the guest's PATH (see the
// Makefile's vmtest-nri).
const guestPause = "nrie2e-pause"

// newEnvOn starts core, a vcore per node (each with memory), containerd
// and the plugin, and imports the image.
func newEnvOn(t *testing.T, memory string, nodes ...hw.Node) *env {
	if skip != "" {
		t.Skip(skip)
	}
	m, err := topology.Host()
	if err != nil {
		t.Fatal(err)
	}
	if m.AllowedCPUs.Len() < 2 {
		t.Skipf("needs 2 usable CPUs (core keeps one); have %s", m.AllowedCPUs)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skipf("no busybox (Debian's busybox-static) for the workload image: %v", err)
	}
	var pause string
	if inGuest() {
		if pause, err = exec.LookPath(guestPause); err != nil {
			t.Skipf("no %s in the guest (make vmtest-nri installs it with the container tools): %v", guestPause, err)
		}
	}
	guestEtcFiles(t)
	dir, err := os.MkdirTemp("", "vcored-nri-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	e := &env{t: t, dir: dir, cgParent: fmt.Sprintf("vcored-nri-e2e-%d", os.Getpid()), machine: m}
	t.Cleanup(e.cleanup)

	// Static binaries for the image.
	e.bin = e.path("vcored")
	build := func(out, pkg string) {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", pkg, err, b)
		}
	}
	if inGuest() {
		e.bin = os.Getenv("VCORED")
	} else {
		build(e.bin, "github.com/vcored/vcored/cmd/vcored")
		pause = e.path("pause")
		build(pause, "./testdata/pause")
	}
	tarball := e.path("image.tar")
	if err := writeImage(tarball, image, map[string]string{"pause": pause, "vcored": e.bin, "bin/busybox": busybox}); err != nil {
		t.Fatal(err)
	}

	// core + a vcore per node.
	lowest, _ := m.AllowedCPUs.Min()
	for i, id := range nodes {
		n, ok := m.NodeByID(id)
		if !ok {
			t.Skipf("no node %d on this host (%s)", id, m.NodeIDs())
		}
		cpus := n.CPUs.Intersect(m.AllowedCPUs).Difference(hw.NewSet(lowest))
		if cpus.IsEmpty() {
			t.Skipf("node %d has no CPU for a partition (core keeps CPU %d)", id, lowest)
		}
		e.vcores = append(e.vcores, vcoreInfo{node: id, cpus: cpus, socket: e.path(fmt.Sprintf("vcore%d/vcore%d.sock", i, i))})
	}
	e.partCPUs = e.vcores[0].cpus
	e.write("core.toml", fmt.Sprintf("socket = %q\nstate_dir = %q\ncgroup_parent = %q\nreserved_cpus = \"%d\"\nreserved_memory = \"64MiB\"\n",
		e.path("core.sock"), e.path("core-state"), e.cgParent+"-vcored", lowest))
	core := e.start("core", nil, e.bin, "core", "--config", e.path("core.toml"))
	e.waitAPI(core, e.path("core.sock"))
	for i, v := range e.vcores {
		name := fmt.Sprintf("vcore%d", i)
		os.MkdirAll(e.path(name), 0o755)
		e.write(name+".toml", fmt.Sprintf("node = %d\ncore_socket = %q\nsocket = %q\nstate_dir = %q\ncpus = %q\nmemory = %q\nstop_grace = \"2s\"\n",
			v.node, e.path("core.sock"), v.socket, e.path(name+"-state"), v.cpus.String(), memory))
		vc := e.start(name, nil, e.bin, "vcore", "--config", e.path(name+".toml"))
		e.waitAPI(vc, v.socket)
	}

	e.startContainerd()
	out, err := exec.Command(tools["ctr"], "--address", e.path("containerd.sock"), "-n", "k8s.io", "images", "import",
		"--snapshotter", "native", "--no-unpack", tarball).CombinedOutput()
	if err != nil {
		e.dumpLogs()
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	e.startPlugin()
	return e
}

// vcoreSocket is the first vcore's socket.
func (e *env) vcoreSocket() string { return e.vcores[0].socket }

func (e *env) write(name, body string) string {
	p := e.path(name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) waitAPI(p *proc, sock string) {
	e.t.Helper()
	// Generous: the vcore is pinned to its partition, which other tests
	// and builds share on a 2-CPU machine.
	e.eventually(2*time.Minute, p.name+" answers on "+sock, func() (bool, string) {
		select {
		case <-p.done:
			e.dumpLogs()
			e.t.Fatalf("%s exited", p.name)
		default:
		}
		var info api.Info
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := api.NewClient(sock).Get(ctx, "/v1/info", &info)
		return err == nil, fmt.Sprint(err)
	})
}

func (e *env) startContainerd() {
	e.t.Helper()
	cfg := fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  level = "info"
[plugins.'io.containerd.internal.v1.opt']
  path = %[10]q
[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = %[5]q
  plugin_path = %[6]q
  plugin_config_path = %[6]q
  plugin_registration_timeout = "30s"
  plugin_request_timeout = "30s"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "native"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[7]q
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # the test may run where lowering oom_score_adj is not allowed
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[8]q
        Root = %[9]q
        SystemdCgroup = false
        NoPivotRoot = %[11]v
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
`, e.path("ctrd-root"), e.path("ctrd-state"), e.path("containerd.sock"), e.path("containerd.sock.ttrpc"),
		e.path("nri.sock"), e.path("nri-plugins"), image, tools["runc"], e.path("runc-root"), e.path("opt"), rootIsRamfs())
	for _, p := range hostPaths {
		if _, err := os.Stat(p); os.IsNotExist(err) {
			e.absent = append(e.absent, p)
		}
	}
	// The shims put their sockets in /run/containerd/s whatever the
	// config says: remove it at the end if this test made it.
	if _, err := os.Stat(shimDir); os.IsNotExist(err) {
		e.removeShimDir = true
	}
	e.write("containerd.toml", cfg)
	e.crictlConfig = e.write("crictl.yaml", "")
	path := filepath.Dir(tools["containerd-shim-runc-v2"]) + ":" + os.Getenv("PATH")
	e.ctrd = e.start("containerd", []string{"PATH=" + path}, tools["containerd"], "--config", e.path("containerd.toml"))
	e.eventually(2*time.Minute, "containerd's CRI answers", func() (bool, string) {
		select {
		case <-e.ctrd.done:
			e.dumpLogs()
			e.t.Fatal("containerd exited")
		default:
		}
		out, err := e.crictlErr("info")
		return err == nil, fmt.Sprintf("%v: %s", err, tail(out, 300))
	})
}

func (e *env) startPlugin() {
	e.t.Helper()
	e.plugin = e.start("nri-plugin", []string{"VCORED_DEBUG=1"}, e.bin, "nri", "--nri-socket", e.path("nri.sock"), "--core-socket", e.path("core.sock"))
	e.eventually(2*time.Minute, "the plugin synchronized with containerd", func() (bool, string) {
		return strings.Contains(e.plugin.log.String(), "msg=synchronized"), tail(e.plugin.log.String(), 300)
	})
}

// crictl runs crictl against this containerd; a failure is fatal.
func (e *env) crictl(args ...string) string {
	e.t.Helper()
	out, err := e.crictlErr(args...)
	if err != nil {
		e.dumpLogs()
		e.t.Fatalf("crictl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

// crictlLogs is a container's stdout and stderr.
func (e *env) crictlLogs(id string) string {
	ep := "unix://" + e.path("containerd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, _ := exec.CommandContext(ctx, tools["crictl"], "--config", e.crictlConfig, "--runtime-endpoint", ep, "logs", id).CombinedOutput()
	return string(out)
}

func (e *env) crictlErr(args ...string) (string, error) {
	ep := "unix://" + e.path("containerd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := append([]string{"--config", e.crictlConfig, "--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "2m"}, args...)
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, tools["crictl"], a...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// cleanup removes pods, stops the daemons and checks nothing is left.
func (e *env) cleanup() {
	if e.t.Failed() {
		e.dumpLogs()
	}
	if e.ctrd != nil {
		if out, err := e.crictlErr("pods", "-q"); err == nil {
			for id := range strings.FieldsSeq(out) {
				e.crictlErr("stopp", id)
				e.crictlErr("rmp", "-f", id)
			}
		}
	}
	for i := len(e.procs) - 1; i >= 0; i-- {
		e.procs[i].stop(10 * time.Second)
	}
	// Shims are started in their own process group: kill what is left of
	// them (their command line names our socket).
	killShims(e.dir)
	// Mounts under the temp dir (snapshots, shm, rootfs), deepest first.
	for _, mnt := range mountsUnder(e.dir) {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			e.t.Errorf("unmount %s: %v", mnt, err)
		}
	}
	if left := mountsUnder(e.dir); len(left) > 0 {
		e.t.Errorf("mounts left under %s: %v", e.dir, left)
	}
	// The pods' parent cgroup is the test's (kubelet's in a cluster); a
	// container's or sandbox's cgroup under it would be a leak.
	var left []string
	for _, cg := range removeCgroups(e.cgParent) {
		if strings.Contains(strings.TrimPrefix(cg, cgroups.DefaultRoot+"/"), e.cgParent+"/") {
			left = append(left, cg)
		}
	}
	if len(left) > 0 {
		e.t.Errorf("cgroups left behind (removed now): %v", left)
	}
	if e.removeShimDir {
		var files []string
		filepath.Walk(shimDir, func(p string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				files = append(files, p)
			}
			return nil
		})
		if len(files) > 0 {
			e.t.Errorf("shim sockets left in %s: %v", shimDir, files)
		}
		os.RemoveAll(shimDir)
	}
	for _, p := range e.absent {
		if _, err := os.Stat(p); err == nil {
			e.t.Errorf("containerd left %s behind (removed now)", p)
			os.RemoveAll(p)
		}
	}
	if !e.t.Failed() {
		os.RemoveAll(e.dir)
	} else {
		e.t.Logf("kept %s", e.dir)
	}
}

// guestEtcFiles makes the files containerd copies into a host-network
// sandbox (/etc/hosts, /etc/resolv.conf), which the guest's initramfs
// lacks; they are removed at the end. Outside the guest it does nothing.
func guestEtcFiles(t *testing.T) {
	if !inGuest() {
		return
	}
	for name, body := range map[string]string{"/etc/hosts": "127.0.0.1 localhost\n", "/etc/resolv.conf": ""} {
		if _, err := os.Stat(name); err == nil {
			continue
		}
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(name) })
	}
}

// rootIsRamfs says whether / is the initial ramfs (the qemu guest's
// initramfs), where pivot_root(2) fails with EINVAL: runc must then move
// the container's root with MS_MOVE and chroot (NoPivotRoot).
func rootIsRamfs() bool {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for line := range strings.SplitSeq(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if f := strings.Fields(pre); ok && len(f) > 4 && f[4] == "/" {
			fs := strings.Fields(post)
			return len(fs) > 0 && (fs[0] == "rootfs" || fs[0] == "ramfs")
		}
	}
	return false
}

func killShims(dir string) {
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmd, []byte(dir)) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(out)
}

// removeCgroups removes every cgroup whose top directory starts with
// prefix, in every hierarchy, and returns those it found.
func removeCgroups(prefix string) []string {
	var found []string
	for _, pat := range []string{filepath.Join(cgroups.DefaultRoot, "*", prefix+"*"), filepath.Join(cgroups.DefaultRoot, prefix+"*")} {
		tops, _ := filepath.Glob(pat)
		for _, top := range tops {
			var dirs []string
			filepath.Walk(top, func(p string, info os.FileInfo, err error) error {
				if err == nil && info.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				found = append(found, dirs[i])
				for j := 0; j < 50 && os.Remove(dirs[i]) != nil; j++ {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}
	}
	return found
}

// writeImage writes an OCI image layout tarball holding files (path in the
// image → host file) plus busybox applet links, named ref.
func writeImage(out, ref string, files map[string]string) error {
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	dirs := []string{"bin", "tmp", "run", "run/vcored", "proc", "sys", "dev", "etc"}
	for _, d := range dirs {
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: mode}); err != nil {
			return err
		}
	}
	for _, name := range slices.Sorted(mapKeys(files)) {
		data, err := os.ReadFile(files[name])
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data))}); err != nil {
			return err
		}
		if _, err := tw.Write(data); err != nil {
			return err
		}
	}
	for _, applet := range []string{"sh", "sleep", "cat", "echo", "test", "ls"} {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	blobs := map[string][]byte{}
	add := func(b []byte) string {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return d
	}
	layerDigest := add(layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Cmd": []string{"/pause"}, "Env": []string{"PATH=/bin"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	configDigest := add(config)
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": len(config)},
		"layers": []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layer.Len()}},
	})
	manifestDigest := add(manifest)
	index, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest, "size": len(manifest),
			"platform":    map[string]string{"architecture": "amd64", "os": "linux"},
			"annotations": map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": "latest"},
		}},
	})
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	ow := tar.NewWriter(f)
	put := func(name string, b []byte) error {
		if err := ow.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}); err != nil {
			return err
		}
		_, err := ow.Write(b)
		return err
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := put("index.json", index); err != nil {
		return err
	}
	for _, d := range slices.Sorted(mapKeys(blobs)) {
		if err := put("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d]); err != nil {
			return err
		}
	}
	return ow.Close()
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}
