package core

// Moving a subsystem to another node (docs/CHECKPOINT.md, "Moves"). Core
// owns the partitions, so core runs a move: it asks the subsystem's vcore
// for its configuration (move-out, phase "query"), records the move in the
// ledger, and then
//
//   - live: asks the destination vcore to take the running processes into
//     a cgroup of its partition (cpuset cpus and mems; their pages are
//     migrated there) and to adopt them, hands the workers' userfaultfds to
//     the destination's session (TakeBack: the destination's pager serves
//     them from then on), tells the source to forget them (its pager stops
//     serving; core's dup and the destination's stay open, so no fault is
//     lost), and asks the destination to wake every registered range once,
//     so a fault the source read but did not resolve is raised again there;
//   - restart: asks the source to checkpoint the subsystem's persistent
//     dataspaces while it is frozen and to kill it still frozen, then asks
//     the destination to start it, whose pager restores the pages lazily
//     (first touch, on the destination's node).
//
// A vcore learns the moves that concern it when it claims its partition
// (ClaimOK.MovedOut / MovedIn), so a move survives restarts of core and of
// both vcores.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
)

// ErrMoveInvalid is wrapped by a move refused before anything changed: an
// unknown subsystem, a node without a vcore, the node it is on, a restart
// move of a subsystem without a persistent dataspace, ...
var ErrMoveInvalid = errors.New("core: move refused")

// MoveRecord is a subsystem core placed away from the node its vcore file
// puts it on. It stays in the ledger until the subsystem is moved back.
type MoveRecord struct {
	Subsystem  string  `json:"subsystem"`
	HomeNode   hw.Node `json:"home_node"`
	HomeHolder string  `json:"home_holder"` // the vcore whose file declares it
	Node       hw.Node `json:"node"`        // where it runs
	Holder     string  `json:"holder"`      // the vcore running it
	Cgroup     string  `json:"cgroup"`      // its cgroup there
	Mode       string  `json:"mode"`
	// Spec is its configuration (config.Subsystem as JSON), as its home
	// vcore gave it; Images are its persistent dataspaces' image
	// directories (in the home vcore's state_dir).
	Spec   json.RawMessage   `json:"spec"`
	Images map[string]string `json:"images,omitempty"`
	At     time.Time         `json:"at"`
}

type moveKey struct{ home, name string }

func (m *MoveRecord) key() moveKey { return moveKey{m.HomeHolder, m.Subsystem} }

// checkMove checks a record read from the ledger against lim.
func (l *Ledger) checkMove(m *MoveRecord, lim *LedgerLimits) error {
	switch {
	case !subsystemName(m.Subsystem):
		return fmt.Errorf("subsystem name %q", m.Subsystem)
	case m.HomeHolder == "" || m.Holder == "":
		return errors.New("no home or destination vcore")
	case m.HomeHolder == m.Holder || m.HomeNode == m.Node:
		return fmt.Errorf("destination node %d is its home", m.Node)
	case m.Mode != api.MoveLive && m.Mode != api.MoveRestart:
		return fmt.Errorf("mode %q", m.Mode)
	case !json.Valid(m.Spec) || !strings.HasPrefix(strings.TrimSpace(string(m.Spec)), "{"):
		return errors.New("no configuration")
	}
	for ds, dir := range m.Images {
		if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir {
			return fmt.Errorf("image of %q: %q is not a clean absolute path", ds, dir)
		}
	}
	if _, dup := l.moves[m.key()]; dup {
		return fmt.Errorf("a second move of %s of %s", m.Subsystem, m.HomeHolder)
	}
	for _, o := range l.moves {
		if o.Holder == m.Holder && o.Subsystem == m.Subsystem {
			return fmt.Errorf("vcore %s already runs a moved subsystem %q", m.Holder, m.Subsystem)
		}
	}
	if lim == nil {
		return nil
	}
	for _, n := range []hw.Node{m.HomeNode, m.Node} {
		if _, ok := lim.Plan.Partition(n); !ok {
			return fmt.Errorf("node %d is not in the partition plan", n)
		}
	}
	if err := CgroupUnder(lim.CgroupParent, m.Cgroup); err != nil {
		return err
	}
	if path.Base(m.Cgroup) != m.Subsystem {
		return fmt.Errorf("cgroup %q is not named after subsystem %q", m.Cgroup, m.Subsystem)
	}
	return nil
}

