package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/hw"
)

// TestCkptPlan: the checkpoint modes run only when named; checkpoint
// names its family (async and sync), restore itself.
func TestCkptPlan(t *testing.T) {
	names := func(c Config) []string {
		var out []string
		for _, r := range Plan(c) {
			out = append(out, r.mode)
		}
		return out
	}
	for _, m := range []string{ModeCheckpoint, ModeCheckpointSync, ModeRestore} {
		if !slices.Contains(ValidModes, m) {
			t.Errorf("--modes does not accept %s", m)
		}
		if slices.Contains(names(Config{Pattern: PatternSeq, FaultAround: 16}), m) {
			t.Errorf("default plan runs %s", m)
		}
	}
	got := names(Config{Pattern: PatternSeq, FaultAround: 16, Modes: []string{ModeCheckpoint, ModeRestore}})
	if want := []string{ModeCheckpoint, ModeCheckpointSync, ModeRestore}; !slices.Equal(got, want) {
		t.Errorf("plan %v, want %v", got, want)
	}
	for _, r := range Plan(Config{Pattern: PatternSeq, Modes: []string{ModeCheckpoint, ModeRestore}}) {
		wantRole := CkptRoleCheckpoint
		if r.mode == ModeRestore {
			wantRole = CkptRoleRestore
		}
		if r.ckpt != wantRole || r.syncTracking != (r.mode == ModeCheckpointSync) {
			t.Errorf("run %s: role %q sync %v", r.mode, r.ckpt, r.syncTracking)
		}
	}
	if got := names(Config{Pattern: PatternSeq, Modes: []string{ModeCheckpointSync}}); !slices.Equal(got, []string{ModeCheckpointSync}) {
		t.Errorf("plan of checkpoint_sync alone: %v", got)
	}
}

func TestCkptSizes(t *testing.T) {
	if s := ckptSizes(false, 0); s.Pages*4096 != 1<<30 || s.TrackPages != CkptTrackPages || s.SmallPages != CkptSmallPages {
		t.Errorf("full sizes %+v", s)
	}
	if s := ckptSizes(true, 0); s.Pages != QuickCkptPages || s.TrackPages != QuickCkptTrackPages || s.SmallPages != QuickCkptSmallPages {
		t.Errorf("quick sizes %+v", s)
	}
	// --ckpt-pages: the others shrink with it, never past it, never to 0.
	for _, n := range []int{1, 7, 2048, 1 << 20} {
		s := ckptSizes(true, n)
		if s.Pages != n || s.TrackPages < 1 || s.TrackPages > n || s.SmallPages < 1 || s.SmallPages > n {
			t.Errorf("ckptSizes(%d) = %+v", n, s)
		}
	}
}

// TestCkptRunConfig: the generated vcore file parses with the daemon's
// parser and declares what the scenario needs.
func TestCkptRunConfig(t *testing.T) {
	layout := Layout{CoreCPU: 0, Partitions: []Partition{{Node: 1, CPUs: hw.NewSet[hw.CPU](2, 3)}}}
	for _, role := range []string{CkptRoleCheckpoint, CkptRoleRestore} {
		r := &CkptRun{DaemonRun: DaemonRun{Dir: "/tmp/x y", Exe: "/bin/vcored", CgroupParent: "b/r1", Pager: config.PagerLocal,
			FaultAround: 1, Layout: layout, Workers: 1, Seed: 9}, Role: role, Sizes: ckptSizes(true, 0)}
		if err := r.Validate(); err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		v, err := config.ParseVCore(r.VCoreConfigPath(0), []byte(r.VCoreTOML()))
		if err != nil {
			t.Fatal(err)
		}
		subs := r.subs()
		if len(v.Subsystems) != len(subs) || (role == CkptRoleRestore) != (len(subs) == 3) {
			t.Fatalf("%s: %d subsystems", role, len(v.Subsystems))
		}
		for i, sc := range v.Subsystems {
			if len(sc.Local) != 2 || sc.Local[0].Name != ckptPersistentDS || !sc.Local[0].Persistent || sc.Local[1].Persistent {
				t.Errorf("%s: dataspaces %+v", sc.Name, sc.Local)
			}
			if got, want := uint64(sc.Local[0].Size), uint64(subs[i].pages)*uint64(os.Getpagesize()); got != want {
				t.Errorf("%s: persistent size %d", sc.Name, got)
			}
			restarts := role == CkptRoleRestore
			if (sc.Restart == config.RestartOnFailure) != restarts || (restarts && sc.MaxRestarts != 1) {
				t.Errorf("%s: restart %v max %d", sc.Name, sc.Restart, sc.MaxRestarts)
			}
			// The third restore subsystem restores with restore_prefetch
			// (and its worker waits for every page instead of touching).
			pf := role == CkptRoleRestore && i == 2
			if sc.Local[0].RestorePrefetch != pf || subs[i].prefetch != pf || (pf && subs[i].pages != r.Sizes.Pages) {
				t.Errorf("%s: restore_prefetch %v, want %v", sc.Name, sc.Local[0].RestorePrefetch, pf)
			}
			cmd := strings.Join(sc.Command, " ")
			if want := fmt.Sprintf("--ckpt-prefetch=%v", pf); !strings.Contains(cmd, want) {
				t.Errorf("%s: command %q lacks %q", sc.Name, cmd, want)
			}
			if role == CkptRoleCheckpoint && !strings.Contains(cmd, fmt.Sprintf("--ckpt-hot-pages %d --", CkptHotPages)) {
				t.Errorf("%s: command %q: hot set", sc.Name, cmd)
			}
			for _, want := range []string{"worker --ckpt-role " + role, "--ckpt-control /tmp/x y/control/" + sc.Name, "--dataspace ckpt,bench", "--seed 9", "--cpu 2"} {
				if !strings.Contains(cmd, want) {
					t.Errorf("%s: command %q lacks %q", sc.Name, cmd, want)
				}
			}
		}
	}
}

