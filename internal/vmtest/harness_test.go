package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/hw"
)

func TestQemuArgs(t *testing.T) {
	for _, tc := range []struct {
		topo     Topology
		smp, mem string
	}{
		{Topology{2, 2, 512 * hw.MiB}, "4,sockets=2,cores=2,threads=1", "1024M"},
		{Topology{4, 2, 512 * hw.MiB}, "8,sockets=4,cores=2,threads=1", "2048M"},
		{Topology{3, 1, hw.GiB}, "3,sockets=3,cores=1,threads=1", "3072M"},
	} {
		t.Run(tc.topo.String(), func(t *testing.T) {
			args, err := QemuArgs(tc.topo, "/k", "/i")
			if err != nil {
				t.Fatal(err)
			}
			opt := func(name string) []string { // every value of -name
				var v []string
				for i := 0; i+1 < len(args); i++ {
					if args[i] == name {
						v = append(v, args[i+1])
					}
				}
				return v
			}
			if got := opt("-smp"); !slices.Equal(got, []string{tc.smp}) {
				t.Errorf("-smp %q, want %q", got, tc.smp)
			}
			if got := opt("-m"); !slices.Equal(got, []string{tc.mem}) {
				t.Errorf("-m %q, want %q", got, tc.mem)
			}
			if got := opt("-accel"); !slices.Equal(got, []string{"tcg,thread=multi"}) {
				t.Errorf("-accel %q", got)
			}
			n, per := tc.topo.Nodes, tc.topo.CPUsPerNode
			mib := int64(tc.topo.MemPerNode / hw.MiB)
			var wantObj, wantNuma []string
			for i := 0; i < n; i++ {
				wantObj = append(wantObj, fmt.Sprintf("memory-backend-ram,id=m%d,size=%dM", i, mib))
				wantNuma = append(wantNuma, fmt.Sprintf("node,nodeid=%d,cpus=%d-%d,memdev=m%d", i, i*per, i*per+per-1, i))
			}
			for i := 0; i < n; i++ {
				for j := 0; j < n; j++ {
					if i != j {
						wantNuma = append(wantNuma, fmt.Sprintf("dist,src=%d,dst=%d,val=21", i, j))
					}
				}
			}
			if got := opt("-object"); !slices.Equal(got, wantObj) {
				t.Errorf("-object\n got %q\nwant %q", got, wantObj)
			}
			if got := opt("-numa"); !slices.Equal(got, wantNuma) {
				t.Errorf("-numa\n got %q\nwant %q", got, wantNuma)
			}
			for name, want := range map[string]string{"-kernel": "/k", "-initrd": "/i", "-append": KernelCmdline, "-nic": "none"} {
				if got := opt(name); !slices.Equal(got, []string{want}) {
					t.Errorf("%s %q, want %q", name, got, want)
				}
			}
			for _, flag := range []string{"-nographic", "-no-reboot"} {
				if !slices.Contains(args, flag) {
					t.Errorf("no %s in %q", flag, args)
				}
			}
		})
	}
	for _, bad := range []Topology{{0, 2, hw.GiB}, {2, 0, hw.GiB}, {2, 2, 64 * hw.MiB}, {2, 2, hw.GiB + 1}, {65, 1, hw.GiB}} {
		if _, err := QemuArgs(bad, "/k", "/i"); !errors.Is(err, ErrBadTopology) {
			t.Errorf("QemuArgs(%+v) error %v, want ErrBadTopology", bad, err)
		}
	}
}

func TestTopologyCPUs(t *testing.T) {
	topo := Topology{4, 3, hw.GiB}
	if got := topo.CPUs(2).String(); got != "6-8" {
		t.Errorf("CPUs(2) = %s, want 6-8", got)
	}
}

func TestParseSentinel(t *testing.T) {
	for _, tc := range []struct {
		line string
		code int
		ok   bool
	}{
		{"VMTEST-EXIT 0", 0, true},
		{"VMTEST-EXIT 1\r", 1, true},
		{"[    2.1] random: crng init doneVMTEST-EXIT 2", 2, true},
		{"  VMTEST-EXIT 125  ", 125, true},
		{"VMTEST-EXIT", 0, false},
		{"VMTEST-EXIT x", 0, false},
		{"VMTEST-EXIT -1", 0, false},
		{"VMTEST-EXIT 256", 0, false},
		{"echo VMTEST-EXITED 0", 0, false},
		{"PASS", 0, false},
	} {
		code, ok := ParseSentinel(tc.line)
		if code != tc.code || ok != tc.ok {
			t.Errorf("ParseSentinel(%q) = %d, %v; want %d, %v", tc.line, code, ok, tc.code, tc.ok)
		}
	}
}

