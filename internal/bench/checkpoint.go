package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/hw"
)

// Sizes of the checkpoint scenario (issue I.5). Full: a 1 GiB persistent
// dataspace; the write loop and the plain dataspace 64 MiB; the restore's
// second size 64 MiB. Quick: 64 MiB, 16 MiB, 4 MiB.
const (
	CkptPages           = 262144
	CkptTrackPages      = 16384
	CkptSmallPages      = 16384
	QuickCkptPages      = 16384
	QuickCkptTrackPages = 4096
	QuickCkptSmallPages = 1024
	CkptEpochs          = 5
	// The write loop (tracking_overhead): a hot working set of
	// CkptHotPages pages (4 MiB) rewritten CkptPasses times per epoch —
	// a write-heavy loop writes the same pages many times between two
	// checkpoints; tracking costs one write-protect fault per page per
	// epoch (tracking_ns_per_page), whatever the number of rewrites.
	CkptHotPages         = 1024
	CkptPasses           = 256
	CkptIncrementals     = 3
	ckptPersistentDS     = "ckpt"
	ckptStepPollInterval = 5 * time.Millisecond
)

// CkptSizes are the page counts of one checkpoint-scenario run.
type CkptSizes struct {
	Pages      int `json:"pages"`       // the persistent dataspace
	TrackPages int `json:"track_pages"` // the plain dataspace, the interleaved restore touches
	HotPages   int `json:"hot_pages"`   // the write loop's hot working set (the first pages of both dataspaces)
	SmallPages int `json:"small_pages"` // the restore's second, smaller persistent dataspace
	Epochs     int `json:"epochs"`
	Passes     int `json:"passes"`
	Incrs      int `json:"incrementals"`
}

// ckptSizes returns the sizes of c (pages > 0 overrides the persistent
// dataspace's, the others scale down with it).
func ckptSizes(quick bool, pages int) CkptSizes {
	s := CkptSizes{Pages: CkptPages, TrackPages: CkptTrackPages, SmallPages: CkptSmallPages, HotPages: CkptHotPages,
		Epochs: CkptEpochs, Passes: CkptPasses, Incrs: CkptIncrementals}
	if quick {
		s.Pages, s.TrackPages, s.SmallPages = QuickCkptPages, QuickCkptTrackPages, QuickCkptSmallPages
	}
	if pages > 0 {
		s.Pages = pages
		s.TrackPages = min(s.TrackPages, max(pages/4, 1))
		s.SmallPages = min(s.SmallPages, max(pages/16, 1))
	}
	s.HotPages = min(s.HotPages, s.TrackPages)
	return s
}

// CkptRun is one run of a checkpoint-scenario mode: core and one vcore
// (the first partition's), whose subsystems are checkpoint-scenario
// workers with a persistent dataspace.
type CkptRun struct {
	DaemonRun
	Role  string // CkptRoleCheckpoint or CkptRoleRestore
	Sync  bool   // the vcore tracks writes synchronously (VCORED_SYNC_WRITE_TRACKING=1)
	Sizes CkptSizes
	// DDFirst: the dd floor is written before the full checkpoint, and
	// the small restore runs before the big one (the orders alternate
	// between repetitions).
	DDFirst bool
}

// ckptSub is one scenario subsystem of a run.
type ckptSub struct {
	name              string
	pages, trackPages int
	// prefetch: restore_prefetch = true on its persistent dataspace; its
	// restarted life waits until every page is present (the full
	// restore's throughput) instead of touching pages.
	prefetch bool
}

func (r *CkptRun) subs() []ckptSub {
	node := r.Layout.Partitions[0].Node
	if r.Role == CkptRoleRestore {
		return []ckptSub{
			{fmt.Sprintf("restore-n%d", node), r.Sizes.Pages, r.Sizes.TrackPages, false},
			{fmt.Sprintf("restore-small-n%d", node), r.Sizes.SmallPages, min(r.Sizes.TrackPages, r.Sizes.SmallPages), false},
			{fmt.Sprintf("restore-prefetch-n%d", node), r.Sizes.Pages, r.Sizes.TrackPages, true},
		}
	}
	return []ckptSub{{fmt.Sprintf("ckpt-n%d", node), r.Sizes.Pages, r.Sizes.TrackPages, false}}
}