// subsystemName: what the vcore file accepts as a subsystem name.
func subsystemName(s string) bool {
	if s == "" || len(s) > 63 || s == "." || s == ".." {
		return false
	}
	for i, r := range s {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (i > 0 && (r == '_' || r == '.' || r == '-'))
		if !ok {
			return false
		}
	}
	return true
}

// loadMoves keeps the records of the ledger file that pass checkMove and
// describes the others (dropped: core never acts on them).
func (l *Ledger) loadMoves(file string, ms []*MoveRecord, lim *LedgerLimits) []error {
	var dropped []error
	for i, m := range ms {
		if m == nil {
			dropped = append(dropped, fmt.Errorf("%s: move %d is null", file, i))
			continue
		}
		if err := l.checkMove(m, lim); err != nil {
			dropped = append(dropped, fmt.Errorf("%s: move %d (subsystem %q, node %d -> %d) dropped: %w", file, i, m.Subsystem, m.HomeNode, m.Node, err))
			continue
		}
		l.moves[m.key()] = m
	}
	return dropped
}

func (l *Ledger) sortedMovesLocked() []*MoveRecord {
	out := make([]*MoveRecord, 0, len(l.moves))
	for _, m := range l.moves {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].HomeHolder != out[j].HomeHolder {
			return out[i].HomeHolder < out[j].HomeHolder
		}
		return out[i].Subsystem < out[j].Subsystem
	})
	return out
}

func (l *Ledger) copyMovesLocked() map[moveKey]*MoveRecord {
	out := make(map[moveKey]*MoveRecord, len(l.moves))
	for k, m := range l.moves {
		cp := *m
		out[k] = &cp
	}
	return out
}

// RecordMove records (or replaces) the placement of a subsystem. Nothing
// changes if the ledger cannot be written (the error wraps ErrLedgerWrite)
// or the record is invalid (ErrMoveInvalid).
func (l *Ledger) RecordMove(m MoveRecord) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.txLocked(func() error {
		delete(l.moves, m.key())
		if err := l.checkMove(&m, nil); err != nil {
			return fmt.Errorf("%w: %w", ErrMoveInvalid, err)
		}
		cp := m
		l.moves[m.key()] = &cp
		return nil
	})
}

// ForgetMove removes the record of a subsystem moved back home; a missing
// record is not an error.
func (l *Ledger) ForgetMove(home, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.moves[moveKey{home, name}]; !ok {
		return nil
	}
	return l.txLocked(func() error {
		delete(l.moves, moveKey{home, name})
		return nil
	})
}

// Moves returns a copy of every move record.
func (l *Ledger) Moves() []MoveRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []MoveRecord
	for _, m := range l.sortedMovesLocked() {
		out = append(out, *m)
	}
	return out
}

// movesFor lists what a vcore claiming as holder must know: the subsystems
// of its file that run elsewhere, and those it runs for other vcores.
func (l *Ledger) movesFor(holder string) (out []string, in []wire.MovedSubsystem) {
	for _, m := range l.Moves() {
		if m.HomeHolder == holder {
			out = append(out, m.Subsystem)
		}
		if m.Holder == holder {
			in = append(in, wire.MovedSubsystem{Name: m.Subsystem, FromNode: int(m.HomeNode), Mode: m.Mode,
				Spec: m.Spec, Images: m.Images})
		}
	}
	return out, in
}

// MovesStatus is GET /v1/moves.
func (c *Core) MovesStatus() []api.Move {
	out := []api.Move{}
	for _, m := range c.ledger.Moves() {
		out = append(out, api.Move{Subsystem: m.Subsystem, HomeNode: int(m.HomeNode), HomeVCore: m.HomeHolder,
			Node: int(m.Node), VCore: m.Holder, Cgroup: m.Cgroup, Mode: m.Mode, At: m.At})
	}
	return out
}

