package vcore

// Moves (core/move.go runs them; docs/CHECKPOINT.md, "Moves"). A vcore
// takes part in a move through four root-only routes on its socket:
//
//	POST /v1/subsystems/{name}/move-out  query / restart / live (source)
//	POST /v1/move-in                     start or adopt it here (destination)
//	POST /v1/subsystems/{name}/wake      wake every registered range once
//	GET  /v1/subsystems/{name}/placement where its pages are (move_pages)
//
// A subsystem of the vcore file moved away stays in v.subs, marked in
// v.mv.out: it is not started and its status says where it went. A
// subsystem this vcore runs for another one (or its own, moved back while
// this vcore ran) lives in v.mv.in, which subByName and the worker checks
// consult first. The claim tells a (re)starting vcore both sets
// (ClaimOK.MovedOut/MovedIn), so a move survives restarts.

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/ckpt"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/policy"
	"github.com/vcored/vcored/ramalloc"
)

// moves is the vcore's part of the moves.
type moves struct {
	mu  sync.Mutex
	ctx context.Context     // Run's: the supervision of moved-in subsystems
	in  map[string]*movedIn // subsystems run here for another vcore, or back home
	out map[string]int      // subsystems of the file moved away → their node
	op  sync.Mutex          // one move step at a time
}

// movedIn is a subsystem this vcore started or adopted through a move.
type movedIn struct {
	sub  *subsystem
	from int // its home node
	mode string
}

// initMoves records what the claim said about moves, before the
// subsystems start.
func (v *VCore) initMoves(ctx context.Context) {
	v.mv.mu.Lock()
	defer v.mv.mu.Unlock()
	v.mv.ctx = ctx
	v.mv.in = map[string]*movedIn{}
	v.mv.out = map[string]int{}
	for _, name := range v.grant.MovedOut {
		v.mv.out[name] = -1 // where to: core's /v1/moves says
	}
}

// movedAway reports whether subsystem name of the file runs elsewhere.
func (v *VCore) movedAway(name string) bool {
	v.mv.mu.Lock()
	defer v.mv.mu.Unlock()
	_, ok := v.mv.out[name]
	return ok
}

// movedInByName returns the moved-in subsystem name, or nil.
func (v *VCore) movedInByName(name string) *subsystem {
	v.mv.mu.Lock()
	defer v.mv.mu.Unlock()
	if m := v.mv.in[name]; m != nil {
		return m.sub
	}
	return nil
}

// movedInOf returns the moved-in subsystem whose cgroup holds path.
func (v *VCore) movedInOf(path string) *subsystem {
	v.mv.mu.Lock()
	defer v.mv.mu.Unlock()
	groups := map[string]string{}
	for n, m := range v.mv.in {
		groups[n] = m.sub.cgroup
	}
	if name, ok := subsystemOf(path, groups); ok {
		return v.mv.in[name].sub
	}
	return nil
}

// runningSubs lists the subsystems this vcore runs: those of its file not
// moved away (nor replaced by one moved back in), and the moved-in ones.
func (v *VCore) runningSubs() []*subsystem {
	in := v.movedInSubs()
	var out []*subsystem
	for _, s := range v.subs {
		if !v.movedAway(s.cfg.Name) && v.movedInByName(s.cfg.Name) == nil {
			out = append(out, s)
		}
	}
	return append(out, in...)
}

// movedInSubs lists the moved-in subsystems.
func (v *VCore) movedInSubs() []*subsystem {
	v.mv.mu.Lock()
	defer v.mv.mu.Unlock()
	var out []*subsystem
	for _, m := range v.mv.in {
		out = append(out, m.sub)
	}
	slices.SortFunc(out, func(a, b *subsystem) int { return cmp.Compare(a.cfg.Name, b.cfg.Name) })
	return out
}

// startMovedIn starts (or adopts, when still running) the subsystems the
// claim says this vcore runs for others.
func (v *VCore) startMovedIn(ctx context.Context) error {
	for _, m := range v.grant.MovedIn {
		req := api.MoveInRequest{Name: m.Name, Mode: api.MoveRestart, FromNode: m.FromNode, Spec: m.Spec, Images: m.Images}
		if _, err := v.moveIn(ctx, req); err != nil {
			// A moved-in subsystem that cannot start is logged: the vcore's
			// own subsystems run on.
			v.log.Error("start a moved-in subsystem", "subsystem", m.Name, "from_node", m.FromNode, "err", err)
		}
	}
	return nil
}

