package pager_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/pager"
)

// Cross-process tests: the test binary re-executes itself as a WORKER
// (TestHelperWorker: maps regions, creates the uffd, sends it over a
// socketpair, touches and verifies every page) and as a PAGER
// (TestHelperPager: serves a uffd it inherited, until killed).

const (
	envHelper = "VCORED_PAGER_TEST_HELPER" // "worker" or "pager"
	envSpec   = "VCORED_PAGER_TEST_SPEC"   // JSON spec of the helper
)

// workerRegion is one region a helper worker maps.
type workerRegion struct {
	Pages int
	Seed  uint64 // pattern seed; 0 with Zero
	Zero  bool
}

// workerSpec tells the helper worker what to do.
type workerSpec struct {
	Regions []workerRegion
	// ExitAfter: exit(3) this long after starting to touch, whatever
	// the touching thread is doing (blocked in a fault).
	ExitAfter time.Duration
	// Order of the first touch in each region: "" (sequential),
	// "random" (a fixed shuffle) or "strideK" (every K-th page, then the
	// rest in random order).
	Order string
}

// touchOrder lists the page indexes of a region of n pages in the order
// the worker first touches them.
func touchOrder(order string, n int) []int {
	out := make([]int, 0, n)
	switch {
	case order == "random":
		out = rand.New(rand.NewPCG(7, uint64(n))).Perm(n)
	case strings.HasPrefix(order, "stride"):
		k, _ := strconv.Atoi(strings.TrimPrefix(order, "stride"))
		seen := make([]bool, n)
		for i := 0; i < n; i += max(k, 1) {
			out, seen[i] = append(out, i), true
		}
		for _, i := range rand.New(rand.NewPCG(7, uint64(n))).Perm(n) {
			if !seen[i] {
				out = append(out, i)
			}
		}
	default:
		for i := range n {
			out = append(out, i)
		}
	}
	return out
}

// workerHello is what the worker sends along with its uffd.
type workerHello struct {
	Pid   int
	Addrs []uintptr
}

// TestHelperWorker is not a test: it is the worker process of the tests.
func TestHelperWorker(t *testing.T) {
	if os.Getenv(envHelper) != "worker" {
		t.Skip("helper process (worker) for the pager tests")
	}
	err := runWorker()
	conn := workerConn()
	if err != nil {
		conn.Write([]byte("fail: " + err.Error()))
		os.Exit(1)
	}
	conn.Write([]byte("ok"))
	os.Exit(0)
}

var workerConnCache *net.UnixConn

func workerConn() *net.UnixConn {
	if workerConnCache == nil {
		c, err := net.FileConn(os.NewFile(3, "control"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "worker: control socket:", err)
			os.Exit(2)
		}
		workerConnCache = c.(*net.UnixConn)
	}
	return workerConnCache
}

var sink byte

func runWorker() error {
	var spec workerSpec
	if err := json.Unmarshal([]byte(os.Getenv(envSpec)), &spec); err != nil {
		return err
	}
	ps := linux.PageSize()
	mems := make([][]byte, len(spec.Regions))
	hello := workerHello{Pid: os.Getpid()}
	for i, r := range spec.Regions {
		m, err := linux.Mmap(r.Pages*ps, linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE)
		if err != nil {
			return err
		}
		mems[i] = m
		hello.Addrs = append(hello.Addrs, uintptr(unsafe.Pointer(&m[0])))
	}
	u, err := linux.OpenUffd()
	if err != nil {
		return err
	}
	msg, _ := json.Marshal(hello)
	conn := workerConn()
	if _, _, err := conn.WriteMsgUnix(msg, syscall.UnixRights(u.FD()), nil); err != nil {
		return err
	}
	// The worker keeps no copy: its pagers hold the uffd.
	u.Close()
	buf := make([]byte, 16)
	if n, err := conn.Read(buf); err != nil || string(buf[:n]) != "go" {
		return fmt.Errorf("waiting for go: %q, %v", buf[:n], err)
	}
	if spec.ExitAfter > 0 {
		go func() {
			time.Sleep(spec.ExitAfter)
			os.Exit(3)
		}()
	}
	for _, m := range mems { // first touch: one read per page, in spec.Order
		for _, i := range touchOrder(spec.Order, len(m)/ps) {
			sink += m[i*ps]
		}
	}
	for i, r := range spec.Regions {
		m := mems[i]
		if r.Zero {
			for off, b := range m {
				if b != 0 {
					return fmt.Errorf("region %d: byte %#x is %#x in a zero region", i, off, b)
				}
			}
			continue
		}
		if err := content.VerifyPattern(m, r.Seed, 0); err != nil {
			return fmt.Errorf("region %d: %w", i, err)
		}
	}
	return nil
}