func TestParseResult(t *testing.T) {
	r, ok := ParseResult("VMTEST-RESULT internal_linux 1 12.5")
	if !ok || r != (BinaryResult{"internal_linux", 1, 12.5}) {
		t.Errorf("got %+v, %v", r, ok)
	}
	for _, bad := range []string{"VMTEST-RESULT a 1", "VMTEST-RESULT a b 1.0", "VMTEST-RESULT a 0 x", "x"} {
		if _, ok := ParseResult(bad); ok {
			t.Errorf("ParseResult(%q) accepted", bad)
		}
	}
}

func TestStripEscapes(t *testing.T) {
	in := "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)"
	if got := stripEscapes(in); got != "SeaBIOS (version 1.16)" {
		t.Errorf("stripEscapes = %q", got)
	}
}

// cpioEntry is one parsed newc entry.
type cpioEntry struct {
	name         string
	mode         uint32
	rmaj, rmin   uint32
	data         string
	ino, namelen uint32
}

// readNewc parses a newc archive independently of CPIOWriter, checking the
// magic and the 4-byte alignment of every header and data block.
func readNewc(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("header at %d is not 4-byte aligned", off)
		}
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		f := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		e := cpioEntry{ino: f(0), mode: f(1), rmaj: f(9), rmin: f(10), namelen: f(11)}
		size := int(f(6))
		nameEnd := off + 110 + int(e.namelen)
		e.name = string(b[off+110 : nameEnd-1])
		if b[nameEnd-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", e.name)
		}
		dataOff := (nameEnd + 3) &^ 3
		e.data = string(b[dataOff : dataOff+size])
		off = (dataOff + size + 3) &^ 3
		if e.name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func testArchive(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	for _, err := range []error{
		w.Dir("/d", 0o755),
		w.File("/d/a", 0o644, []byte("hello")),
		w.File("d/odd-name.txt", 0o600, []byte("123456789")),
		w.File("/d/empty", 0o644, nil),
		w.Symlink("/d/link", "a"),
		w.CharDev("/d/console", 0o600, 5, 1),
		w.Close(),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.File("/late", 0o644, nil); err == nil {
		t.Error("File after Close succeeded")
	}
	return buf.Bytes()
}

func TestCPIOWriterFormat(t *testing.T) {
	got := readNewc(t, testArchive(t))
	want := []cpioEntry{
		{name: "d", mode: cpioDir | 0o755},
		{name: "d/a", mode: cpioFile | 0o644, data: "hello"},
		{name: "d/odd-name.txt", mode: cpioFile | 0o600, data: "123456789"},
		{name: "d/empty", mode: cpioFile | 0o644},
		{name: "d/link", mode: cpioSymlink | 0o777, data: "a"},
		{name: "d/console", mode: cpioCharDev | 0o600, rmaj: 5, rmin: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d: %+v", len(got), len(want), got)
	}
	inos := map[uint32]bool{}
	for i := range want {
		g := got[i]
		if inos[g.ino] || g.ino == 0 {
			t.Errorf("%s: inode %d zero or reused", g.name, g.ino)
		}
		inos[g.ino] = true
		g.ino, g.namelen = 0, 0
		if g != want[i] {
			t.Errorf("entry %d = %+v, want %+v", i, g, want[i])
		}
	}
}

// TestCPIORoundTripWithCpioTool lists and extracts the archive with GNU
// cpio, the reference reader.
func TestCPIORoundTripWithCpioTool(t *testing.T) {
	if inGuest() {
		t.Skip("in the vmtest guest: cpio is busybox's, not the GNU reference reader")
	}
	tool, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("no cpio tool (apt-get install cpio)")
	}
	arc := testArchive(t)
	cmd := exec.Command(tool, "-it", "--quiet")
	cmd.Stdin = bytes.NewReader(arc)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -it: %v\n%s", err, out)
	}
	names := strings.Fields(string(out))
	want := []string{"d", "d/a", "d/odd-name.txt", "d/empty", "d/link", "d/console"}
	if !slices.Equal(names, want) {
		t.Errorf("cpio -it lists %q, want %q", names, want)
	}
	// Extract everything but the device node (mknod needs privilege).
	dir := t.TempDir()
	cmd = exec.Command(tool, "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "d/console")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(arc)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	for name, content := range map[string]string{"d/a": "hello", "d/odd-name.txt": "123456789", "d/empty": ""} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != content {
			t.Errorf("%s: %q, %v; want %q", name, b, err, content)
		}
	}
	if target, err := os.Readlink(filepath.Join(dir, "d/link")); err != nil || target != "a" {
		t.Errorf("d/link → %q, %v; want a", target, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "d/odd-name.txt")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("d/odd-name.txt mode %v, %v; want 0600", st.Mode(), err)
	}
}