// Control is the control directory of scenario subsystem name.
func (r *CkptRun) Control(name string) string { return filepath.Join(r.Dir, "control", name) }

// imageDir is where the vcore keeps the image of subsystem name.
func (r *CkptRun) imageDir(name string) string {
	return filepath.Join(r.stateDir(), "images", name, ckptPersistentDS)
}

func (r *CkptRun) stateDir() string {
	return filepath.Join(r.Dir, "state", fmt.Sprintf("vcore%d", r.Layout.Partitions[0].Node))
}

// command is the worker command of s.
func (r *CkptRun) command(s ckptSub) []string {
	return []string{r.Exe, "worker", "--ckpt-role", r.Role, "--ckpt-control", r.Control(s.name),
		"--dataspace", ckptPersistentDS + "," + LocalDataspace,
		"--pages", strconv.Itoa(s.pages), "--ckpt-track-pages", strconv.Itoa(s.trackPages),
		"--ckpt-epochs", strconv.Itoa(r.Sizes.Epochs), "--ckpt-passes", strconv.Itoa(r.Sizes.Passes),
		"--ckpt-hot-pages", strconv.Itoa(min(r.Sizes.HotPages, s.trackPages)),
		"--ckpt-incrementals", strconv.Itoa(r.Sizes.Incrs),
		"--seed", strconv.FormatUint(r.Seed, 10), "--cpu", strconv.Itoa(int(r.WorkerCPU(0, 0))),
		"--ckpt-prefetch=" + strconv.FormatBool(s.prefetch)}
}

// VCoreTOML is the config of the run's vcore.
func (r *CkptRun) VCoreTOML() string {
	p := r.Layout.Partitions[0]
	ps := hw.Bytes(os.Getpagesize())
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by vcored bench for one %s run.\n", r.Role)
	fmt.Fprintf(&b, "node = %d\n", p.Node)
	fmt.Fprintf(&b, "core_socket = %s\n", tomlString(r.CoreSocket()))
	fmt.Fprintf(&b, "socket = %s\n", tomlString(r.VCoreSocket(0)))
	fmt.Fprintf(&b, "state_dir = %s\n", tomlString(r.stateDir()))
	var total hw.Bytes
	for _, s := range r.subs() {
		total += r.subMemory(s)
	}
	fmt.Fprintf(&b, "memory = %s\n", tomlString((total + 64*hw.MiB).String()))
	fmt.Fprintf(&b, "fault_around = 1\n")
	fmt.Fprintf(&b, "replica_budget = \"0\"\n")
	fmt.Fprintf(&b, "stop_grace = \"2s\"\n")
	fmt.Fprintf(&b, "log_level = \"warn\"\n")
	for _, s := range r.subs() {
		fmt.Fprintf(&b, "\n[[subsystem]]\nname = %s\n", tomlString(s.name))
		cmd := r.command(s)
		quoted := make([]string, len(cmd))
		for k, c := range cmd {
			quoted[k] = tomlString(c)
		}
		fmt.Fprintf(&b, "command = [%s]\n", strings.Join(quoted, ", "))
		fmt.Fprintf(&b, "memory = %s\n", tomlString(r.subMemory(s).String()))
		if r.Role == CkptRoleRestore {
			// The first life exits with a failure status once its image is
			// written; the restart restores it.
			fmt.Fprintf(&b, "restart = \"on-failure\"\nmax_restarts = 1\nbackoff_initial = \"1ms\"\nbackoff_max = \"1ms\"\n")
		} else {
			fmt.Fprintf(&b, "restart = \"never\"\n")
		}
		fmt.Fprintf(&b, "\n[[subsystem.dataspace]]\nname = %s\nsize = %s\ncontent = \"zero\"\npersistent = true\n",
			tomlString(ckptPersistentDS), tomlString((hw.Bytes(s.pages) * ps).String()))
		if s.prefetch {
			fmt.Fprintf(&b, "restore_prefetch = true\n")
		}
		fmt.Fprintf(&b, "\n[[subsystem.dataspace]]\nname = %s\nsize = %s\ncontent = \"zero\"\n",
			tomlString(LocalDataspace), tomlString((hw.Bytes(s.trackPages) * ps).String()))
	}
	return b.String()
}