// withMoves completes the /v1/subsystems list: moved-away subsystems say
// where they went, moved-in ones are added (replacing the file's entry
// when one came back home).
func (v *VCore) withMoves(list []api.Subsystem) []api.Subsystem {
	v.mv.mu.Lock()
	out := maps2(v.mv.out)
	ins := map[string]*movedIn{}
	for n, m := range v.mv.in {
		ins[n] = m
	}
	v.mv.mu.Unlock()
	var res []api.Subsystem
	for _, a := range list {
		if ins[a.Name] != nil {
			continue
		}
		if node, ok := out[a.Name]; ok {
			n := node
			a.MovedTo = &n
			a.State = "moved"
			a.Pids = []int{}
		}
		res = append(res, a)
	}
	for _, m := range ins {
		a := v.subsystemStatus(m.sub)
		a.MoveMode = m.mode
		if m.from != int(v.cfg.Node) {
			from := m.from
			a.MovedFrom = &from
		}
		res = append(res, a)
	}
	slices.SortFunc(res, func(a, b api.Subsystem) int { return cmp.Compare(a.Name, b.Name) })
	return res
}

func maps2(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, x := range m {
		out[k] = x
	}
	return out
}

// serveMoves adds the move routes.
func (v *VCore) serveMoves(mux *http.ServeMux) {
	mux.HandleFunc("POST /v1/subsystems/{name}/move-out", func(w http.ResponseWriter, r *http.Request) {
		if !rootPeer(w, r) {
			return
		}
		var req api.MoveOutRequest
		if !decodeBody(w, r, &req) {
			return
		}
		res, err := v.moveOut(r.Context(), r.PathValue("name"), req)
		writeMoveAnswer(w, res, err)
	})
	mux.HandleFunc("POST /v1/move-in", func(w http.ResponseWriter, r *http.Request) {
		if !rootPeer(w, r) {
			return
		}
		var req api.MoveInRequest
		if !decodeBody(w, r, &req) {
			return
		}
		v.mv.op.Lock()
		res, err := v.moveIn(v.runCtx(), req)
		v.mv.op.Unlock()
		writeMoveAnswer(w, res, err)
	})
	mux.HandleFunc("POST /v1/subsystems/{name}/wake", func(w http.ResponseWriter, r *http.Request) {
		if !rootPeer(w, r) {
			return
		}
		var req api.MoveWake
		if !decodeBody(w, r, &req) {
			return
		}
		writeMoveAnswer(w, struct{}{}, v.wakeSub(r.PathValue("name"), req.Uffds))
	})
	mux.HandleFunc("GET /v1/subsystems/{name}/placement", func(w http.ResponseWriter, r *http.Request) {
		p, err := v.pagePlacement(r.PathValue("name"))
		writeMoveAnswer(w, p, err)
	})
}

func (v *VCore) runCtx() context.Context {
	v.mv.mu.Lock()
	defer v.mv.mu.Unlock()
	if v.mv.ctx == nil {
		return context.Background()
	}
	return v.mv.ctx
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		api.WriteError(w, http.StatusBadRequest, "bad request body: %v", err)
		return false
	}
	return true
}

func writeMoveAnswer(w http.ResponseWriter, res any, err error) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, errNotFound):
			code = http.StatusNotFound
		case errors.Is(err, errBadRequest):
			code = http.StatusBadRequest
		case errors.Is(err, errConflict):
			code = http.StatusConflict
		}
		api.WriteError(w, code, "%v", err)
		return
	}
	api.WriteJSON(w, res)
}

// subForMove returns the subsystem name as it runs here (a moved-in one,
// or one of the file not moved away).
func (v *VCore) subForMove(name string) (*subsystem, bool, error) {
	if s := v.movedInByName(name); s != nil {
		return s, true, nil
	}
	if v.movedAway(name) {
		return nil, false, fmt.Errorf("%w: subsystem %q was moved away from node %d", errNotFound, name, v.cfg.Node)
	}
	for _, s := range v.subs {
		if s.cfg.Name == name {
			return s, false, nil
		}
	}
	return nil, false, fmt.Errorf("%w: no subsystem %q on node %d", errNotFound, name, v.cfg.Node)
}