// moveTarget is a live vcore a move involves.
type moveTarget struct {
	holder string
	node   hw.Node
	socket string
	cgroup string // its partition cgroup
	sess   *session
}

func (c *Core) liveTargets() []moveTarget {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []moveTarget
	for _, s := range c.sessions {
		out = append(out, moveTarget{holder: s.id, node: s.node, socket: s.lease.Socket, cgroup: s.lease.Cgroup, sess: s})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].holder < out[j].holder })
	return out
}

// moveAskTimeout bounds core's questions to a vcore during a move (the
// steps that checkpoint, start or migrate have the move's own context).
const moveAskTimeout = 5 * time.Second

// movePollLimit bounds how long a restart move waits for every page of the
// image to be restored on the destination before it answers anyway (the
// pages not restored by then are reported as left behind).
const movePollLimit = 30 * time.Second

// locate finds the vcore running subsystem name ("NAME" or
// "PARTITION/NAME") and, if it was moved, its record.
func (c *Core) locate(ctx context.Context, name string) (cur moveTarget, rec *MoveRecord, sub string, err error) {
	part, sub, qualified := strings.Cut(name, "/")
	if !qualified {
		sub, part = name, ""
	}
	if !subsystemName(sub) || (qualified && !subsystemName(part)) {
		return cur, nil, sub, fmt.Errorf("%w: %q is not a subsystem name (NAME or PARTITION/NAME)", ErrMoveInvalid, name)
	}
	targets := c.liveTargets()
	var found []moveTarget
	for _, t := range targets {
		if part != "" && path.Base(t.cgroup) != part {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, moveAskTimeout)
		var subs []api.Subsystem
		err := api.NewClient(t.socket).Get(actx, "/v1/subsystems", &subs)
		cancel()
		if err != nil {
			c.log.Warn("move: vcore did not list its subsystems", "vcore", t.holder, "err", err)
			continue
		}
		for _, s := range subs {
			if s.Name == sub && s.MovedTo == nil {
				found = append(found, t)
			}
		}
	}
	switch len(found) {
	case 0:
		return cur, nil, sub, fmt.Errorf("%w: no live vcore runs a subsystem %q", ErrMoveInvalid, name)
	case 1:
	default:
		var parts []string
		for _, t := range found {
			parts = append(parts, path.Base(t.cgroup)+"/"+sub)
		}
		return cur, nil, sub, fmt.Errorf("%w: several vcores run a subsystem %q: name one of %s", ErrMoveInvalid, name, strings.Join(parts, ", "))
	}
	cur = found[0]
	for _, m := range c.ledger.Moves() {
		if m.Holder == cur.holder && m.Subsystem == sub {
			rec = &m
			break
		}
	}
	return cur, rec, sub, nil
}

