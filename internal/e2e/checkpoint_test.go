package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/ckpt"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/vcore/client"
)

// ckptHelperEnv names the directory TestCkptHelperProcess talks through.
const ckptHelperEnv = "VCORED_E2E_CKPT_HELPER"

const ckptPages = 2048 // 8 MiB of 4 KiB pages

// ckptVerdict is what the helper writes after verifying a restore.
type ckptVerdict struct {
	Pages int    `json:"pages"`
	Error string `json:"error,omitempty"`
	Pid   int    `json:"pid"`
}

// ckptAttached is what the helper writes once attached when it is to wait
// before verifying (restore prefetch).
type ckptAttached struct {
	Pid  int    `json:"pid"`
	Addr uint64 `json:"addr"`
}

// ckptExpected is the seed page p holds after both rounds of writes: every
// page seed 1, then every tenth seed 2.
func ckptExpected(p int) uint64 {
	if p%10 == 0 {
		return 2
	}
	return 1
}

// TestCkptHelperProcess is not a test. Run by a vcore as the command of a
// subsystem with a persistent dataspace "mem", it attaches it, then:
// if $DIR/verify exists, checks every page (ckptExpected) and writes
// $DIR/verdict-<pid>.json (with $DIR/verify-wait, it first writes
// $DIR/attached-<pid>.json and waits for $DIR/go-verify); otherwise fills every page with pattern seed 1,
// writes $DIR/written1, waits for $DIR/go2, writes seed 2 over every tenth
// page (page 0 twice), writes $DIR/written2. Then it holds the mapping
// until killed.
func TestCkptHelperProcess(t *testing.T) {
	dir := os.Getenv(ckptHelperEnv)
	if dir == "" {
		t.Skip("helper process only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ps := os.Getpagesize()
	m, err := client.Attach(ctx, "mem", ckptPages*ps)
	if err != nil {
		writeJSON(t, filepath.Join(dir, fmt.Sprintf("verdict-%d.json", os.Getpid())), ckptVerdict{Error: err.Error(), Pid: os.Getpid()})
		t.Fatal(err)
	}
	mem := m.Bytes()
	fill := func(p int, seed uint64) {
		content.Pattern(seed).Fill(mem[p*ps:(p+1)*ps], uint64(p*ps))
	}
	if _, err := os.Stat(filepath.Join(dir, "verify")); err == nil {
		if _, err := os.Stat(filepath.Join(dir, "verify-wait")); err == nil {
			// Tell where the region is, touch nothing until go-verify.
			writeJSON(t, filepath.Join(dir, fmt.Sprintf("attached-%d.json", os.Getpid())),
				ckptAttached{Pid: os.Getpid(), Addr: uint64(uintptr(unsafe.Pointer(&mem[0])))})
			for {
				if _, err := os.Stat(filepath.Join(dir, "go-verify")); err == nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		v := ckptVerdict{Pid: os.Getpid()}
		for p := range ckptPages {
			if err := content.VerifyPattern(mem[p*ps:(p+1)*ps], ckptExpected(p), uint64(p*ps)); err != nil {
				v.Error = fmt.Sprintf("page %d: %v", p, err)
				break
			}
			v.Pages++
		}
		writeJSON(t, filepath.Join(dir, fmt.Sprintf("verdict-%d.json", os.Getpid())), v)
	} else {
		for p := range ckptPages {
			fill(p, 1)
		}
		touchFile(t, filepath.Join(dir, "written1"))
		for {
			if _, err := os.Stat(filepath.Join(dir, "go2")); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		for p := 0; p < ckptPages; p += 10 {
			fill(p, 3) // overwritten below: still one page in the layer
			fill(p, 2)
		}
		touchFile(t, filepath.Join(dir, "written2"))
	}
	for {
		time.Sleep(time.Hour)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	b, _ := json.Marshal(v)
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func touchFile(t *testing.T, path string) {
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// checkpointCLI runs `vcored checkpoint --json` and decodes its answer.
func checkpointCLI(t *testing.T, socket, sub string) (api.CheckpointResult, error) {
	t.Helper()
	out, err := exec.Command(vcoredBin, "checkpoint", "--vcore", socket, "--json", sub).CombinedOutput()
	if err != nil {
		return api.CheckpointResult{}, fmt.Errorf("vcored checkpoint: %v: %s", err, out)
	}
	var res api.CheckpointResult
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("vcored checkpoint output %q: %v", out, err)
	}
	return res, nil
}

// TestCheckpointRestore: a worker writes pattern pages into a persistent
// dataspace; a checkpoint stores them; it rewrites a tenth of them and a
// second checkpoint stores only those; the worker is killed and restarted,
// attaches again and finds every page as it left it.
func TestCheckpointRestore(t *testing.T) {
	if !linux.HaveWPAsync() {
		t.Skip("kernel lacks async write protection (Linux 6.7); TestCheckpointRestoreSyncWP covers it")
	}
	checkpointRestore(t)
}

// TestCheckpointRestoreSyncWP: the same with the pager's sync write
// tracking (WP faults), what kernels before 6.7 use.
func TestCheckpointRestoreSyncWP(t *testing.T) {
	t.Setenv("VCORED_SYNC_WRITE_TRACKING", "1")
	checkpointRestore(t)
}

func checkpointRestore(t *testing.T) {
	checkpointRestoreWith(t, false)
}

// TestCheckpointRestorePrefetch: the same with restore_prefetch = true:
// after the restart the vcore maps the pages in the first run's touch
// order before the worker touches any (the worker's pagemap shows them
// all present while it waits), the worker then reads every page without a
// single fault, and every page is right.
func TestCheckpointRestorePrefetch(t *testing.T) {
	if !linux.HaveWPAsync() {
		t.Skip("kernel lacks async write protection (Linux 6.7)")
	}
	checkpointRestoreWith(t, true)
}

func checkpointRestoreWith(t *testing.T, prefetch bool) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	dir := c.path("ckpt-helper")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sub := fmt.Sprintf(`
[[subsystem]]
name = "p"
command = [%q, "-test.run=^TestCkptHelperProcess$", "-test.count=1"]
memory = "160MiB" # the helper is this test binary: its page cache counts too
restart = "on-failure"
backoff_initial = "100ms"
env = { %s = %q, VCORED_BIN = %q }
[[subsystem.dataspace]]
name = "mem"
size = "8MiB"
persistent = true
`, os.Args[0], ckptHelperEnv, dir, vcoredBin)
	if prefetch {
		sub += "restore_prefetch = true\n"
	}
	vc := c.startVCore(0, c.vcoreConfig(0, sub+sleeper))
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(c.path("vcore0-state"), "logs", "p.log"))
			t.Logf("--- subsystem p's log:\n%s", b)
		}
	})
	sock := c.vcoreSocket(0)
	wait := func(name string) {
		eventually(t, 60*time.Second, "helper file "+name, func() (bool, string) {
			_, err := os.Stat(filepath.Join(dir, name))
			return err == nil, fmt.Sprint(err)
		})
	}
	wait("written1")

	res, err := checkpointCLI(t, sock, "p")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Dataspaces) != 1 || !res.Dataspaces[0].Attached {
		t.Fatalf("first checkpoint: %+v", res)
	}
	d := res.Dataspaces[0]
	if d.Pages != ckptPages || d.DataPages != ckptPages || d.Layers != 1 {
		t.Fatalf("first checkpoint stored %+v, want all %d pages in one layer", d, ckptPages)
	}
	if want := filepath.Join(c.path("vcore0-state"), "images", "p", "mem"); d.Image != want {
		t.Errorf("image at %s, want %s", d.Image, want)
	}
	checkTimes(t, res, "checkpoint 1")
	// Status says which write tracking is in use.
	wantTracking := "async"
	if os.Getenv("VCORED_SYNC_WRITE_TRACKING") == "1" || !linux.HaveWPAsync() {
		wantTracking = "sync"
	}
	if s, _ := subsystem(t, sock, "p"); s.Tracking["mem"] != wantTracking {
		t.Errorf("status tracking %v, want mem: %s", s.Tracking, wantTracking)
	}
	t.Logf("checkpoint 1: frozen %s, total %s, %d pages (%d copied frozen), %d bytes",
		time.Duration(res.FrozenNS), time.Duration(res.TotalNS), res.Pages, d.CopiedFrozen, res.Bytes)
	// The worker touched its pages in order, one fault each.
	order, err := ckpt.ReadTouchOrder(d.Image)
	if err != nil || len(order) != ckptPages || d.TouchPages != ckptPages || !slices.IsSorted(order) {
		t.Fatalf("touch order: %d pages (reported %d), sorted %v, %v; want the %d pages in order",
			len(order), d.TouchPages, slices.IsSorted(order), err, ckptPages)
	}

	touchFile(t, filepath.Join(dir, "go2"))
	wait("written2")
	res, err = checkpointCLI(t, sock, "p")
	if err != nil {
		t.Fatal(err)
	}
	d = res.Dataspaces[0]
	if d.Pages != (ckptPages+9)/10 || d.Layers != 2 {
		t.Fatalf("second checkpoint stored %+v, want only the %d rewritten pages in a second layer", d, (ckptPages+9)/10)
	}
	// The worker waits, writing nothing, while the checkpoint is taken:
	// its pages were copied before the freeze (pre-copy), none while
	// frozen.
	if d.CopiedFrozen != 0 || d.WrittenFrozen {
		t.Errorf("second checkpoint of an idle worker: %d pages copied while frozen (written frozen %v), want 0",
			d.CopiedFrozen, d.WrittenFrozen)
	}
	checkTimes(t, res, "checkpoint 2")
	t.Logf("checkpoint 2: frozen %s, total %s, %d pages, %d bytes", time.Duration(res.FrozenNS), time.Duration(res.TotalNS), res.Pages, res.Bytes)
	// The CLI's table says both times.
	out, err := exec.Command(vcoredBin, "checkpoint", "--vcore", sock, "p").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "subsystem p: frozen ") || !strings.Contains(string(out), ", total ") {
		t.Fatalf("vcored checkpoint: %v: %s", err, out)
	}

	// Checkpoints with nothing written add empty layers (the CLI's
	// above was the third); past 8 layers the image is compacted to 4.
	compacted := false
	for i := 4; i <= 9; i++ {
		res, err := checkpointCLI(t, sock, "p")
		if err != nil {
			t.Fatal(err)
		}
		d := res.Dataspaces[0]
		if d.Pages != 0 {
			t.Fatalf("checkpoint %d of an idle worker stored %d pages", i, d.Pages)
		}
		if d.Compacted {
			compacted = true
			if d.Layers != 4 {
				t.Fatalf("checkpoint %d compacted to %d layers, want 4", i, d.Layers)
			}
		} else if d.Layers != i {
			t.Fatalf("checkpoint %d: %d layers", i, d.Layers)
		}
	}
	if !compacted {
		t.Fatal("9 layers and no compaction")
	}

	// Bad requests change nothing.
	if _, err := checkpointCLI(t, sock, "nosuch"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("checkpoint of an unknown subsystem: %v", err)
	}
	if _, err := checkpointCLI(t, sock, "sleeper"); err == nil || !strings.Contains(err.Error(), "no persistent dataspace") {
		t.Errorf("checkpoint of a subsystem without persistent dataspaces: %v", err)
	}

	// Kill the worker; the supervisor restarts it; it attaches again and
	// verifies every page, restored from the image.
	touchFile(t, filepath.Join(dir, "verify"))
	if prefetch {
		touchFile(t, filepath.Join(dir, "verify-wait"))
	}
	s, ok := subsystem(t, sock, "p")
	if !ok || len(s.Pids) == 0 {
		t.Fatalf("subsystem p: %+v", s)
	}
	old := s.Pids[0]
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var faultsBefore uint64
	if prefetch {
		faultsBefore = restoredByPrefetch(t, vc, sock, dir, old)
	}
	var v ckptVerdict
	eventually(t, 120*time.Second, "the restarted worker's verdict", func() (bool, string) {
		ents, _ := filepath.Glob(filepath.Join(dir, "verdict-*.json"))
		for _, e := range ents {
			b, err := os.ReadFile(e)
			if err != nil {
				continue
			}
			if err := json.Unmarshal(b, &v); err == nil {
				return true, ""
			}
		}
		return false, fmt.Sprint(ents)
	})
	if v.Error != "" || v.Pages != ckptPages {
		t.Fatalf("restored worker (pid %d, was %d): verified %d of %d pages: %s", v.Pid, old, v.Pages, ckptPages, v.Error)
	}
	if v.Pid == old {
		t.Fatalf("verdict from the killed worker %d", old)
	}
	// The restored pages came through the vcore's pager.
	st := pagerStats(t, sock, "mem")
	if st.Errors != 0 {
		t.Errorf("pager errors on mem: %+v", st)
	}
	if prefetch && st.Faults != faultsBefore {
		t.Errorf("the restored worker's reads of prefetched pages raised %d faults", st.Faults-faultsBefore)
	}
}