func fakeImage(t *testing.T) Image {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("pkg/testdata/m/x.txt", "fixture")
	return Image{
		Topology: Topology{2, 2, 512 * hw.MiB},
		Busybox:  write("busybox", "BB"),
		Vcored:   write("vcored", "VC"),
		Binaries: []TestBinary{
			{Name: "topology", Path: write("t.test", "T"), Pkg: "topology", Testdata: filepath.Join(dir, "pkg/testdata")},
			{Name: "internal_linux", Path: write("l.test", "L"), Pkg: "internal/linux"},
		},
		TestArgs: []string{"-test.v", "-test.run=Numa|Host$"},
	}
}

func TestWriteInitramfs(t *testing.T) {
	var buf bytes.Buffer
	img := fakeImage(t)
	if err := WriteInitramfs(&buf, img); err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	for _, e := range readNewc(t, buf.Bytes()) {
		if _, dup := entries[e.name]; dup {
			t.Errorf("%s twice in the archive", e.name)
		}
		entries[e.name] = e
	}
	for name, data := range map[string]string{
		"bin/busybox": "BB", "bin/vcored": "VC", "vmtest/topology.test": "T", "vmtest/internal_linux.test": "L",
		"src/topology/testdata/m/x.txt": "fixture", "init": InitScript(img), "etc/vmtest.env": envFile(img.Topology),
	} {
		if e, ok := entries[name]; !ok || e.data != data {
			t.Errorf("%s: %q (present %v), want %q", name, e.data, ok, data)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "src/internal", "src/internal/linux", "src/topology/testdata/m"} {
		if e, ok := entries[d]; !ok || e.mode&0o170000 != cpioDir {
			t.Errorf("%s: not a directory in the archive", d)
		}
	}
	if e := entries["dev/console"]; e.mode&0o170000 != cpioCharDev || e.rmaj != 5 || e.rmin != 1 {
		t.Errorf("dev/console = %+v, want char 5:1", e)
	}
	if e := entries["init"]; e.mode&0o111 == 0 {
		t.Errorf("init mode %o is not executable", e.mode)
	}
	env := entries["etc/vmtest.env"].data
	for _, kv := range []string{"VMTEST=1", "VMTEST_NODES=2", "VMTEST_CPUS_PER_NODE=2", "VMTEST_MEM_PER_NODE=536870912", "VCORED=/bin/vcored"} {
		if !strings.Contains(env, kv+"\n") {
			t.Errorf("vmtest.env lacks %s:\n%s", kv, env)
		}
	}
}

func TestInitScript(t *testing.T) {
	s := InitScript(fakeImage(t))
	for _, want := range []string{
		"mount -t cgroup2 cgroup2 /sys/fs/cgroup",
		`echo "+cpuset +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control`,
		"echo 0 > /proc/sys/kernel/numa_balancing",
		"run topology /src/topology -test.v '-test.run=Numa|Host$'\n",
		"run internal_linux /src/internal/linux -test.v '-test.run=Numa|Host$'\n",
		`echo "VMTEST-EXIT $rc"` + "\npoweroff -f\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q:\n%s", want, s)
		}
	}
	if i, j := strings.Index(s, "run topology"), strings.Index(s, "run internal_linux"); i > j {
		t.Error("binaries run out of order")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh to syntax-check the script")
	}
	if out, err := exec.Command(sh, "-n", "-c", s).CombinedOutput(); err != nil {
		t.Errorf("sh -n: %v\n%s", err, out)
	}
}

func TestGuestPackages(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"go.mod", "a/x_numa_test.go", "a/x_test.go", "b/c/y_numa_test.go", "core1/z_test.go",
		"nocore/z.go", "testdata/q/w_numa_test.go", ".hidden/h_numa_test.go"} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	saved := CorePackages
	t.Cleanup(func() { CorePackages = saved })
	CorePackages = []string{"./core1", "./nocore", "./missing", "./a"}
	pkgs, notes, err := GuestPackages(root)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"./a", "./b/c", "./core1"}; !slices.Equal(pkgs, want) {
		t.Errorf("GuestPackages = %q, want %q", pkgs, want)
	}
	if len(notes) != 2 || !strings.Contains(notes[0], "./nocore") || !strings.Contains(notes[1], "./missing") {
		t.Errorf("notes = %q, want ./nocore and ./missing left out", notes)
	}
	if got, err := ModuleRoot(filepath.Join(root, "b", "c")); err != nil || got != root {
		t.Errorf("ModuleRoot = %q, %v; want %q", got, err, root)
	}
	for pkg, want := range map[string]string{"./internal/linux": "internal_linux", "./topology": "topology", ".": "root"} {
		if got := BinaryName(pkg); got != want {
			t.Errorf("BinaryName(%q) = %q, want %q", pkg, got, want)
		}
	}
}