// testWorker is the parent's handle on a helper worker.
type testWorker struct {
	t     *testing.T
	spec  workerSpec
	cmd   *exec.Cmd
	conn  *net.UnixConn
	uffd  *linux.Uffd
	addrs []uintptr
	pid   int
}

// startWorker starts a helper worker and receives its uffd and addresses.
func startWorker(t *testing.T, spec workerSpec) *testWorker {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	parent, child := os.NewFile(uintptr(fds[0]), "control"), os.NewFile(uintptr(fds[1]), "control-child")
	c, err := net.FileConn(parent)
	parent.Close()
	if err != nil {
		child.Close()
		t.Fatal(err)
	}
	js, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWorker$")
	cmd.Env = append(os.Environ(), envHelper+"=worker", envSpec+"="+string(js))
	cmd.ExtraFiles = []*os.File{child}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		child.Close()
		c.Close()
		t.Fatal(err)
	}
	child.Close()
	w := &testWorker{t: t, spec: spec, cmd: cmd, conn: c.(*net.UnixConn), pid: cmd.Process.Pid}
	buf := make([]byte, 1<<20)
	oob := make([]byte, syscall.CmsgSpace(4))
	w.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, oobn, _, _, err := w.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		w.kill()
		t.Fatalf("receiving the worker's uffd: %v", err)
	}
	scms, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(scms) != 1 {
		w.kill()
		t.Fatalf("worker sent %d control messages: %v", len(scms), err)
	}
	rights, err := syscall.ParseUnixRights(&scms[0])
	if err != nil || len(rights) != 1 {
		w.kill()
		t.Fatalf("worker sent %d fds: %v", len(rights), err)
	}
	w.uffd = linux.NewUffd(rights[0])
	var hello workerHello
	if err := json.Unmarshal(buf[:n], &hello); err != nil {
		w.kill()
		t.Fatal(err)
	}
	w.addrs = hello.Addrs
	return w
}

// regions describes the worker's regions for a Pager: dataspace "<prefix><i>".
func (w *testWorker) regions(prefix string, forward bool) []pager.Region {
	ps := uintptr(linux.PageSize())
	var out []pager.Region
	for i, r := range w.spec.Regions {
		reg := pager.Region{
			Start: w.addrs[i], Length: uintptr(r.Pages) * ps,
			Dataspace: fmt.Sprintf("%s%d", prefix, i), Forward: forward,
		}
		if !forward {
			if r.Zero {
				reg.Content = content.Zero()
			} else {
				reg.Content = content.Pattern(r.Seed)
			}
		}
		out = append(out, reg)
	}
	return out
}

// start tells the worker to touch its pages.
func (w *testWorker) start() {
	if _, err := w.conn.Write([]byte("go")); err != nil {
		w.t.Fatalf("telling the worker to go: %v", err)
	}
}