// moveOut is the source's part: "query" describes the subsystem and
// changes nothing; "restart" checkpoints it while frozen and stops it;
// "live" lets go of it after its processes went to the destination.
func (v *VCore) moveOut(ctx context.Context, name string, req api.MoveOutRequest) (api.MoveOut, error) {
	v.mv.op.Lock()
	defer v.mv.op.Unlock()
	s, movedIn, err := v.subForMove(name)
	if err != nil {
		return api.MoveOut{}, err
	}
	spec, err := json.Marshal(s.cfg)
	if err != nil {
		return api.MoveOut{}, err
	}
	res := api.MoveOut{Spec: spec, Cgroup: s.cgroup, Node: int(v.cfg.Node), Pids: []int{}}
	for _, p := range persistentsOf(s) {
		if res.Images == nil {
			res.Images = map[string]string{}
		}
		res.Images[p.name] = p.dir
		res.Persistent = true
	}
	if s.group != nil {
		if pids, err := s.group.Procs(); err == nil {
			res.Pids = pids
		}
	}
	switch req.Phase {
	case "query":
		return res, nil
	case api.MoveRestart:
		// Pre-copy: a checkpoint while it still runs afterwards, so that
		// the final one (the downtime) holds only what is written since.
		if res.Persistent && s.group != nil {
			if pre, err := v.Checkpoint(ctx, name); err != nil {
				v.log.Warn("move: pre-copy checkpoint failed; the final checkpoint writes everything", "subsystem", name, "err", err)
			} else {
				res.PreCopyPages, res.PreCopyBytes, res.PreCopyFrozenMS = pre.Pages, pre.Bytes, float64(pre.FrozenNS)/1e6
			}
		}
		if err := v.stopForMove(ctx, s, &res); err != nil {
			return res, err
		}
	case api.MoveLive:
		v.letGo(s, req.Uffds)
	default:
		return res, fmt.Errorf("%w: phase %q (query, restart or live)", errBadRequest, req.Phase)
	}
	v.mv.mu.Lock()
	if movedIn {
		delete(v.mv.in, name)
	}
	if v.subByFile(name) != nil {
		v.mv.out[name] = req.ToNode
	}
	v.mv.mu.Unlock()
	res.Done = true
	v.writeState()
	v.log.Info("subsystem moved out", "subsystem", name, "phase", req.Phase, "to_node", req.ToNode)
	return res, nil
}

// subByFile returns the subsystem of the vcore file called name.
func (v *VCore) subByFile(name string) *subsystem {
	for _, s := range v.subs {
		if s.cfg.Name == name {
			return s
		}
	}
	return nil
}

// stopForMove freezes s, writes a final checkpoint of its persistent
// dataspaces, kills it while still frozen, thaws, waits until it is gone
// and deletes its cgroup. Any failure before the kill thaws it and leaves
// it running.
func (v *VCore) stopForMove(ctx context.Context, s *subsystem, res *api.MoveOut) error {
	if s.group == nil || s.sup == nil {
		return fmt.Errorf("%w: subsystem %s is not running", errConflict, s.cfg.Name)
	}
	pds := persistentsOf(s)
	atts, release := hold(pds)
	defer release()
	fctx, cancel := context.WithTimeout(ctx, freezeTimeout)
	defer cancel()
	frozenAt := time.Now()
	if err := s.group.Freeze(fctx); err != nil {
		return fmt.Errorf("freeze subsystem %s: %w", s.cfg.Name, err)
	}
	thaw := func() error {
		tctx, tcancel := context.WithTimeout(context.Background(), freezeTimeout)
		defer tcancel()
		return s.group.Thaw(tctx)
	}
	for i, p := range pds {
		a := atts[i]
		if a == nil {
			continue
		}
		info, _, err := writeAttachment(p, a)
		if err != nil {
			_ = thaw()
			return fmt.Errorf("final checkpoint of dataspace %s: %w (the subsystem runs on here)", p.name, err)
		}
		res.CheckpointPages += info.Pages
		res.CheckpointBytes += info.Bytes
	}
	// Stopped for good: supervision ends (no restart), SIGKILL while frozen
	// (a thawed process must not write a page the image lacks), thaw.
	stopped := make(chan error, 1)
	go func() {
		sctx, scancel := context.WithTimeout(context.Background(), v.cfg.StopGrace+30*time.Second)
		defer scancel()
		stopped <- s.sup.Stop(sctx)
	}()
	_ = s.group.Kill(syscall.SIGKILL)
	// The thaw lets the killed processes exit; its cleanup (the v1 freezer
	// directory) can find them still exiting, and is done again once they
	// are gone.
	thawErr := thaw()
	res.FrozenAtUnixNS = frozenAt.UnixNano()
	res.FrozenMS = float64(time.Since(frozenAt).Microseconds()) / 1000
	if err := <-stopped; err != nil {
		return fmt.Errorf("stop subsystem %s: %w", s.cfg.Name, err)
	}
	if thawErr != nil {
		if err := thaw(); err != nil {
			v.log.Warn("thaw a killed subsystem", "subsystem", s.cfg.Name, "err", err, "first_err", thawErr)
		}
	}
	if err := s.group.Delete(); err != nil {
		v.log.Warn("delete a moved subsystem's cgroup", "subsystem", s.cfg.Name, "err", err)
	}
	return nil
}