// subMemory is a scenario subsystem's quota: both dataspaces and room for
// the Go runtime.
func (r *CkptRun) subMemory(s ckptSub) hw.Bytes {
	return hw.Bytes(s.pages+s.trackPages)*hw.Bytes(os.Getpagesize()) + 128*hw.MiB
}

// Validate parses the generated files with the daemons' own parsers.
func (r *CkptRun) Validate() error {
	if _, err := config.ParseCore(r.CoreConfigPath(), []byte(r.CoreTOML())); err != nil {
		return fmt.Errorf("bench: generated core config: %w", err)
	}
	if _, err := config.ParseVCore(r.VCoreConfigPath(0), []byte(r.VCoreTOML())); err != nil {
		return fmt.Errorf("bench: generated vcore config: %w", err)
	}
	return nil
}

// CkptSample is what one checkpoint-scenario run measured.
type CkptSample struct {
	Role  string    `json:"role"`
	Sync  bool      `json:"sync"`
	Sizes CkptSizes `json:"sizes"`
	// Track: each epoch of the write loop (role checkpoint).
	Track []CkptEpoch `json:"track,omitempty"`
	// Full is the first checkpoint (every page written), DD the floor
	// written next to it: the same bytes in 1 MiB writes + fsync of the
	// file and the directory, in the image's directory.
	Full    *CkptCheckpoint `json:"full,omitempty"`
	DDNS    int64           `json:"dd_ns,omitempty"`
	DDBytes int64           `json:"dd_bytes,omitempty"`
	// Incrementals: checkpoints after 1 % of the pages were written.
	Incrementals []CkptCheckpoint `json:"incrementals,omitempty"`
	// Restores: per persistent dataspace size (role restore); the big one
	// has Sizes.Pages.
	Restores []CkptRestore `json:"restores,omitempty"`
	// VerifiedPages passed the content check (both lives).
	VerifiedPages int64 `json:"verified_pages"`
}

// CkptEpoch is one epoch of the write loop.
type CkptEpoch struct {
	Pages  int `json:"pages"`
	Passes int `json:"passes"`
	// Thread CPU time, and wall time (CkptStep).
	UntrackedNS     int64 `json:"untracked_ns"`
	TrackedNS       int64 `json:"tracked_ns"`
	UntrackedWallNS int64 `json:"untracked_wall_ns,omitempty"`
	TrackedWallNS   int64 `json:"tracked_wall_ns,omitempty"`
}

// CkptCheckpoint is one checkpoint as the vcore answered it.
type CkptCheckpoint struct {
	FrozenNS int64 `json:"frozen_ns"`
	// TotalNS: the whole checkpoint, freeze to durable commit (the vcore's
	// total_ns: the layer is written after the thaw).
	TotalNS int64 `json:"total_ns"`
	WallNS  int64 `json:"wall_ns"` // the API call, as the bench saw it
	Pages   int   `json:"pages"`
	Bytes   int64 `json:"bytes"`
}

