package e2e

// Nothing hangs: a worker's memory stays served whatever happens to its
// connection, to its vcore or to core, and a fault nobody can serve gets a
// definite outcome (SIGBUS), never a wait forever.
//
// The workers here are this test binary, re-executed as a subsystem's
// command with $VCORED_E2E_HELPER naming what it does (see init): they use
// vcore/client like any worker and write their verdict to a file.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/vcore/client"
)

const (
	hangHelperEnv    = "VCORED_E2E_HANG_HELPER" // the helper's mode
	hangHelperResult = "VCORED_E2E_HANG_RESULT" // where it writes its verdict ("ok" or the error)
	helperDir        = "VCORED_E2E_DIR"         // where it finds its gate files and writes markers
	helperPages      = "VCORED_E2E_PAGES"       // pages per dataspace
	hangSeed         = 7                        // the pattern seed of every dataspace here
	verdictWait      = 120 * time.Second        // generous: a hang fails the test, it never blocks it
	helperGrace      = 60 * time.Second         // a helper gives up (and says so) after this
	gateName         = "go"                     // gate file: start touching
	gate2Name        = "go2"                    // second gate: touch again
	attachedName     = "attached"               // marker: the helper attached its dataspaces
	round1Name       = "round1"                 // marker: the first round verified
)

func init() {
	mode := os.Getenv(hangHelperEnv)
	if mode == "" {
		return
	}
	err := runHangHelper(mode)
	msg := "ok"
	if err != nil {
		msg = err.Error()
	}
	// Written whole, then renamed: the test never reads half a verdict.
	tmp := os.Getenv(hangHelperResult) + ".tmp"
	werr := os.WriteFile(tmp, []byte(msg), 0o644)
	if werr == nil {
		werr = os.Rename(tmp, os.Getenv(hangHelperResult))
	}
	if werr != nil {
		fmt.Fprintln(os.Stderr, "helper:", werr)
		os.Exit(1)
	}
	os.Exit(0)
}

var hangSink byte

func helperPath(name string) string { return filepath.Join(os.Getenv(helperDir), name) }

func mark(name string) error { return os.WriteFile(helperPath(name), nil, 0o644) }

// waitGate waits for a gate file the test creates.
func waitGate(name string) error {
	deadline := time.Now().Add(helperGrace)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(helperPath(name)); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("gate %s never opened", name)
}

func runHangHelper(mode string) error {
	ctx, cancel := context.WithTimeout(context.Background(), helperGrace)
	defer cancel()
	pages, _ := strconv.Atoi(os.Getenv(helperPages))
	if pages <= 0 {
		pages = 64
	}
	size := pages * os.Getpagesize()
	switch mode {
	case "drop":
		// Attach, close the connection, then use the memory.
		m, err := client.Attach(ctx, "local", size)
		if err != nil {
			return err
		}
		client.Disconnect()
		if err := mark(attachedName); err != nil {
			return err
		}
		if err := waitGate(gateName); err != nil {
			return err
		}
		return verifyHangPages("local", m.Bytes())

	case "rounds":
		// Attach a local and a core-owned dataspace; verify every page
		// when the first gate opens, drop the pages and verify them again
		// when the second does.
		var maps []*client.Mapping
		for _, name := range []string{"local", "shared"} {
			m, err := client.Attach(ctx, name, size)
			if err != nil {
				return err
			}
			maps = append(maps, m)
		}
		if err := mark(attachedName); err != nil {
			return err
		}
		for round, gate := range []string{gateName, gate2Name} {
			if err := waitGate(gate); err != nil {
				return err
			}
			for _, m := range maps {
				if round > 0 {
					if err := linux.Madvise(m.Bytes(), linux.MADV_DONTNEED); err != nil {
						return err
					}
				}
				if err := verifyHangPages(m.Name(), m.Bytes()); err != nil {
					return fmt.Errorf("round %d: %w", round+1, err)
				}
			}
			if round == 0 {
				if err := mark(round1Name); err != nil {
					return err
				}
			}
		}
		return nil

	case "unknown":
		// Register memory on the process's uffd behind the vcore's back,
		// then touch it: a fault outside every region the vcore knows.
		if _, err := client.Attach(ctx, "local", os.Getpagesize()); err != nil {
			return err
		}
		fd, err := ownUffd()
		if err != nil {
			return err
		}
		mem, err := linux.Mmap(os.Getpagesize(), linux.PROT_READ|linux.PROT_WRITE, linux.MAP_PRIVATE|linux.MAP_ANONYMOUS)
		if err != nil {
			return err
		}
		if _, err := linux.NewUffd(fd).Register(uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), linux.UFFDIO_REGISTER_MODE_MISSING); err != nil {
			return err
		}
		// UFFDIO_POISON makes the access itself fault (a recoverable panic
		// here); the tgkill fallback sends a signal this process catches.
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGBUS)
		faulted := make(chan string, 1)
		go func() {
			runtime.LockOSThread()
			debug.SetPanicOnFault(true)
			defer func() { faulted <- fmt.Sprint(recover()) }()
			hangSink += mem[0]
		}()
		select {
		case r := <-faulted:
			return fmt.Errorf("sigbus: the access faulted: %s", r)
		case s := <-sigs:
			return fmt.Errorf("sigbus: got %v", s)
		case <-time.After(helperGrace):
			return errors.New("hang: the access to memory no region backs is still pending")
		}

	case "forwarder":
		// Many threads fault on a core-owned dataspace at once.
		m, err := client.Attach(ctx, "shared", size)
		if err != nil {
			return err
		}
		if err := mark(attachedName); err != nil {
			return err
		}
		if err := waitGate(gateName); err != nil {
			return err
		}
		runtime.GOMAXPROCS(pages + 8) // a thread blocked in a fault keeps its P
		b := m.Bytes()
		ps := os.Getpagesize()
		var wg sync.WaitGroup
		touched := make([]byte, pages)
		for i := range pages {
			wg.Go(func() {
				runtime.LockOSThread()
				touched[i] = b[i*ps]
			})
		}
		wg.Wait()
		return verifyHangPages("shared", b)

	case "late":
		// Attach and verify once the gate opens.
		if err := waitGate(gate2Name); err != nil {
			return err
		}
		m, err := client.Attach(ctx, "local", size)
		if err != nil {
			return err
		}
		return verifyHangPages("local", m.Bytes())
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}