// letGo ends the source's part of a live move: supervision stops (the
// destination adopted the processes), the handed-over userfaultfds are
// forgotten without telling core (core made the destination their owner),
// and the emptied cgroup is removed.
func (v *VCore) letGo(s *subsystem, ids []uint64) {
	if s.sup != nil {
		pids := s.sup.Status().Pids
		s.sup.Detach()
		// A process this vcore started stays its child: reap it when it
		// exits (Wait fails at once for one that is not).
		for _, pid := range pids {
			if p, err := os.FindProcess(pid); err == nil {
				go func() { _, _ = p.Wait() }()
			}
		}
	}
	v.mu.Lock()
	for _, id := range ids {
		st := v.uffds[id]
		if st == nil {
			continue
		}
		delete(v.uffds, id)
		v.untrackLocked(st, 0)
		if err := v.pgr.RemoveUffd(id); err != nil {
			v.log.Warn("let go of a moved worker's uffd", "uffd", id, "err", err)
		}
		if st.sub != nil {
			for _, r := range st.regions {
				st.sub.quota.Release(int64(r.charged))
			}
		}
	}
	v.mu.Unlock()
	if s.group != nil {
		if pids, err := s.group.Procs(); err == nil && len(pids) == 0 {
			if err := s.group.Delete(); err != nil {
				v.log.Warn("delete a moved subsystem's cgroup", "subsystem", s.cfg.Name, "err", err)
			}
		}
	}
}