// ckptFixture is a run of each checkpoint mode with round numbers.
func ckptFixture() []RunSample {
	// CPU times; the wall times say 4× (what sync tracking is judged by:
	// its faults wait for the pager off the CPU).
	epoch := func(u, tr int64) CkptEpoch {
		return CkptEpoch{Pages: 100, Passes: 10, UntrackedNS: u, TrackedNS: tr, UntrackedWallNS: u, TrackedWallNS: 4 * tr}
	}
	restore := func(pages int, startMS int64, restoreNS, localNS int64) CkptRestore {
		hr, hl := hist.New(), hist.New()
		for range 10 {
			hr.Record(restoreNS)
			hl.Record(localNS)
		}
		// 1000 pages of 4096 B in 4 ms = 1024 MB/s; the image 8192000 B
		// in 2 ms = 4096 MB/s: 0.25.
		return CkptRestore{Pages: pages, StartNS: startMS * 1e6, AttachNS: 1e6, Restore: hr.Snapshot(), Local: hl.Snapshot(),
			SeqPages: 1000, SeqWallNS: 4e6, ImageBytes: 8192000, ImageReadNS: 2e6}
	}
	return []RunSample{
		{Mode: ModeCheckpoint, Rep: 1, Ckpt: &CkptSample{Role: CkptRoleCheckpoint, VerifiedPages: 10,
			Track: []CkptEpoch{epoch(1000, 1100), epoch(1000, 1200), epoch(1000, 1300)},
			Full:  &CkptCheckpoint{FrozenNS: 200e6, Bytes: 100e6}, DDNS: 160e6, DDBytes: 100e6,
			Incrementals: []CkptCheckpoint{{FrozenNS: 4e6, Pages: 10}, {FrozenNS: 6e6, Pages: 10}, {FrozenNS: 20e6, Pages: 10}}}},
		{Mode: ModeCheckpointSync, Rep: 1, Ckpt: &CkptSample{Role: CkptRoleCheckpoint, Sync: true, VerifiedPages: 10,
			Track: []CkptEpoch{epoch(1000, 3000)}, Full: &CkptCheckpoint{FrozenNS: 1, Bytes: 1}, DDNS: 1000}},
		// The small restore first (the order alternates): the big one is
		// known by its size.
		{Mode: ModeRestore, Rep: 1, Ckpt: &CkptSample{Role: CkptRoleRestore, VerifiedPages: 10, Sizes: CkptSizes{Pages: 1600, SmallPages: 100},
			// restore_prefetch: 1600 pages (6553600 B) present 3.2 ms
			// after the attach = 2048 MB/s; its image read 4096 MB/s: 0.5.
			Restores: []CkptRestore{restore(100, 50, 1, 1), restore(1600, 40, 6000, 4000),
				{Pages: 1600, Prefetch: true, PresentPages: 1600, PresentNS: 3.2e6, StartNS: 1e9, ImageBytes: 8192000, ImageReadNS: 2e6}}}},
		// A failed run: its pages count as verified, its figures not.
		{Mode: ModeCheckpoint, Rep: 2, Err: errors.New("boom"), Ckpt: &CkptSample{Role: CkptRoleCheckpoint, VerifiedPages: 5,
			Track: []CkptEpoch{epoch(1, 1000)}}},
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// TestBuildCheckpoint: the figures and ratios from known samples, the
// targets, and the JSON keys scripts read.
func TestBuildCheckpoint(t *testing.T) {
	r := Build(Machine{}, Params{PageSize: 4096}, ckptFixture())
	c := r.Checkpoint
	if c == nil {
		t.Fatal("no checkpoint report")
	}
	if len(r.Modes) != 0 {
		t.Errorf("checkpoint runs made fault modes: %v", r.ModeOrder())
	}
	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"tracking_overhead (median of 1.1, 1.2, 1.3)", c.TrackingOverhead, 1.2},
		{"tracking ns per page", c.TrackingNSPerPage, 2},
		{"write ns per page", c.WriteNSPerPage, 1},
		{"sync_tracking_overhead (wall: 12000 ÷ 1000)", c.SyncTrackingOverhead, 12},
		{"sync ns per page (wall)", c.SyncTrackingNSPerPage, 110},
		{"full_write_over_dd (dd time ÷ full time)", c.FullWriteOverDD, 0.8},
		{"full ms", c.FullFrozenMS, 200},
		{"full MB/s", c.FullMBps, 500},
		{"dd MB/s", c.DDMBps, 625},
		{"incremental_frozen_ms (median of 4, 6, 20)", c.IncrementalFrozenMS, 6},
		{"incremental_over_full", c.IncrementalOverFull, 0.03},
		{"restore_first_touch_over_local", c.RestoreFirstTouchOverLocal, float64(c.RestoreMedianNS) / float64(c.LocalMedianNS)},
		{"restore_throughput_over_read (restore_prefetch)", c.RestoreThroughputOverRead, 0.5},
		{"restore_prefetch ms", c.RestorePrefetchMS, 3.2},
		{"restore_prefetch MB/s", c.RestorePrefetchMBps, 2048},
		{"restore_lazy_throughput_over_read", c.RestoreLazyThroughputOverRead, 0.25},
		{"restore MB/s (lazy)", c.RestoreMBps, 1024},
		{"restart 1600 pages ms", c.RestartStartMS[1600], 40},
		{"restart 100 pages ms", c.RestartStartMS[100], 50},
		{"restart big over small", c.RestartStartBigOverSmall, 0.8},
		{"verified pages", float64(c.VerifiedPages), 35},
		{"runs", float64(c.Runs), 3},
	} {
		if !near(tc.got, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
	if ratio := c.RestoreFirstTouchOverLocal; ratio < 1.4 || ratio > 1.6 { // 6 µs ÷ 4 µs, within the histogram's precision
		t.Errorf("restore_first_touch_over_local %v, want ≈ 1.5", ratio)
	}
	status := map[string]string{}
	for _, tg := range r.Targets {
		status[tg.Key] = tg.Status
	}
	for k, want := range map[string]string{
		"tracking_overhead": StatusMiss, "incremental_frozen_ms": StatusPass, "incremental_over_full": StatusPass,
		"full_write_over_dd": StatusPass, "restore_first_touch_over_local": StatusPass, "restore_throughput_over_read": StatusMiss,
		"restart_start_big_over_small": StatusPass, "local_over_raw_median": StatusNotMeasured,
	} {
		if status[k] != want {
			t.Errorf("target %s: %s, want %s", k, status[k], want)
		}
	}
	if len(r.Errors) != 1 || !strings.Contains(r.Errors[0], "checkpoint: rep 2: boom") {
		t.Errorf("errors %v", r.Errors)
	}
	if !strings.Contains(r.Summary, "async dirty tracking costs 2 ns per written page") || !strings.Contains(r.Summary, "a full restore (restore_prefetch) runs at 0.50× a read of the image; a lazy one, touched sequentially, at 0.25×") {
		t.Errorf("summary %q", r.Summary)
	}

	// JSON: the top-level checkpoint object with the keys; no
	// move unless a move mode filled it.
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	var ck map[string]any
	if err := json.Unmarshal(top["checkpoint"], &ck); err != nil {
		t.Fatalf("checkpoint object: %v (%s)", err, top["checkpoint"])
	}
	for _, k := range []string{"tracking_overhead", "incremental_frozen_ms", "incremental_over_full", "full_write_over_dd",
		"restore_first_touch_over_local", "restore_throughput_over_read", "restore_lazy_throughput_over_read", "restore_prefetch_ms"} {
		if v, ok := ck[k].(float64); !ok || v <= 0 {
			t.Errorf("checkpoint.%s = %v", k, ck[k])
		}
	}
	if _, ok := ck["move"]; ok {
		t.Errorf("move present without a move run: %s", top["checkpoint"])
	}
	c.Move = &MoveReport{Live: &MoveFigures{DowntimeMS: 1.5, TotalMS: 900, Bytes: 1 << 30}}
	data, _ = json.Marshal(r)
	var mv struct {
		Checkpoint struct {
			Move map[string]map[string]float64 `json:"move"`
		} `json:"checkpoint"`
	}
	if err := json.Unmarshal(data, &mv); err != nil {
		t.Fatal(err)
	}
	if l := mv.Checkpoint.Move["live"]; l["downtime_ms"] != 1.5 || l["total_ms"] != 900 || l["bytes"] != 1<<30 {
		t.Errorf("move.live %v", mv.Checkpoint.Move)
	}
	if _, ok := mv.Checkpoint.Move["restart"]; ok {
		t.Errorf("move.restart present unfilled: %v", mv.Checkpoint.Move)
	}

	// Text: the checkpoint section, and no empty fault table.
	var out bytes.Buffer
	if err := r.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"dirty tracking: write loop tracked ÷ untracked: async 1.20×", "sync 12.00×", "every page present 3.2 ms after the attach began, 2048 MB/s vs image read 4096 MB/s: 0.50×",
		"full checkpoint: 200.0 ms frozen", "throughput ratio 0.80×", "incremental checkpoint (10 pages): 6.00 ms frozen, 0.03×",
		"image read 4096 MB/s: 0.25×", "100 pages 50.0 ms", "1600 pages 40.0 ms", "big ÷ small 0.80×",
		"move live: downtime 1.5 ms, total 900.0 ms, 1024.0 MiB", "MISS          write loop with async dirty tracking"} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "median µs") || strings.Contains(text, "ratios: central÷local") {
		t.Errorf("text has the fault tables without fault modes:\n%s", text)
	}
}