// Move moves a subsystem to another node (req.ToNode, req.Mode) or back to
// its home node (req.Back). One move runs at a time. A refused request
// (ErrMoveInvalid) changed nothing.
func (c *Core) Move(ctx context.Context, req api.MoveRequest) (api.MoveResult, error) {
	select {
	case c.moveSem() <- struct{}{}:
		defer func() { <-c.moveSem() }()
	case <-ctx.Done():
		return api.MoveResult{}, ctx.Err()
	}
	start := time.Now()
	res := api.MoveResult{Subsystem: req.Subsystem, Mode: req.Mode, Back: req.Back, ToNode: req.ToNode}
	if req.Subsystem == "" {
		return res, fmt.Errorf("%w: no subsystem named", ErrMoveInvalid)
	}
	cur, rec, name, err := c.locate(ctx, req.Subsystem)
	if err != nil {
		return res, err
	}
	res.Subsystem, res.FromNode = name, int(cur.node)
	var dest moveTarget
	targets := c.liveTargets()
	if req.Back {
		if rec == nil {
			return res, fmt.Errorf("%w: subsystem %q runs on its home node %d (nothing to move back)", ErrMoveInvalid, name, cur.node)
		}
		for _, t := range targets {
			if t.holder == rec.HomeHolder {
				dest = t
			}
		}
		if dest.holder == "" {
			return res, fmt.Errorf("%w: the home vcore of %q (%s, node %d) is not connected", ErrMoveInvalid, name, rec.HomeHolder, rec.HomeNode)
		}
		if req.Mode == "" {
			req.Mode = rec.Mode
		}
	} else {
		if _, ok := c.plan.Partition(hw.Node(req.ToNode)); !ok {
			return res, fmt.Errorf("%w: node %d is not in core's partition plan (nodes %s)", ErrMoveInvalid, req.ToNode, c.m.NodeIDs())
		}
		var on []moveTarget
		for _, t := range targets {
			if int(t.node) == req.ToNode {
				on = append(on, t)
			}
		}
		switch {
		case len(on) == 0:
			return res, fmt.Errorf("%w: node %d has no connected vcore", ErrMoveInvalid, req.ToNode)
		case len(on) > 1:
			return res, fmt.Errorf("%w: node %d has %d vcores (partitions split by CPU): moves go to a node with one", ErrMoveInvalid, req.ToNode, len(on))
		}
		dest = on[0]
		if req.Mode == "" {
			req.Mode = api.MoveLive
		}
		if rec != nil && dest.holder == rec.HomeHolder {
			req.Back = true // moving to its home node is moving it back
		}
	}
	res.ToNode, res.Mode, res.Back = int(dest.node), req.Mode, req.Back
	if req.Mode != api.MoveLive && req.Mode != api.MoveRestart {
		return res, fmt.Errorf("%w: mode %q (want live or restart)", ErrMoveInvalid, req.Mode)
	}
	if c.mode == wire.PagerCentral && req.Mode == api.MoveLive {
		return res, fmt.Errorf("%w: live moves hand the workers' faults to the destination vcore's pager; in central pager mode core serves them (use restart)", ErrMoveInvalid)
	}
	// What the source says about the subsystem (changes nothing).
	var q api.MoveOut
	if err := c.askMoveOut(ctx, cur, name, api.MoveOutRequest{Phase: "query"}, &q); err != nil {
		return res, err
	}
	if req.Mode == api.MoveRestart && !q.Persistent {
		return res, fmt.Errorf("%w: a restart move keeps the memory of persistent dataspaces only; subsystem %q has none (use --mode live)", ErrMoveInvalid, name)
	}
	if req.Mode == api.MoveLive && len(q.Pids) == 0 {
		return res, fmt.Errorf("%w: subsystem %q runs no process to move live", ErrMoveInvalid, name)
	}
	if dest.holder == cur.holder || dest.node == cur.node {
		return res, fmt.Errorf("%w: subsystem %q already runs on node %d", ErrMoveInvalid, name, cur.node)
	}
	// The destination must not run a subsystem of that name (its cgroup
	// would be the moved one's), unless it is the home it returns to.
	{
		actx, cancel := context.WithTimeout(ctx, moveAskTimeout)
		var subs []api.Subsystem
		err := api.NewClient(dest.socket).Get(actx, "/v1/subsystems", &subs)
		cancel()
		if err != nil {
			return res, fmt.Errorf("%w: destination vcore %s does not answer: %w", ErrMoveInvalid, dest.holder, err)
		}
		for _, s := range subs {
			if s.Name == name && !(req.Back && s.MovedTo != nil) {
				return res, fmt.Errorf("%w: the vcore of node %d runs a subsystem %q of its own", ErrMoveInvalid, dest.node, name)
			}
		}
	}

	// Record first: a crash from here on leaves the ledger naming the
	// destination, which a restarted vcore follows.
	home, homeNode := cur.holder, cur.node
	if rec != nil {
		home, homeNode = rec.HomeHolder, rec.HomeNode
	}
	nrec := MoveRecord{Subsystem: name, HomeNode: homeNode, HomeHolder: home, Node: dest.node, Holder: dest.holder,
		Cgroup: dest.cgroup + "/" + name, Mode: req.Mode, Spec: q.Spec, Images: q.Images, At: time.Now()}
	if req.Back {
		err = c.ledger.ForgetMove(home, name)
	} else {
		err = c.ledger.RecordMove(nrec)
	}
	if err != nil {
		return res, err
	}
	undoLedger := func() {
		var err error
		if rec != nil {
			err = c.ledger.RecordMove(*rec)
		} else {
			err = c.ledger.ForgetMove(home, name)
		}
		if err != nil {
			c.log.Error("move failed and its ledger record could not be restored", "subsystem", name, "err", err)
		}
	}
	log := c.log.With("subsystem", name, "from", cur.node, "to", dest.node, "mode", req.Mode)
	log.Info("moving subsystem")
	in := api.MoveInRequest{Name: name, Mode: req.Mode, FromNode: int(homeNode), Spec: q.Spec, Images: q.Images}
	if req.Back {
		in.FromNode = int(dest.node)
	}
	// From here on the move changes things: it runs to its end (or its
	// undo) even if the caller goes away.
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Minute)
	defer cancel()
	switch req.Mode {
	case api.MoveRestart:
		err = c.moveRestart(mctx, cur, dest, name, in, &res, start)
	default:
		err = c.moveLive(mctx, cur, dest, name, in, q, &res)
	}
	if err != nil {
		undoLedger()
		log.Error("move failed", "err", err)
		return res, err
	}
	res.TotalMS = ms(time.Since(start))
	log.Info("subsystem moved", "downtime_ms", res.DowntimeMS, "total_ms", res.TotalMS, "bytes", res.Bytes,
		"pages", res.Pages, "pages_left_behind", res.PagesLeftBehind)
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// moveSem is the one-move-at-a-time semaphore.
func (c *Core) moveSem() chan struct{} {
	c.moveOnce.Do(func() { c.moveCh = make(chan struct{}, 1) })
	return c.moveCh
}