// moveIn is the destination's part: build the subsystem from its home's
// configuration, then start it (restart) or take its running processes
// into a cgroup of this partition, migrate their pages here and adopt
// them (live).
func (v *VCore) moveIn(ctx context.Context, req api.MoveInRequest) (api.MoveIn, error) {
	var res api.MoveIn
	var sc config.Subsystem
	if err := json.Unmarshal(req.Spec, &sc); err != nil {
		return res, fmt.Errorf("%w: configuration of %q: %v", errBadRequest, req.Name, err)
	}
	switch {
	case sc.Name != req.Name || req.Name == "" || strings.ContainsAny(req.Name, "/\x00") || req.Name == "." || req.Name == "..":
		return res, fmt.Errorf("%w: subsystem name %q, configuration of %q", errBadRequest, req.Name, sc.Name)
	case req.Mode != api.MoveLive && req.Mode != api.MoveRestart:
		return res, fmt.Errorf("%w: mode %q", errBadRequest, req.Mode)
	case len(sc.Command) == 0:
		return res, fmt.Errorf("%w: subsystem %q has no command", errBadRequest, req.Name)
	}
	if v.movedInByName(req.Name) != nil {
		return res, fmt.Errorf("%w: subsystem %q already runs here", errConflict, req.Name)
	}
	if own := v.subByFile(req.Name); own != nil && !v.movedAway(req.Name) {
		return res, fmt.Errorf("%w: this vcore runs a subsystem %q of its own", errConflict, req.Name)
	}
	s := &subsystem{cfg: sc, cgroup: v.grant.Cgroup + "/" + sc.Name, sources: map[string]content.Source{}}
	s.quota = ramalloc.NewQuota(sc.Name, int64(sc.Memory))
	var opened []io.Closer
	fail := func(err error) (api.MoveIn, error) {
		for _, c := range opened {
			c.Close()
		}
		return res, err
	}
	for _, d := range sc.Local {
		var (
			src content.Source
			c   io.Closer
			err error
		)
		if d.Content == config.ContentFile {
			src, c, err = content.File(d.Source)
		} else {
			src, c, err = content.Open(d.Content, d.Seed, nil)
		}
		if err != nil {
			return fail(fmt.Errorf("%w: dataspace %s: %v", errBadRequest, d.Name, err))
		}
		if c != nil {
			opened = append(opened, c)
		}
		if d.Persistent {
			dir := req.Images[d.Name]
			if dir == "" || !filepath.IsAbs(dir) {
				return fail(fmt.Errorf("%w: persistent dataspace %s: no image directory", errBadRequest, d.Name))
			}
			p, err := openPersistentAt(dir, sc.Name, d, src)
			if err != nil {
				return fail(fmt.Errorf("dataspace %s: %w", d.Name, err))
			}
			opened = append(opened, p)
			src = p
		}
		s.sources[d.Name] = src
	}
	s.cpus = v.grant.CPUs
	if cpus, err := policy.AssignSubsystems(v.m, v.grant.CPUs, []policy.Request{{Count: sc.CPUs.Count, List: sc.CPUs.List}}); err == nil {
		s.cpus = cpus[0]
	}
	logs := filepath.Join(v.cfg.StateDir, "logs")
	if err := os.MkdirAll(logs, 0o750); err != nil {
		return fail(err)
	}
	if req.Mode == api.MoveLive && len(req.Pids) > 0 {
		if err := v.takeProcs(s, req.Pids, &res); err != nil {
			return fail(err)
		}
	}
	if err := v.startSubsystem(ctx, s, filepath.Join(logs, sc.Name+".log")); err != nil {
		if s.group != nil && req.Mode == api.MoveRestart {
			_ = s.group.Delete()
		}
		return fail(err)
	}
	// Started: its process runs (the shim execs the command a moment
	// after supervise.Start returns).
	for deadline := time.Now().Add(5 * time.Second); len(s.sup.Status().Pids) == 0 && time.Now().Before(deadline); {
		time.Sleep(2 * time.Millisecond)
	}
	res.StartedAtUnixNS = time.Now().UnixNano()
	v.mu.Lock()
	v.closers = append(v.closers, opened...)
	v.mu.Unlock()
	v.mv.mu.Lock()
	v.mv.in[sc.Name] = &movedIn{sub: s, from: req.FromNode, mode: req.Mode}
	if req.FromNode == int(v.cfg.Node) {
		delete(v.mv.out, sc.Name) // back home
	}
	v.mv.mu.Unlock()
	v.writeState()
	res.Cgroup, res.CPUs, res.Mems = s.cgroup, s.cpus.String(), v.grant.Mems.String()
	res.Pids = s.sup.Status().Pids
	v.log.Info("subsystem moved in", "subsystem", sc.Name, "mode", req.Mode, "from_node", req.FromNode, "cgroup", s.cgroup, "pids", res.Pids)
	return res, nil
}