// TestCheckpointSVG: a run of the checkpoint modes alone plots the
// restore's first touches.
func TestCheckpointSVG(t *testing.T) {
	r := Build(Machine{}, Params{PageSize: 4096}, ckptFixture())
	path := filepath.Join(t.TempDir(), "x.svg")
	if err := r.WriteSVG(path); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte("restore: restored pages")) || !bytes.Contains(b, []byte("restore: local pages")) {
		t.Errorf("svg lacks the restore series")
	}
}

// TestSetMove: a move mode's figures land in checkpoint.move even when
// the checkpoint modes did not run; their targets stay unmeasured.
func TestSetMove(t *testing.T) {
	r := Build(Machine{}, Params{}, nil)
	r.SetMove(&MoveReport{Live: &MoveFigures{DowntimeMS: 2, TotalMS: 800, Bytes: 4096}, Restart: &MoveFigures{DowntimeMS: 90, TotalMS: 1200, Bytes: 4096}})
	r.Targets, r.Summary = targets(r), summary(r)
	data, _ := json.Marshal(r)
	if !bytes.Contains(data, []byte(`"move":{"live":{"downtime_ms":2,"total_ms":800,"bytes":4096},"restart":{"downtime_ms":90,"total_ms":1200,"bytes":4096}}`)) {
		t.Errorf("JSON %s", data)
	}
	for _, tg := range r.Targets {
		if tg.Status != StatusNotMeasured {
			t.Errorf("target %s: %s", tg.Key, tg.Status)
		}
	}
	if !strings.Contains(r.Summary, "a live move stops the subsystem 2.0 ms (800.0 ms in all), a restart move 90.0 ms") {
		t.Errorf("summary %q", r.Summary)
	}
}