func (c *Core) askMoveOut(ctx context.Context, t moveTarget, name string, req api.MoveOutRequest, out *api.MoveOut) error {
	timeout := moveAskTimeout
	if req.Phase == api.MoveRestart {
		timeout = 2 * time.Minute // a final checkpoint writes the dirty pages
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := api.NewUnboundedClient(t.socket).Do(actx, http.MethodPost, "/v1/subsystems/"+name+"/move-out", req, out)
	if err != nil {
		var se *api.StatusError
		if req.Phase == "query" && errors.As(err, &se) && se.Code/100 == 4 {
			return fmt.Errorf("%w: %s", ErrMoveInvalid, se.Msg)
		}
		return fmt.Errorf("core: move-out (%s) on %s: %w", req.Phase, t.holder, err)
	}
	return nil
}

func (c *Core) askMoveIn(ctx context.Context, t moveTarget, req api.MoveInRequest, out *api.MoveIn) error {
	actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := api.NewUnboundedClient(t.socket).Do(actx, http.MethodPost, "/v1/move-in", req, out); err != nil {
		return fmt.Errorf("core: move-in on %s: %w", t.holder, err)
	}
	return nil
}

func (c *Core) placement(ctx context.Context, t moveTarget, name string) (api.MovePlacement, error) {
	actx, cancel := context.WithTimeout(ctx, moveAskTimeout)
	defer cancel()
	var p api.MovePlacement
	err := api.NewClient(t.socket).Get(actx, "/v1/subsystems/"+name+"/placement", &p)
	return p, err
}

// moveRestart: final checkpoint while frozen and stop on the source, start
// on the destination, then wait (bounded) for the image's pages to be
// restored there.
func (c *Core) moveRestart(ctx context.Context, cur, dest moveTarget, name string, in api.MoveInRequest, res *api.MoveResult, start time.Time) error {
	var out api.MoveOut
	if err := c.askMoveOut(ctx, cur, name, api.MoveOutRequest{Phase: api.MoveRestart, ToNode: int(dest.node)}, &out); err != nil {
		// The source thaws and keeps running on any failure before the kill.
		return err
	}
	res.CheckpointPages, res.CheckpointBytes = out.CheckpointPages, out.CheckpointBytes
	res.PreCopyPages, res.PreCopyBytes, res.PreCopyFrozenMS = out.PreCopyPages, out.PreCopyBytes, out.PreCopyFrozenMS
	var mi api.MoveIn
	if err := c.askMoveIn(ctx, dest, in, &mi); err != nil {
		// Stopped on the source, not started on the destination: start it
		// where it was.
		back := in
		back.FromNode = int(cur.node)
		var again api.MoveIn
		if err2 := c.askMoveIn(ctx, cur, back, &again); err2 != nil {
			return fmt.Errorf("%w; restarting it on node %d failed too: %w", err, cur.node, err2)
		}
		return err
	}
	res.Pids = mi.Pids
	res.Warnings = append(res.Warnings, mi.Warnings...)
	if out.FrozenAtUnixNS > 0 && mi.StartedAtUnixNS > 0 {
		res.DowntimeMS = ms(time.Duration(mi.StartedAtUnixNS - out.FrozenAtUnixNS))
	}
	// Post-copy: every page the image holds is restored by the worker's
	// first touch (or a prefetch) on the destination.
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	deadline := time.Now().Add(movePollLimit)
	restoreStart := time.Now()
	var p api.MovePlacement
	for {
		var err error
		p, err = c.placement(ctx, dest, name)
		if err == nil && p.Missing == 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("not every page restored after %s (%d of %d missing)", movePollLimit, p.Missing, p.ImagePages))
			break
		}
		<-poll.C
	}
	res.Pages = p.PagesByNode[int(dest.node)]
	res.PagesLeftBehind = p.Missing
	for n, k := range p.PagesByNode {
		if n != int(dest.node) {
			res.PagesLeftBehind += k
		}
	}
	ps := uint64(pageSize)
	res.Bytes = uint64(out.PreCopyBytes+out.CheckpointBytes) + (p.ImagePages-p.Missing)*ps
	if d := time.Since(restoreStart); d > 0 && p.ImagePages > p.Missing {
		res.GBps = float64((p.ImagePages-p.Missing)*ps) / d.Seconds() / 1e9
	}
	_ = start
	return nil
}