func verifyHangPages(name string, b []byte) error {
	if err := content.VerifyPattern(b, hangSeed, 0); err != nil {
		return fmt.Errorf("dataspace %s: %w", name, err)
	}
	return nil
}

// ownUffd finds the userfaultfd vcore/client opened in this process.
func ownUffd() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1, err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ok, _ := linux.IsUffd(fd); ok {
			return fd, nil
		}
	}
	return -1, errors.New("no userfaultfd in /proc/self/fd")
}

// hangHelperSubsystem is a [[subsystem]] running this test binary as helper
// mode, with a local patterned dataspace "local" and, if shared, the
// core-owned "shared". (A Go worker needs async preemption to reconnect
// while a thread is blocked in a fault: with one CPU, that thread holds the
// only P until SIGURG preempts it.)
func (c *cluster) hangHelperSubsystem(name, mode string, pages int, shared bool) string {
	memory, extraEnv := "96MiB", ""
	if mode == "forwarder" {
		memory = "256MiB" // a thread per page: kernel and signal stacks
		// Without async preemption, a Go thread blocked in a fault is not
		// interrupted by SIGURG every 10 ms (raising its fault again: a
		// storm of re-raised faults with 640 threads); without a collector
		// no stop-the-world waits for the blocked threads.
		extraEnv = `, GODEBUG = "asyncpreemptoff=1", GOGC = "off"`
	}
	s := fmt.Sprintf(`
[[subsystem]]
name = %q
command = [%q, "-test.run=^$"]
memory = %q
restart = "never"
env = { %s = %q, %s = %q, %s = %q, %s = "%d"%s }
`, name, os.Args[0], memory, hangHelperEnv, mode, hangHelperResult, c.path(name+".result"), helperDir, c.path(name), helperPages, pages, extraEnv)
	if shared {
		s += "dataspaces = [\"shared\"]\n"
	}
	return s + fmt.Sprintf(`
[[subsystem.dataspace]]
name = "local"
size = "16MiB"
content = "pattern"
seed = %d
`, hangSeed)
}

// sharedDataspace is core's [[dataspace]] "shared", patterned like local.
var sharedDataspace = fmt.Sprintf(`
[[dataspace]]
name = "shared"
size = "16MiB"
content = "pattern"
seed = %d
`, hangSeed)

// helperDirs makes the helpers' marker directories.
func (c *cluster) helperDirs(names ...string) {
	for _, n := range names {
		if err := os.MkdirAll(c.path(n), 0o755); err != nil {
			c.t.Fatal(err)
		}
	}
}