// takeProcs makes s's cgroup in this partition and moves pids into it
// (cpuset cpus and mems of this partition; with cgroup v1 memory_migrate
// set first, so the kernel migrates their pages as they join), then
// migrates what is still elsewhere with migrate_pages.
func (v *VCore) takeProcs(s *subsystem, pids []int, res *api.MoveIn) error {
	r := cgroupsResources(s, v)
	g, err := v.cg.Create(s.cgroup, r)
	if err != nil {
		return fmt.Errorf("create cgroup %s: %w", s.cgroup, err)
	}
	for _, d := range g.Dirs() {
		if f := filepath.Join(d, "cpuset.memory_migrate"); fileExists(f) {
			if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
				res.Warnings = append(res.Warnings, fmt.Sprintf("cpuset.memory_migrate: %v", err))
			}
		}
	}
	before := map[int]uint64{}
	for _, pid := range pids {
		for n, k := range numaPages(pid) {
			before[n] += k
		}
	}
	start := time.Now()
	var moved []int
	for _, pid := range pids {
		if err := g.AddProc(pid); err != nil {
			if !linux.ProcessLive(pid) {
				continue // exited meanwhile
			}
			_ = g.Delete()
			return fmt.Errorf("move pid %d into %s: %w", pid, s.cgroup, err)
		}
		moved = append(moved, pid)
	}
	res.FrozenMS = float64(time.Since(start).Microseconds()) / 1000
	others := hw.NodeSet{}
	for _, n := range v.m.NodeIDs().Slice() {
		if !v.grant.Mems.Contains(n) {
			others = others.Union(hw.NewSet(n))
		}
	}
	if !others.IsEmpty() {
		for _, pid := range moved {
			if left, err := linux.MigratePages(pid, others, v.grant.Mems); err != nil {
				res.Warnings = append(res.Warnings, err.Error())
			} else if left > 0 {
				res.Warnings = append(res.Warnings, fmt.Sprintf("pid %d: %d pages could not be migrated", pid, left))
			}
		}
	}
	res.MigrateMS = float64(time.Since(start).Microseconds()) / 1000
	after := map[int]uint64{}
	for _, pid := range moved {
		for n, k := range numaPages(pid) {
			after[n] += k
		}
	}
	var wasElsewhere, isElsewhere uint64
	for n, k := range before {
		if !v.grant.Mems.Contains(hw.Node(n)) {
			wasElsewhere += k
		}
	}
	for n, k := range after {
		if !v.grant.Mems.Contains(hw.Node(n)) {
			isElsewhere += k
		}
	}
	if wasElsewhere > isElsewhere {
		res.MigratedPages = wasElsewhere - isElsewhere
	}
	return nil
}

func cgroupsResources(s *subsystem, v *VCore) cgroups.Resources {
	return cgroups.Resources{CPUs: s.cpus, Mems: v.grant.Mems, MemoryLimit: s.cfg.Memory, PidsMax: s.pidsMax()}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// numaPages sums /proc/PID/numa_maps: resident pages per node.
func numaPages(pid int) map[int]uint64 {
	out := map[int]uint64{}
	f, err := os.Open(fmt.Sprintf("/proc/%d/numa_maps", pid))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		for _, tok := range strings.Fields(sc.Text()) {
			if len(tok) < 4 || tok[0] != 'N' {
				continue
			}
			n, k, ok := strings.Cut(tok[1:], "=")
			if !ok {
				continue
			}
			node, err1 := strconv.Atoi(n)
			pages, err2 := strconv.ParseUint(k, 10, 64)
			if err1 == nil && err2 == nil {
				out[node] += pages
			}
		}
	}
	return out
}

// openPersistentAt opens the existing image at dir for a moved-in
// dataspace (an image is never created here: its home vcore made it).
func openPersistentAt(dir, sub string, d config.Dataspace, base content.Source) (*persistentDS, error) {
	ps := linux.PageSize()
	size := (uint64(d.Size) + uint64(ps) - 1) / uint64(ps) * uint64(ps)
	im, err := ckpt.Open(dir)
	if err != nil {
		return nil, err
	}
	if im.Size() != size || im.PageSize() != ps {
		return nil, fmt.Errorf("image %s is of %d bytes in pages of %d, the dataspace %d in pages of %d", dir, im.Size(), im.PageSize(), size, ps)
	}
	rd, err := ckpt.OpenReaderOver(dir, base)
	if err != nil {
		return nil, err
	}
	return &persistentDS{sub: sub, name: d.Name, dir: dir, size: size, base: base, im: im, rd: rd}, nil
}