// pageSize is the page size moves count in.
var pageSize = 4096

// moveLive: the destination takes the processes into its partition and
// migrates their pages; core hands it their userfaultfds; the source
// forgets them; the destination wakes every registered range once.
func (c *Core) moveLive(ctx context.Context, cur, dest moveTarget, name string, in api.MoveInRequest, q api.MoveOut, res *api.MoveResult) error {
	in.Pids, in.SourceCgroup = q.Pids, q.Cgroup
	if err := CgroupUnder(c.cfg.CgroupParent, q.Cgroup); err != nil {
		return err
	}
	var mi api.MoveIn
	if err := c.askMoveIn(ctx, dest, in, &mi); err != nil {
		return err
	}
	res.Pids = mi.Pids
	res.Warnings = append(res.Warnings, mi.Warnings...)
	res.DowntimeMS = mi.FrozenMS
	// Hand the workers' userfaultfds to the destination's session.
	pids := map[int]bool{}
	for _, p := range q.Pids {
		pids[p] = true
	}
	ids := c.handOver(cur, dest, pids)
	wake := func() error {
		actx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return api.NewUnboundedClient(dest.socket).Do(actx, http.MethodPost, "/v1/subsystems/"+name+"/wake", api.MoveWake{Uffds: ids}, nil)
	}
	// The destination serves them before the source lets go: no fault
	// finds nobody reading.
	if err := wake(); err != nil {
		res.Warnings = append(res.Warnings, fmt.Sprintf("the destination did not take the userfaultfds: %v; the source keeps serving them", err))
		return nil
	}
	var out api.MoveOut
	if err := c.askMoveOut(ctx, cur, name, api.MoveOutRequest{Phase: api.MoveLive, ToNode: int(dest.node), Uffds: ids}, &out); err != nil {
		res.Warnings = append(res.Warnings, fmt.Sprintf("the source vcore did not let go: %v (its pager and the destination's both serve until it does)", err))
	}
	// Once more: a fault the source read and did not resolve is raised
	// again at the destination.
	if err := wake(); err != nil {
		res.Warnings = append(res.Warnings, fmt.Sprintf("wake the moved ranges: %v", err))
	}
	p, err := c.placement(ctx, dest, name)
	if err != nil {
		res.Warnings = append(res.Warnings, fmt.Sprintf("placement: %v", err))
	}
	res.Pages = p.PagesByNode[int(dest.node)]
	for n, k := range p.PagesByNode {
		if n != int(dest.node) {
			res.PagesLeftBehind += k
		}
	}
	res.Bytes = mi.MigratedPages * uint64(pageSize)
	if mi.MigrateMS > 0 {
		res.GBps = float64(res.Bytes) / (mi.MigrateMS / 1000) / 1e9
	}
	return nil
}