// TestBuildCheckpointNone: no checkpoint run, no checkpoint object.
func TestBuildCheckpointNone(t *testing.T) {
	r := Build(Machine{}, Params{}, nil)
	if r.Checkpoint != nil {
		t.Errorf("checkpoint %+v", r.Checkpoint)
	}
	data, _ := json.Marshal(r)
	if bytes.Contains(data, []byte(`"checkpoint"`)) {
		t.Errorf("JSON has checkpoint: %s", data)
	}
}

// TestDDAndImageFloors: the dd floor writes exactly the bytes asked and
// leaves nothing; the image read reads every layer file's bytes.
func TestDDAndImageFloors(t *testing.T) {
	dir := t.TempDir()
	ns, err := ddWrite(dir, 3<<20+5)
	if err != nil || ns <= 0 {
		t.Fatalf("ddWrite: %v, %d ns", err, ns)
	}
	if ents, _ := filepath.Glob(filepath.Join(dir, "*")); len(ents) != 0 {
		t.Errorf("left behind %v", ents)
	}
	if hidden, _ := filepath.Glob(filepath.Join(dir, ".*")); len(hidden) != 0 {
		t.Errorf("left behind %v", hidden)
	}
	if _, _, err := readImage(dir); err == nil {
		t.Error("readImage of a dir without layers: no error")
	}
	for i, n := range []int{5000, 3 << 20} {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("layer-%08d.ckl", i+1)), make([]byte, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "MANIFEST"), []byte("not a layer"), 0o644)
	if b, ns, err := readImage(dir); err != nil || b != 5000+3<<20 || ns <= 0 {
		t.Errorf("readImage: %d bytes in %d ns, %v", b, ns, err)
	}
}