// checkTimes checks that a checkpoint reports its frozen time and its
// total time (the layer written and committed after the thaw), no less.
func checkTimes(t *testing.T, res api.CheckpointResult, what string) {
	t.Helper()
	if res.FrozenNS <= 0 || res.TotalNS < res.FrozenNS {
		t.Errorf("%s: frozen %d ns, total %d ns: want 0 < frozen <= total", what, res.FrozenNS, res.TotalNS)
	}
}

// restoredByPrefetch waits for the restarted worker (not pid old) to
// attach and checks, while it touches nothing, that the restore prefetch
// maps every page: the worker's pagemap shows them present. Then it lets
// the worker verify. It returns the faults served on the dataspace so far.
func restoredByPrefetch(t *testing.T, vc *daemon, sock, dir string, old int) uint64 {
	t.Helper()
	var at ckptAttached
	eventually(t, 120*time.Second, "the restarted worker's attach", func() (bool, string) {
		ents, _ := filepath.Glob(filepath.Join(dir, "attached-*.json"))
		for _, e := range ents {
			b, err := os.ReadFile(e)
			if err == nil && json.Unmarshal(b, &at) == nil && at.Pid != old {
				return true, ""
			}
		}
		return false, fmt.Sprint(ents)
	})
	ps := uint64(os.Getpagesize())
	pm, err := linux.OpenPagemap(at.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	var present []uint64
	eventually(t, 120*time.Second, "every page present before the worker touches one", func() (bool, string) {
		present, err = pm.PresentPages(uintptr(at.Addr), uintptr(at.Addr+ckptPages*ps))
		return err == nil && len(present) == ckptPages, fmt.Sprintf("%d of %d pages present (%v)", len(present), ckptPages, err)
	})
	eventually(t, 60*time.Second, "restore prefetch done in the log", func() (bool, string) {
		return strings.Contains(vc.log.String(), "restore prefetch done"), ""
	})
	for l := range strings.SplitSeq(vc.log.String(), "\n") {
		if strings.Contains(l, "restore prefetch") {
			t.Log(l)
		}
	}
	st := pagerStats(t, sock, "mem")
	if st.Prefetched < ckptPages {
		t.Errorf("pager stats: %d pages prefetched, want the %d of the order", st.Prefetched, ckptPages)
	}
	touchFile(t, filepath.Join(dir, "go-verify"))
	return st.Faults
}

// TestCheckpointRootOnly: a user other than root cannot checkpoint (the
// vcore's socket admits root only; the handler checks the peer's uid again,
// see vcore's TestCheckpointHandlerNeedsRoot), and root gets past both.
func TestCheckpointRootOnly(t *testing.T) {
	c := newCluster(t)
	c.startCore(c.coreConfig(""))
	v := c.startVCore(0, c.vcoreConfig(0, sleeper))
	os.Chmod(c.dir, 0o755)
	os.Chmod(c.vcoreSocket(0), 0o666) // the file mode is not what is tested
	cmd := exec.Command(vcoredBin, "checkpoint", "--vcore", c.vcoreSocket(0), "sleeper")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || strings.Contains(string(out), "400") {
		t.Fatalf("checkpoint as nobody got an answer: %v: %s", err, out)
	}
	eventually(t, 5*time.Second, "refusal logged", func() (bool, string) {
		return strings.Contains(v.log.String(), "refused"), v.log.String()
	})
	// Root gets past the checks (and fails for its own reason: sleeper
	// has no persistent dataspace).
	if _, err := checkpointCLI(t, c.vcoreSocket(0), "sleeper"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("checkpoint as root: %v", err)
	}
}