// CkptRestore is one restart of a restore worker.
type CkptRestore struct {
	Pages int `json:"pages"`
	// Prefetch: restored with restore_prefetch = true; PresentNS from
	// the attach until all PresentPages were present.
	Prefetch     bool  `json:"prefetch,omitempty"`
	PresentPages int   `json:"present_pages,omitempty"`
	PresentNS    int64 `json:"present_ns,omitempty"`
	// StartNS is from the first life's last statement (after detaching
	// its persistent dataspace) to the restarted life's first Go
	// statement; AttachNS from there until its attach returned.
	StartNS  int64 `json:"start_ns"`
	AttachNS int64 `json:"attach_ns"`
	// Restore and Local are the interleaved first-touch reads.
	Restore hist.Snapshot `json:"restore_latency"`
	Local   hist.Snapshot `json:"local_latency"`
	// SeqPages were first-touched in one sequential pass of SeqWallNS.
	SeqPages  int   `json:"seq_pages"`
	SeqWallNS int64 `json:"seq_wall_ns"`
	// ImageBytes of layer files read sequentially (1 MiB reads, page
	// cache as the restore found it) in ImageReadNS: the median of a read
	// before the restart and one after the restore.
	ImageBytes  int64 `json:"image_bytes,omitempty"`
	ImageReadNS int64 `json:"image_read_ns,omitempty"`
}

// runCheckpoint is one checkpoint-scenario run.
func runCheckpoint(ctx context.Context, r *CkptRun, log *slog.Logger) (s RunSample) {
	cs := &CkptSample{Role: r.Role, Sync: r.Sync, Sizes: r.Sizes}
	s.Ckpt = cs
	fail := func(err error) RunSample { s.Err = errors.Join(s.Err, err); return s }
	if err := r.Validate(); err != nil {
		return fail(err)
	}
	for _, sub := range r.subs() {
		if err := os.MkdirAll(r.Control(sub.name), 0o755); err != nil {
			return fail(err)
		}
	}
	if err := os.WriteFile(r.CoreConfigPath(), []byte(r.CoreTOML()), 0o644); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(r.VCoreConfigPath(0), []byte(r.VCoreTOML()), 0o644); err != nil {
		return fail(err)
	}
	var daemons []*daemon
	defer func() {
		for _, d := range slices.Backward(daemons) {
			if err := d.stop(); err != nil {
				s.Err = errors.Join(s.Err, err)
			}
		}
	}()
	core, err := startDaemon("core", r.CoreSocket(), filepath.Join(r.Dir, "core.log"), r.Exe, nil,
		"core", "--config", r.CoreConfigPath(), "--pager", string(config.PagerLocal))
	if err != nil {
		return fail(err)
	}
	daemons = append(daemons, core)
	var parts []api.Partition
	if err := core.waitReady(ctx, "/v1/partitions", &parts); err != nil {
		return fail(err)
	}
	var env []string
	if r.Sync {
		env = []string{"VCORED_SYNC_WRITE_TRACKING=1"}
	}
	name := fmt.Sprintf("vcore%d", r.Layout.Partitions[0].Node)
	vc, err := startDaemon(name, r.VCoreSocket(0), filepath.Join(r.Dir, name+".log"), r.Exe, env,
		"vcore", "--config", r.VCoreConfigPath(0))
	if err != nil {
		return fail(err)
	}
	daemons = append(daemons, vc)
	var subs []api.Subsystem
	if err := vc.waitReady(ctx, "/v1/subsystems", &subs); err != nil {
		return fail(err)
	}
	sc := &ckptSession{r: r, core: core, vc: vc, log: log}
	if r.Role == CkptRoleRestore {
		subs := r.subs()
		if r.DDFirst {
			slices.Reverse(subs)
		}
		for _, sub := range subs {
			rs, err := sc.restore(ctx, sub, cs)
			if err != nil {
				return fail(fmt.Errorf("%s: %w", sub.name, err))
			}
			cs.Restores = append(cs.Restores, rs)
		}
		return s
	}
	if err := sc.checkpoint(ctx, r.subs()[0], cs); err != nil {
		return fail(err)
	}
	return s
}

// ckptSession drives the scenario workers of one run.
type ckptSession struct {
	r        *CkptRun
	core, vc *daemon
	log      *slog.Logger
}

// timeout bounds each wait for a worker of pages pages: generous, scaled
// by the work of a step (populating or verifying every page).
func (c *ckptSession) timeout(pages int) time.Duration {
	work := pages + c.r.Sizes.Epochs*c.r.Sizes.Passes*c.r.Sizes.TrackPages
	return 60*time.Second + time.Duration(work)*200*time.Microsecond
}