// result waits for the worker's verdict and its exit.
func (w *testWorker) result(timeout time.Duration) error {
	defer w.conn.Close()
	buf := make([]byte, 4096)
	w.conn.SetReadDeadline(time.Now().Add(timeout))
	n, err := w.conn.Read(buf)
	if err != nil {
		w.cmd.Process.Kill()
		w.cmd.Wait()
		return fmt.Errorf("no verdict from the worker: %w", err)
	}
	werr := w.cmd.Wait()
	if msg := string(buf[:n]); msg != "ok" {
		return errors.New(msg)
	}
	return werr
}

func (w *testWorker) kill() {
	w.cmd.Process.Kill()
	w.cmd.Wait()
	w.conn.Close()
	if w.uffd != nil {
		w.uffd.Close()
	}
}

// pagerSpec tells the helper pager what to serve.
type pagerSpec struct {
	ID      uint64
	Pid     int
	Regions []pagerRegion
}

type pagerRegion struct {
	Start, Length uintptr
	Seed          uint64
	Forward       bool
}

// TestHelperPager is not a test: it serves the uffd at fd 3 and prints
// "ready", then "pending <addr>" for each forwarded fault, which it never
// resolves. It runs until killed.
func TestHelperPager(t *testing.T) {
	if os.Getenv(envHelper) != "pager" {
		t.Skip("helper process (pager) for the pager tests")
	}
	var spec pagerSpec
	if err := json.Unmarshal([]byte(os.Getenv(envSpec)), &spec); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	p, err := pager.New(pager.Options{Forward: func(f pager.Fault) { fmt.Printf("pending %#x\n", f.Addr) }})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if err := p.AddUffd(spec.ID, linux.NewUffd(3), spec.Pid, true); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	for i, r := range spec.Regions {
		reg := pager.Region{Start: r.Start, Length: r.Length, Dataspace: fmt.Sprint("a", i), Forward: r.Forward}
		if !r.Forward {
			reg.Content = content.Pattern(r.Seed)
		}
		if err := p.AddRegion(spec.ID, reg); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	select {}
}

// startPagerHelper runs TestHelperPager on the uffd u (a dup it consumes).
func startPagerHelper(t *testing.T, u *linux.Uffd, spec pagerSpec) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	f := os.NewFile(uintptr(u.FD()), "uffd") // f now owns the fd
	js, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperPager$")
	cmd.Env = append(os.Environ(), envHelper+"=pager", envSpec+"="+string(js))
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	f.Close()
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper pager said %q", sc.Text())
	}
	return cmd, sc
}

// fdCount counts this process's open fds.
func fdCount(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// leakCheck records fds and goroutines now and, at cleanup, fails the test
// if any are left over. Register it first so that it runs last.
func leakCheck(t *testing.T) {
	t.Helper()
	before := fdCount(t)
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		// Give exited helpers' pipes and poller a moment.
		deadline := time.Now().Add(5 * time.Second)
		for fdCount(t) != before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if after := fdCount(t); after != before {
			ents, _ := os.ReadDir("/proc/self/fd")
			var list []string
			for _, e := range ents {
				l, _ := os.Readlink("/proc/self/fd/" + e.Name())
				list = append(list, e.Name()+"→"+l)
			}
			t.Errorf("fd leak: %d fds before, %d after: %s", before, after, strings.Join(list, " "))
		}
		goleak.VerifyNone(t, ignore)
	})
}

// needUffd skips the test when this host cannot do userfaultfd.
func needUffd(t testing.TB) {
	t.Helper()
	u, err := linux.OpenUffd()
	if err != nil {
		t.Skipf("userfaultfd unavailable: %v", err)
	}
	u.Close()
}

func TestMain(m *testing.M) {
	if os.Getenv(envHelper) == "" {
		// Start the runtime's network poller now, so that its fds are not
		// counted as leaks by the first test that uses a socket.
		if r, w, err := os.Pipe(); err == nil {
			r.SetReadDeadline(time.Now())
			r.Close()
			w.Close()
		}
	}
	os.Exit(m.Run())
}