// handOver gives the destination vcore (TakeBack on its session) every
// userfaultfd core holds for the source whose worker is one of pids, and
// makes the destination their owner. It returns their ids.
func (c *Core) handOver(cur, dest moveTarget, pids map[int]bool) []uint64 {
	infos := c.pg.Uffds()
	slices.SortFunc(infos, func(a, b pager.UffdInfo) int { return cmpU64(a.ID, b.ID) })
	var ids []uint64
	for _, in := range infos {
		c.mu.Lock()
		owner := c.owner[in.ID]
		c.mu.Unlock()
		if owner != cur.holder || !pids[in.Pid] {
			continue
		}
		u, err := c.pg.Uffd(in.ID)
		if err != nil {
			continue
		}
		regions := c.currentRegions(in.ID, in.Regions)
		first := min(len(regions), takeBackBatch)
		err = dest.sess.conn.SendMsg(&wire.TakeBack{UffdID: in.ID, WorkerPid: in.Pid, Regions: regions[:first]}, u.FD())
		u.Close()
		for _, r := range regions[first:] {
			if err != nil {
				break
			}
			err = dest.sess.conn.SendMsg(&wire.RegionAdd{UffdID: in.ID, Region: r})
		}
		if err != nil {
			c.log.Warn("move: hand a uffd to the destination", "uffd", in.ID, "err", err)
			continue
		}
		c.mu.Lock()
		serve := c.held[cur.holder][in.ID]
		delete(c.held[cur.holder], in.ID)
		if c.held[dest.holder] == nil {
			c.held[dest.holder] = map[uint64]bool{}
		}
		c.held[dest.holder][in.ID] = serve
		c.owner[in.ID] = dest.holder
		c.mu.Unlock()
		ids = append(ids, in.ID)
	}
	return ids
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// serveMoves adds the move routes to core's HTTP API.
func (c *Core) serveMoves(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/moves", func(w http.ResponseWriter, _ *http.Request) { api.WriteJSON(w, c.MovesStatus()) })
	mux.HandleFunc("POST /v1/subsystems/{name}/move", c.handleMove)
}

// handleMove serves POST /v1/subsystems/{name}/move: root only. The name
// may be "PARTITION/NAME" path-escaped as one segment.
func (c *Core) handleMove(w http.ResponseWriter, r *http.Request) {
	cred, ok := wire.PeerFromContext(r.Context())
	if !ok || cred.Uid != 0 {
		api.WriteError(w, http.StatusForbidden, "move: only root may move a subsystem (peer uid %d)", cred.Uid)
		return
	}
	var req api.MoveRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		api.WriteError(w, http.StatusBadRequest, "move: bad request body: %v", err)
		return
	}
	if req.Subsystem != "" && req.Subsystem != r.PathValue("name") {
		api.WriteError(w, http.StatusBadRequest, "move: the body names subsystem %q, the path %q", req.Subsystem, r.PathValue("name"))
		return
	}
	req.Subsystem = r.PathValue("name")
	res, err := c.Move(r.Context(), req)
	// A move may outlast the server's write timeout: the answer gets a
	// deadline of its own.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err != nil {
		code := http.StatusInternalServerError
		switch {
		case errors.Is(err, ErrMoveInvalid):
			code = http.StatusBadRequest
		case errors.Is(err, ErrLedgerWrite):
			code = http.StatusServiceUnavailable
		}
		api.WriteError(w, code, "%v", err)
		return
	}
	api.WriteJSON(w, res)
}