// wait polls for path (a step file of subsystem sub) while the daemons
// live and the subsystem runs.
func (c *ckptSession) wait(ctx context.Context, sub ckptSub, path string) (*CkptStep, error) {
	deadline := time.Now().Add(c.timeout(sub.pages))
	var lastAsked time.Time
	for {
		if _, err := os.Stat(path); err == nil {
			st, err := ReadCkptStep(path)
			if err != nil {
				return nil, err
			}
			if len(st.Errors) > 0 {
				return st, fmt.Errorf("worker: %s", strings.Join(st.Errors, "; "))
			}
			return st, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for _, d := range []*daemon{c.core, c.vc} {
			if d.dead() {
				return nil, d.deadErr()
			}
		}
		if time.Since(lastAsked) > time.Second {
			lastAsked = time.Now()
			var subs []api.Subsystem
			if err := api.NewClient(c.vc.socket).Get(ctx, "/v1/subsystems", &subs); err == nil {
				i := slices.IndexFunc(subs, func(s api.Subsystem) bool { return s.Name == sub.name })
				if i >= 0 && subs[i].State == "failed" {
					return nil, fmt.Errorf("worker %s failed (%s) before writing %s: see %s", sub.name, subs[i].LastExit,
						filepath.Base(path), c.vc.log)
				}
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no %s from worker %s after %v", filepath.Base(path), sub.name, c.timeout(sub.pages))
		}
		time.Sleep(ckptStepPollInterval)
	}
}

// step waits for step k of sub.
func (c *ckptSession) step(ctx context.Context, sub ckptSub, k int, kind string) (*CkptStep, error) {
	st, err := c.wait(ctx, sub, CkptStepPath(c.r.Control(sub.name), k))
	if err == nil && st.Kind != kind {
		err = fmt.Errorf("step %d of worker %s is %q, want %q", k, sub.name, st.Kind, kind)
	}
	return st, err
}

// next lets sub past step k.
func (c *ckptSession) next(sub ckptSub, k int) error {
	return os.WriteFile(CkptGoPath(c.r.Control(sub.name), k), nil, 0o644)
}

// ckpt checkpoints sub through the vcore's API; wantPages is how many
// pages the new layer must hold (the pages written since the last one).
func (c *ckptSession) ckpt(ctx context.Context, sub ckptSub, wantPages int) (CkptCheckpoint, error) {
	var res api.CheckpointResult
	t0 := time.Now()
	err := api.NewClient(c.vc.socket).Post(ctx, "/v1/subsystems/"+sub.name+"/checkpoint", &res)
	out := CkptCheckpoint{FrozenNS: res.FrozenNS, TotalNS: res.TotalNS, WallNS: int64(time.Since(t0)), Pages: res.Pages, Bytes: res.Bytes}
	if err != nil {
		return out, fmt.Errorf("checkpoint %s: %w", sub.name, err)
	}
	if res.Pages != wantPages {
		return out, fmt.Errorf("checkpoint %s stored %d pages, the worker wrote %d since the last one", sub.name, res.Pages, wantPages)
	}
	return out, nil
}

// checkpoint drives a checkpoint worker: populate, full checkpoint next
// to the dd floor, the write-loop epochs, the incrementals, the check.
func (c *ckptSession) checkpoint(ctx context.Context, sub ckptSub, cs *CkptSample) error {
	k := 0
	if _, err := c.step(ctx, sub, k, StepPopulate); err != nil {
		return err
	}
	var full CkptCheckpoint
	var err error
	dd := func() error {
		cs.DDBytes = full.Bytes
		if cs.DDBytes == 0 { // dd first: the size the layer will have
			cs.DDBytes = layerBytes(sub.pages, os.Getpagesize())
		}
		cs.DDNS, err = ddWrite(filepath.Dir(c.r.imageDir(sub.name)), cs.DDBytes)
		return err
	}
	// The sync run reports its write loop only: no dd floor.
	if c.r.DDFirst && !c.r.Sync {
		if err := dd(); err != nil {
			return err
		}
	}
	if full, err = c.ckpt(ctx, sub, sub.pages); err != nil {
		return err
	}
	cs.Full = &full
	if !c.r.DDFirst && !c.r.Sync {
		if err := dd(); err != nil {
			return err
		}
	}
	if err := c.next(sub, k); err != nil {
		return err
	}
	for range c.r.Sizes.Epochs {
		k++
		st, err := c.step(ctx, sub, k, StepTrack)
		if err != nil {
			return err
		}
		cs.Track = append(cs.Track, CkptEpoch{Pages: st.Pages, Passes: st.Passes, UntrackedNS: st.UntrackedNS, TrackedNS: st.TrackedNS,
			UntrackedWallNS: st.UntrackedWallNS, TrackedWallNS: st.TrackedWallNS})
		// The epoch wrote the hot set: a checkpoint stores exactly it.
		hot := min(c.r.Sizes.HotPages, sub.trackPages)
		if st.Pages != hot {
			return fmt.Errorf("worker %s wrote a hot set of %d pages, want %d", sub.name, st.Pages, hot)
		}
		if _, err := c.ckpt(ctx, sub, hot); err != nil {
			return err
		}
		if err := c.next(sub, k); err != nil {
			return err
		}
	}
	for range c.r.Sizes.Incrs {
		k++
		st, err := c.step(ctx, sub, k, StepIncremental)
		if err != nil {
			return err
		}
		ck, err := c.ckpt(ctx, sub, st.WrittenPages)
		if err != nil {
			return err
		}
		cs.Incrementals = append(cs.Incrementals, ck)
		if err := c.next(sub, k); err != nil {
			return err
		}
	}
	k++
	st, err := c.step(ctx, sub, k, StepDone)
	if st != nil {
		cs.VerifiedPages += int64(st.VerifiedPages)
	}
	if err != nil {
		return err
	}
	if want := sub.pages + sub.trackPages; st.VerifiedPages != want {
		return fmt.Errorf("worker %s verified %d pages, want %d", sub.name, st.VerifiedPages, want)
	}
	if err := c.next(sub, k); err != nil {
		return err
	}
	return c.waitExit(ctx, sub)
}

// restore drives a restore worker: populate, full checkpoint, one
// incremental, the image read floor, the restart, the restore.
func (c *ckptSession) restore(ctx context.Context, sub ckptSub, cs *CkptSample) (CkptRestore, error) {
	rs := CkptRestore{Pages: sub.pages, Prefetch: sub.prefetch}
	ctl := c.r.Control(sub.name)
	if err := os.WriteFile(CkptStartPath(ctl), nil, 0o644); err != nil {
		return rs, err
	}
	if _, err := c.step(ctx, sub, 0, StepPopulate); err != nil {
		return rs, err
	}
	if _, err := c.ckpt(ctx, sub, sub.pages); err != nil {
		return rs, err
	}
	if err := c.next(sub, 0); err != nil {
		return rs, err
	}
	st, err := c.step(ctx, sub, 1, StepIncremental)
	if err != nil {
		return rs, err
	}
	if _, err := c.ckpt(ctx, sub, st.WrittenPages); err != nil {
		return rs, err
	}
	b1, ns1, err := readImage(c.r.imageDir(sub.name))
	if err != nil {
		return rs, err
	}
	if err := c.next(sub, 1); err != nil {
		return rs, err
	}
	done, err := c.wait(ctx, sub, CkptDonePath(ctl))
	if done != nil {
		cs.VerifiedPages += int64(done.VerifiedPages)
	}
	if err != nil {
		return rs, err
	}
	got, err := c.wait(ctx, sub, CkptRestoredPath(ctl))
	if got != nil {
		cs.VerifiedPages += int64(got.VerifiedPages)
	}
	if err != nil {
		return rs, err
	}
	if want := sub.pages + sub.trackPages; got.VerifiedPages != want || done.VerifiedPages != want {
		return rs, fmt.Errorf("worker %s verified %d pages before the restart and %d after, want %d", sub.name,
			done.VerifiedPages, got.VerifiedPages, want)
	}
	_, ns2, err := readImage(c.r.imageDir(sub.name))
	if err != nil {
		return rs, err
	}
	rs.StartNS = got.StartUnixNS - done.ExitUnixNS
	rs.AttachNS = got.AttachedUnixNS - got.StartUnixNS
	rs.Restore, rs.Local = got.RestoreLatency, got.LocalLatency
	rs.SeqPages, rs.SeqWallNS = got.SeqPages, got.SeqWallNS
	rs.PresentPages, rs.PresentNS = got.PresentPages, got.PresentNS
	rs.ImageBytes, rs.ImageReadNS = b1, (ns1+ns2)/2
	return rs, c.waitExit(ctx, sub)
}

// waitExit waits until the vcore reports sub finished.
func (c *ckptSession) waitExit(ctx context.Context, sub ckptSub) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var subs []api.Subsystem
		if err := api.NewClient(c.vc.socket).Get(ctx, "/v1/subsystems", &subs); err == nil {
			i := slices.IndexFunc(subs, func(s api.Subsystem) bool { return s.Name == sub.name })
			if i >= 0 && subsystemDone(subs[i].State) {
				if subs[i].State == "failed" {
					return fmt.Errorf("worker %s ended %s (%s)", sub.name, subs[i].State, subs[i].LastExit)
				}
				return nil
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("worker %s did not exit", sub.name)
		}
		time.Sleep(pollInterval)
	}
}

// layerBytes is the size of a layer file of n data pages
// (docs/CHECKPOINT.md): a 64-byte header and a 16-byte map entry per page,
// padded to a page, then the pages.
func layerBytes(n, ps int) int64 {
	head := (64 + 16*int64(n) + int64(ps) - 1) / int64(ps) * int64(ps)
	return head + int64(n)*int64(ps)
}

// ddBlock is the write size of the dd floor.
const ddBlock = 1 << 20

// ddWrite is the I/O floor of a checkpoint: n bytes written in 1 MiB
// writes to a new file in dir, then fsync of the file and of dir, as `dd
// bs=1M conv=fsync` would (and as a checkpoint's commit does). It returns
// the time from create to the directory's fsync; the file is removed.
func ddWrite(dir string, n int64) (int64, error) {
	buf := make([]byte, ddBlock)
	x := uint64(0x243f6a8885a308d3)
	for i := 0; i+8 <= len(buf); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		for j := range 8 {
			buf[i+j] = byte(x >> (8 * j))
		}
	}
	path := filepath.Join(dir, ".bench-dd")
	t0 := time.Now()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, fmt.Errorf("bench: dd floor: %w", err)
	}
	defer os.Remove(path)
	for left := n; left > 0; {
		chunk := buf[:min(int64(len(buf)), left)]
		if _, err := f.Write(chunk); err != nil {
			f.Close()
			return 0, fmt.Errorf("bench: dd floor: %w", err)
		}
		left -= int64(len(chunk))
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, fmt.Errorf("bench: dd floor: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("bench: dd floor: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return 0, fmt.Errorf("bench: dd floor: %w", err)
	}
	return int64(time.Since(t0)), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readImage reads every layer file of the image in dir sequentially in
// 1 MiB reads: the floor of a restore, which reads the same files.
func readImage(dir string) (int64, int64, error) {
	files, err := filepath.Glob(filepath.Join(dir, "layer-*.ckl"))
	if err != nil || len(files) == 0 {
		return 0, 0, fmt.Errorf("bench: no layer files in %s (%v)", dir, err)
	}
	buf := make([]byte, ddBlock)
	var total int64
	t0 := time.Now()
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return 0, 0, fmt.Errorf("bench: read image: %w", err)
		}
		for {
			n, err := f.Read(buf)
			total += int64(n)
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Close()
				return 0, 0, fmt.Errorf("bench: read image: %w", err)
			}
		}
		f.Close()
	}
	return total, int64(time.Since(t0)), nil
}