func (c *cluster) openGate(helper, gate string) {
	if err := os.WriteFile(filepath.Join(c.path(helper), gate), nil, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) waitMarker(helper, marker string) {
	c.t.Helper()
	eventually(c.t, verdictWait, helper+" "+marker, func() (bool, string) {
		if r, err := os.ReadFile(c.path(helper + ".result")); err == nil {
			return false, "the helper ended: " + string(r)
		}
		_, err := os.Stat(filepath.Join(c.path(helper), marker))
		return err == nil, fmt.Sprint(err)
	})
}

// verdict waits for a helper's verdict.
func (c *cluster) verdict(helper string) string {
	c.t.Helper()
	var v string
	eventually(c.t, verdictWait, helper+"'s verdict", func() (bool, string) {
		b, err := os.ReadFile(c.path(helper + ".result"))
		v = string(b)
		return err == nil, fmt.Sprint(err)
	})
	return v
}

func (c *cluster) wantOK(helper string) {
	c.t.Helper()
	if v := c.verdict(helper); v != "ok" {
		c.t.Fatalf("%s: %s", helper, v)
	}
}

// TestHangConnectionDropped: a worker closes its connection to the vcore,
// then touches the memory it attached: every page is served (and verified).
// The connection is a control channel, not the region's lifetime.
func TestHangConnectionDropped(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	c.helperDirs("w")
	c.startVCore(0, c.vcoreConfig(0, c.hangHelperSubsystem("w", "drop", 256, false)))
	c.waitMarker("w", attachedName)
	// Give the vcore a moment to see the connection end before the worker
	// touches (the test holds either way; this makes it sharper).
	time.Sleep(300 * time.Millisecond)
	c.openGate("w", gateName)
	c.wantOK("w")
	if st := pagerStats(t, c.vcoreSocket(0), "local"); st.Pages < 256 || st.Errors != 0 {
		t.Errorf("vcore pager: %+v, want >= 256 pages served and no errors", st)
	}
}

// TestHangFaultOutsideEveryRegion: a worker registers memory on its uffd
// behind the vcore's back and touches it. The fault is in no region: the
// worker gets SIGBUS (not a hang, not a zero page), and the vcore says so
// with pid, address and uffd.
func TestHangFaultOutsideEveryRegion(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	c.helperDirs("w")
	v := c.startVCore(0, c.vcoreConfig(0, c.hangHelperSubsystem("w", "unknown", 1, false)))
	start := time.Now()
	got := c.verdict("w")
	if !strings.HasPrefix(got, "sigbus") {
		t.Fatalf("worker: %s, want SIGBUS", got)
	}
	s, _ := subsystem(t, c.vcoreSocket(0), "w")
	t.Logf("worker after %v: %s", time.Since(start).Round(time.Millisecond), got)
	var line string
	for l := range strings.SplitSeq(v.log.String(), "\n") {
		if strings.Contains(l, "SIGBUS to the worker") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("no SIGBUS warning in the vcore's log")
	}
	for _, want := range []string{"level=WARN", "addr=0x", "uffd=", "pid="} {
		if !strings.Contains(line, want) {
			t.Errorf("SIGBUS log line lacks %q: %s", want, line)
		}
	}
	if len(s.Pids) == 1 && !strings.Contains(line, fmt.Sprintf("pid=%d", s.Pids[0])) {
		t.Errorf("SIGBUS log line does not name pid %d: %s", s.Pids[0], line)
	}
}

// TestFailoverRestart: core, the vcore, or both are killed with -9 while a
// worker has a local and a core-owned dataspace attached; its faults (made
// while a daemon is dead) are served once the dead ones are restarted, and
// the restarted daemons serve the next round too: every page verified.
func TestFailoverRestart(t *testing.T) {
	for _, kill := range []string{"both", "vcore", "core"} {
		t.Run(kill, func(t *testing.T) {
			c := newCluster(t)
			coreCfg := strings.Replace(c.coreConfig(sharedDataspace), `orphan_grace = "30s"`, `orphan_grace = "10m"`, 1)
			core := c.startCore(coreCfg)
			c.helperDirs("w")
			pages := 256
			vcfg := c.vcoreConfig(0, c.hangHelperSubsystem("w", "rounds", pages, true))
			v := c.startVCore(0, vcfg)
			c.waitMarker("w", attachedName)

			if kill != "vcore" {
				c.signal(core, syscall.SIGKILL)
			}
			if kill != "core" {
				c.signal(v, syscall.SIGKILL)
			}
			// The worker faults while a daemon is dead.
			c.openGate("w", gateName)
			time.Sleep(500 * time.Millisecond)
			if kill != "vcore" {
				c.startCore(coreCfg)
			}
			if kill != "core" {
				c.startVCore(0, vcfg)
			}
			c.waitMarker("w", round1Name)
			eventually(t, 20*time.Second, "partition live", func() (bool, string) {
				p := partition(t, c)
				return p.State == "live", p.State
			})
			// While the worker waits at its second gate, the vcore holds
			// its uffd once, whether it came back from core, from the
			// worker, or both.
			if d := get[api.Pager](t, c.vcoreSocket(0), "/v1/pager"); d.Uffds != 1 {
				t.Errorf("vcore holds %d uffds while the worker waits, want 1", d.Uffds)
			}
			// The second round is served by the restarted daemons.
			c.openGate("w", gate2Name)
			c.wantOK("w")
			// Never twice (the worker may have exited by now: then none).
			if d := get[api.Pager](t, c.vcoreSocket(0), "/v1/pager"); d.Uffds > 1 {
				t.Errorf("vcore holds %d uffds after the second round, want at most 1", d.Uffds)
			}
		})
	}
}

// TestHangCoreStopped: with core stopped (SIGSTOP) while many forwarded
// faults are in flight, the vcore answers its status API, and a worker
// starting meanwhile attaches and is served; after SIGCONT the forwarded
// faults are served too.
func TestHangCoreStopped(t *testing.T) {
	c := newCluster(t)
	core := c.startCore(c.coreConfig(sharedDataspace))
	c.helperDirs("fwd", "late")
	threads := 640 // enough Forward frames (~600 B of socket buffer each) to fill the 208 KiB buffer to core
	if os.Getenv("VMTEST") != "" {
		// The qemu guests' nodes are small (the helper, with no collector,
		// outgrew its 256 MiB there); fewer threads still stop core with
		// forwards in flight, not always a full socket buffer.
		threads = 256
	}
	c.startVCore(0, c.vcoreConfig(0, c.hangHelperSubsystem("fwd", "forwarder", threads, true)+
		c.hangHelperSubsystem("late", "late", 64, false)))
	c.waitMarker("fwd", attachedName)

	if err := core.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped, stoppedAt := true, time.Now()
	defer func() {
		if stopped {
			core.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	c.openGate("fwd", gateName)
	info := func(path string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var out any
		return api.NewClient(c.vcoreSocket(0)).Get(ctx, path, &out)
	}
	// Wait until the faults are forwarded (the status API must answer
	// meanwhile).
	deadline := time.Now().Add(verdictWait)
	for {
		var p api.Pager
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := api.NewClient(c.vcoreSocket(0)).Get(ctx, "/v1/pager", &p)
		cancel()
		if err != nil {
			t.Fatalf("/v1/pager with core stopped: %v", err)
		}
		var fwd uint64
		for _, d := range p.Dataspaces {
			if d.Dataspace == "shared" {
				fwd = d.Forwarded
			}
		}
		if fwd >= uint64(threads)*3/4 {
			t.Logf("%d faults forwarded to the stopped core", fwd)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d faults forwarded", fwd)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // the forwards reach the socket
	for _, path := range []string{"/v1/info", "/v1/pager", "/v1/subsystems"} {
		if err := info(path); err != nil {
			t.Errorf("%s with core stopped: %v", path, err)
		}
	}
	// A worker starting now attaches and is served.
	c.openGate("late", gate2Name)
	lateDeadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(c.path("late.result")); err == nil {
			if string(b) != "ok" {
				t.Fatalf("late worker with core stopped: %s", b)
			}
			break
		}
		if time.Now().After(lateDeadline) {
			t.Fatal("a worker could not attach while core was stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Core stays stopped a few seconds, with the forwards in flight.
	time.Sleep(time.Until(stoppedAt.Add(3 * time.Second)))
	if err := info("/v1/info"); err != nil {
		t.Errorf("/v1/info with core stopped: %v", err)
	}
	if err := rawGet(c.vcoreSocket(0), "/metrics"); err != nil {
		t.Errorf("/metrics with core stopped: %v", err)
	}
	core.cmd.Process.Signal(syscall.SIGCONT)
	stopped = false
	c.wantOK("fwd")
}

// rawGet fetches a non-JSON document (/metrics) within 3 s.
func rawGet(socket, path string) error {
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	resp, err := hc.Get("http://vcored" + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", path, resp.Status)
	}
	return nil
}