// wakeSub finishes a live move on the destination: the persistent
// regions handed over are checkpointed from here on (every present page
// at each checkpoint: the write tracking of the source's pager did not come
// along), and every registered range of the subsystem's workers is woken
// once, so a fault the source's pager read and never resolved is raised
// again, here.
func (v *VCore) wakeSub(name string, want []uint64) error {
	s, _, err := v.subForMove(name)
	if err != nil {
		return err
	}
	// The TakeBacks travel on the core session: wait until they arrived.
	for deadline := time.Now().Add(10 * time.Second); ; {
		v.mu.Lock()
		missing := 0
		for _, id := range want {
			if v.uffds[id] == nil {
				missing++
			}
		}
		v.mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %d of the %d handed-over userfaultfds did not arrive", errConflict, missing, len(want))
		}
		time.Sleep(5 * time.Millisecond)
	}
	type reg struct {
		id  uint64
		pid int
		r   wire.Region
	}
	v.mu.Lock()
	var ids []uint64
	var regs []reg
	for id, st := range v.uffds {
		if st.sub != s {
			continue
		}
		ids = append(ids, id)
		for _, rs := range st.regions {
			regs = append(regs, reg{id, st.pid, rs.wire})
		}
	}
	v.mu.Unlock()
	for _, r := range regs {
		p := persistentOf(s, r.r.Dataspace)
		if p == nil || r.r.Forward || r.r.Offset != 0 {
			continue
		}
		p.attMu.Lock()
		if p.att == nil {
			region := ckpt.Region{Pid: r.pid, Addr: uintptr(r.r.Start), Size: r.r.Length}
			p.att = &attachment{uffd: r.id, region: region, tr: presentTracker{region}}
		}
		p.attMu.Unlock()
	}
	var errs []error
	for _, id := range ids {
		rs, err := v.pgr.Regions(id)
		if err != nil {
			continue
		}
		u, err := v.pgr.Uffd(id)
		if err != nil {
			continue
		}
		for _, r := range rs {
			if err := u.Wake(r.Start, r.Length); err != nil {
				errs = append(errs, err)
			}
		}
		u.Close()
	}
	return errors.Join(errs...)
}

// presentTracker is the ckpt.Tracker of a persistent region adopted by a
// live move: every present page is "dirty" (stored again at each
// checkpoint: correct, larger).
type presentTracker struct{ r ckpt.Region }

func (t presentTracker) Dirty() ([]uint64, error) { return ckpt.PresentPages(t.r) }
func (t presentTracker) Close() error             { return nil }

// placement says where the subsystem's pages are: resident pages of its
// workers' registered regions by node, and how many pages its images hold
// that its worker does not have yet.
func (v *VCore) pagePlacement(name string) (api.MovePlacement, error) {
	s, _, err := v.subForMove(name)
	if err != nil {
		return api.MovePlacement{}, err
	}
	p := api.MovePlacement{Node: int(v.cfg.Node), PagesByNode: map[int]uint64{}, Pids: []int{}}
	if s.group != nil {
		if pids, err := s.group.Procs(); err == nil {
			p.Pids = pids
		}
	}
	ps := uintptr(linux.PageSize())
	type rng struct {
		pid        int
		start, len uintptr
	}
	var rs []rng
	v.mu.Lock()
	for id, st := range v.uffds {
		if st.sub != s {
			continue
		}
		regs, err := v.pgr.Regions(id)
		if err != nil {
			continue
		}
		for _, r := range regs {
			rs = append(rs, rng{st.pid, r.Start, r.Length})
		}
	}
	v.mu.Unlock()
	for _, r := range rs {
		addrs := make([]uintptr, 0, r.len/ps)
		for a := r.start; a < r.start+r.len; a += ps {
			addrs = append(addrs, a)
		}
		for len(addrs) > 0 {
			chunk := addrs[:min(len(addrs), 16384)]
			addrs = addrs[len(chunk):]
			nodes, err := linux.PageNodes(r.pid, chunk)
			if err != nil {
				break
			}
			for _, n := range nodes {
				if n >= 0 {
					p.PagesByNode[n]++
				}
			}
		}
	}
	for _, pd := range persistentsOf(s) {
		pd.mu.RLock()
		stored := pd.rd.StoredPages()
		pd.mu.RUnlock()
		p.ImagePages += uint64(len(stored))
		pd.attMu.Lock()
		a := pd.att
		pd.attMu.Unlock()
		if a == nil || a.region.Pid == 0 {
			p.Missing += uint64(len(stored))
			continue
		}
		addrs := make([]uintptr, 0, len(stored))
		for _, pg := range stored {
			if uint64(pg)*uint64(ps) < a.region.Size {
				addrs = append(addrs, a.region.Addr+uintptr(pg)*ps)
			}
		}
		for len(addrs) > 0 {
			chunk := addrs[:min(len(addrs), 16384)]
			addrs = addrs[len(chunk):]
			nodes, err := linux.PageNodes(a.region.Pid, chunk)
			if err != nil {
				p.Missing += uint64(len(chunk) + len(addrs))
				break
			}
			for _, n := range nodes {
				if n < 0 {
					p.Missing++
				}
			}
		}
	}
	return p, nil
}