func TestExtractVmlinux(t *testing.T) {
	if inGuest() {
		t.Skip("in the vmtest guest: busybox's xz cannot compress")
	}
	xz, err := exec.LookPath("xz")
	if err != nil {
		t.Skip("no xz tool (apt-get install xz-utils)")
	}
	payload := append([]byte("\x7fELF"), bytes.Repeat([]byte("kernel"), 1000)...)
	cmd := exec.Command(xz, "-c", "--check=crc32")
	cmd.Stdin = bytes.NewReader(payload)
	comp, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	bz := slices.Concat([]byte("MZ setup code..."), comp, []byte("trailing junk after the payload"))
	got, err := ExtractVmlinux(bz)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("extracted %d bytes, want the %d-byte payload", len(got), len(payload))
	}
	if _, err := ExtractVmlinux([]byte("MZ no payload")); err == nil {
		t.Error("no error for an image without XZ")
	}
	cmd = exec.Command(xz, "-c")
	cmd.Stdin = strings.NewReader("not an ELF")
	comp, _ = cmd.Output()
	if _, err := ExtractVmlinux(comp); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("non-ELF payload: error %v", err)
	}
}

// fakeQemu writes a shell script that stands in for qemu: it prints body's
// output and exits.
func fakeQemu(t *testing.T, body string) string {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	p := filepath.Join(t.TempDir(), "qemu")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBootOutcome(t *testing.T) {
	topo := Topology{2, 1, 256 * hw.MiB}
	for _, tc := range []struct {
		name, script string
		timeout      time.Duration
		code         int
		sentinel     bool
		timedOut     bool
		panicked     bool
		results      int
	}{
		{"pass", `printf 'vmtest: guest up\r\nVMTEST-RESULT topology 0 1.5\r\nVMTEST-EXIT 0\r\n'`, 10 * time.Second, 0, true, false, false, 1},
		{"tests fail", `echo 'VMTEST-RESULT a 0 1'; echo 'VMTEST-RESULT b 1 2'; echo 'VMTEST-EXIT 1'`, 10 * time.Second, 1, true, false, false, 2},
		{"panic", `echo '[ 1.0] Kernel panic - not syncing: Attempted to kill init!'; exit 0`, 10 * time.Second, ExitNoSentinel, false, false, true, 0},
		{"timeout", `echo 'vmtest: guest up'; exec sleep 30`, 300 * time.Millisecond, ExitTimeout, false, true, false, 0},
		// The sentinel is in but qemu hangs on: killed after AfterSentinel, the code stands.
		{"hang after sentinel", `echo 'VMTEST-EXIT 3'; exec sleep 30`, 10 * time.Second, 3, true, false, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var console bytes.Buffer
			out, err := Boot{
				Topology: topo, Kernel: "/k", Initrd: "/i", Qemu: fakeQemu(t, tc.script),
				Timeout: tc.timeout, Console: &console, Prefix: "[x] ", AfterSentinel: 200 * time.Millisecond,
			}.Run(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if out.Code != tc.code || out.Sentinel != tc.sentinel || out.TimedOut != tc.timedOut || out.Panicked != tc.panicked || len(out.Results) != tc.results {
				t.Errorf("outcome %+v, want code %d sentinel %v timedOut %v panicked %v, %d results",
					out, tc.code, tc.sentinel, tc.timedOut, tc.panicked, tc.results)
			}
			for _, line := range strings.Split(strings.TrimSuffix(console.String(), "\n"), "\n") {
				if !strings.HasPrefix(line, "[x] ") || strings.HasSuffix(line, "\r") {
					t.Errorf("console line %q: want the prefix and no CR", line)
				}
			}
		})
	}
}

// A guest that never reaches /init (qemu hung in the firmware) is killed
// at BootTimeout, long before Timeout, and reported NoBoot.
func TestBootNeverUp(t *testing.T) {
	start := time.Now()
	out, err := Boot{
		Topology: Topology{2, 1, 256 * hw.MiB}, Kernel: "/k", Initrd: "/i",
		Qemu: fakeQemu(t, "echo 'SeaBIOS (version 1.16.2)'; exec sleep 30"), Timeout: time.Minute,
		BootTimeout: 300 * time.Millisecond,
	}.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !out.NoBoot || out.TimedOut || out.Code != ExitNoSentinel || out.Sentinel {
		t.Errorf("outcome %+v, want NoBoot with code %d", out, ExitNoSentinel)
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Errorf("took %v: the boot watchdog did not fire", el)
	}
}

func TestBootInterrupted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	out, err := Boot{
		Topology: Topology{2, 1, 256 * hw.MiB}, Kernel: "/k", Initrd: "/i",
		Qemu: fakeQemu(t, "exec sleep 30"), Timeout: time.Minute,
	}.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !out.Interrupted || out.Code != ExitInterrupted || out.TimedOut {
		t.Errorf("outcome %+v, want interrupted with code %d", out, ExitInterrupted)
	}
}
