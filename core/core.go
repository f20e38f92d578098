package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/metrics"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
	"github.com/vcored/vcored/policy"
	"github.com/vcored/vcored/topology"
)

// ErrConfig is wrapped by New's errors: the configuration does not fit the
// machine. Nothing has been created when New fails.
var ErrConfig = errors.New("core: configuration")

// Options configure a Core.
type Options struct {
	// Config is the parsed core.toml.
	Config *config.Core
	// Machine is the discovered topology.
	Machine *topology.Machine
	// PagerMode overrides Config.Pager when non-empty ("local" or
	// "central"), so the bench can choose the mode per run.
	PagerMode string
	// Log receives the daemon's log. Nil: discard.
	Log *slog.Logger
}

// Core is the root daemon. Build it with New, run it with Run.
type Core struct {
	cfg     *config.Core
	m       *topology.Machine
	plan    policy.Plan
	mode    wire.PagerMode
	log     *slog.Logger
	started time.Time
	gid     int

	ledger *Ledger
	cg     *cgroups.Manager
	pg     *pager.Pager
	reg    *metrics.Registry

	dataspaces map[string]*dataspace
	rb         *rebalancer // nil unless rebalance = "advise" or "auto"

	moveOnce sync.Once // makes moveCh: one move at a time (move.go)
	moveCh   chan struct{}

	mu       sync.Mutex
	sessions map[string]*session        // live vcore sessions by VCoreID
	held     map[string]map[uint64]bool // uffd ids core holds, by VCoreID (value: served by core)
	owner    map[uint64]string          // the VCoreID that added each held uffd id
	failover map[string]bool            // VCoreIDs whose faults core serves because the vcore is gone
	regions  map[uint64][]wire.Region   // regions of held uffds, as the vcore described them
	locals   map[string]*holderContent  // vcores' declared local dataspaces, by VCoreID
	counters struct {
		forwarded, forwardErrors, claims, refused, reclaimed uint64
	}
}

// dataspace is a core-owned dataspace and its content.
type dataspace struct {
	cfg    config.Dataspace
	src    content.Source
	closer io.Closer
}

// kind is the dataspace's content kind.
func (d *dataspace) kind() content.Kind { return content.KindOf(d.src) }

// New checks the configuration against the machine and computes the
// partition plan. It creates nothing: every side effect happens in Run.
func New(o Options) (*Core, error) {
	if o.Config == nil || o.Machine == nil {
		return nil, fmt.Errorf("%w: config and machine are required", ErrConfig)
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := o.Config.Validate(o.Machine); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	mode := wire.PagerMode(o.Config.Pager)
	if o.PagerMode != "" {
		mode = wire.PagerMode(o.PagerMode)
	}
	if mode != wire.PagerLocal && mode != wire.PagerCentral {
		return nil, fmt.Errorf("%w: pager mode %q (want local or central)", ErrConfig, mode)
	}
	plan, err := policy.MakePlan(o.Machine, o.Config.ReservedCPUs, o.Config.ReservedMemory)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	gid := -1
	if o.Config.SocketGroup != "" {
		// A numeric id is taken as it is (a machine without /etc/group, or
		// a group only a directory service knows); a name is looked up.
		if n, err := strconv.Atoi(o.Config.SocketGroup); err == nil && n >= 0 {
			gid = n
		} else {
			g, err := user.LookupGroup(o.Config.SocketGroup)
			if err != nil {
				return nil, fmt.Errorf("%w: socket_group %q: %w", ErrConfig, o.Config.SocketGroup, err)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	for _, ds := range o.Config.Dataspaces {
		if ds.Source == "" {
			continue
		}
		if _, err := os.Stat(ds.Source); err != nil {
			return nil, fmt.Errorf("%w: dataspace %q: source: %w", ErrConfig, ds.Name, err)
		}
	}
	c := &Core{
		cfg: o.Config, m: o.Machine, plan: plan, mode: mode, log: log, gid: gid,
		dataspaces: map[string]*dataspace{},
		sessions:   map[string]*session{},
		held:       map[string]map[uint64]bool{},
		owner:      map[uint64]string{},
		failover:   map[string]bool{},
		regions:    map[uint64][]wire.Region{},
		locals:     map[string]*holderContent{},
	}
	if err := c.checkRebalance(); err != nil {
		return nil, err
	}
	return c, nil
}

// Mode is the pager mode this core runs in.
func (c *Core) Mode() wire.PagerMode { return c.mode }

// Run starts the daemon and serves until ctx ends. On return the socket is
// gone and the pager stopped; leases, partitions and running subsystems are
// left as they are (vcores keep running and re-register with the next core).
func (c *Core) Run(ctx context.Context) (err error) {
	c.started = time.Now()
	defer func() {
		for _, ds := range c.dataspaces {
			if ds.closer != nil {
				ds.closer.Close()
			}
		}
		c.mu.Lock()
		for h := range c.locals {
			c.dropLocalsLocked(h)
		}
		c.mu.Unlock()
	}()
	// Core-owned dataspaces come from core's configuration only; each source
	// file is opened once, here.
	for _, d := range c.cfg.Dataspaces {
		ds := &dataspace{cfg: d}
		if d.Source != "" {
			ds.src, ds.closer, err = content.File(d.Source)
		} else {
			ds.src, ds.closer, err = content.Open(content.Kind(d.Content), d.Seed, nil)
		}
		if err != nil {
			return fmt.Errorf("core: dataspace %q: %w", d.Name, err)
		}
		c.dataspaces[d.Name] = ds
	}

	if err := linux.PinProcess(c.cfg.ReservedCPUs); err != nil {
		return fmt.Errorf("core: move onto housekeeping cpus %s: %w", c.cfg.ReservedCPUs, err)
	}
	// A P for the single pager thread besides the rest (see vcore.Run).
	runtime.GOMAXPROCS(c.cfg.ReservedCPUs.Len() + 1)
	c.log.Info("core starting", "pid", os.Getpid(), "pager", c.mode, "reserved_cpus", c.cfg.ReservedCPUs.String(),
		"nodes", c.m.NodeIDs().String(), "socket", c.cfg.Socket)

	var dropped []error
	c.ledger, dropped, err = OpenLedger(filepath.Join(c.cfg.StateDir, "ledger.json"), nil,
		&LedgerLimits{Plan: c.plan, CgroupParent: c.cfg.CgroupParent})
	if err != nil {
		return err
	}
	for _, d := range dropped {
		c.log.Warn("ledger entry does not fit this machine or cgroup_parent; dropped (core never acts on it)", "err", d)
	}
	if d, bad := c.ledger.Degraded(); bad {
		c.log.Error("ledger cannot be written; retrying", "err", d.Reason)
	}
	if c.cg, err = cgroups.New(cgroups.Options{}); err != nil {
		return fmt.Errorf("core: cgroups: %w", err)
	}
	// The single pager: one thread on the housekeeping CPUs. It serves every
	// fault in central mode, forwarded faults, and a dead vcore's faults.
	pagerCPU, _ := c.cfg.ReservedCPUs.Min()
	c.pg, err = pager.New(pager.Options{CPUs: hw.NewSet(pagerCPU), Threads: 1, FaultAround: c.cfg.FaultAround, Log: c.log.With("pager", "core")})
	if err != nil {
		return fmt.Errorf("core: pager: %w", err)
	}
	defer c.pg.Close()
	c.reg = metrics.New()
	c.registerMetrics()

	ln, err := wire.Listen(c.cfg.Socket, 0o600|groupPerm(c.gid), c.gid, c.log)
	if err != nil {
		return fmt.Errorf("core: %w", err)
	}
	defer ln.Close()

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.reconcileLoop(rctx)
	}()
	c.startRebalance(rctx, &wg)
	err = ln.Serve(ctx, c.serveWire, c.httpHandler())
	cancel()
	wg.Wait()
	if n := len(c.ledger.Leases()); n > 0 {
		c.log.Info("core stopped; partitions and subsystems left running for the next core", "leases", n)
		return err
	}
	// Nothing is leased: remove core's own (now empty) cgroup subtree.
	if c.cg.Exists(c.cfg.CgroupParent) {
		if g, lerr := c.cg.Load(c.cfg.CgroupParent); lerr == nil {
			if derr := g.Delete(); derr != nil {
				c.log.Warn("cgroup parent not removed", "cgroup", c.cfg.CgroupParent, "err", derr)
			}
		}
	}
	c.log.Info("core stopped")
	return err
}

func groupPerm(gid int) os.FileMode {
	if gid >= 0 {
		return 0o060
	}
	return 0
}

// partitionCgroup is the cgroup path core creates for a lease.
func (c *Core) partitionCgroup(node hw.Node, cpus hw.CPUSet, full bool) string {
	name := fmt.Sprintf("node%d", node)
	if !full {
		if first, ok := cpus.Min(); ok {
			name = fmt.Sprintf("node%d-cpu%d", node, first)
		}
	}
	return filepath.Join(c.cfg.CgroupParent, name)
}

// reconcileLoop reclaims leases whose vcore did not come back in time.
func (c *Core) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.retryLedger()
		for _, le := range c.ledger.Leases() {
			grace := c.cfg.OrphanGrace
			if le.State == StateUnconfirmed {
				grace = c.cfg.RejoinGrace
			}
			if le.State == StateLive || le.Pending != "" || le.OrphanedAt.IsZero() || time.Since(le.OrphanedAt) < grace {
				continue
			}
			c.reclaim(ctx, le)
		}
	}
}

// retryLedger writes the ledger's pending changes when it is degraded, and
// logs when it recovers.
func (c *Core) retryLedger() {
	d, bad := c.ledger.Degraded()
	if !bad {
		return
	}
	if ok, _ := c.ledger.Retry(); ok {
		c.log.Info("ledger written again; pending changes applied", "pending", d.Pending, "degraded_for", time.Since(d.Since).Round(time.Millisecond))
	}
}

// reclaim stops whatever still runs in an abandoned partition (SIGTERM,
// then SIGKILL), removes its cgroups, drops the uffds core held for it and
// frees the lease.
func (c *Core) reclaim(ctx context.Context, le Lease) {
	c.mu.Lock()
	if _, live := c.sessions[le.Holder]; live {
		c.mu.Unlock()
		return // re-claimed meanwhile
	}
	ids := c.held[le.Holder]
	delete(c.held, le.Holder)
	delete(c.failover, le.Holder)
	for id := range ids {
		delete(c.owner, id)
	}
	c.counters.reclaimed++
	c.mu.Unlock()
	log := c.log.With("node", le.Node, "holder", le.Holder, "cgroup", le.Cgroup)
	log.Warn("no vcore returned within the grace period: stopping the partition", "state", le.State)
	if err := CgroupUnder(c.cfg.CgroupParent, le.Cgroup); err != nil {
		// Never signal or delete outside cgroup_parent: drop the lease only.
		log.Error("lease names a cgroup outside cgroup_parent; its processes and cgroup are left alone", "err", err)
	} else if c.cg.Exists(le.Cgroup) {
		g, err := c.cg.Load(le.Cgroup)
		if err == nil {
			err = stopGroup(ctx, g, 5*time.Second)
		}
		if err == nil {
			err = g.Delete()
		}
		if err != nil {
			log.Error("reclaiming the partition failed; will retry", "err", err)
			c.mu.Lock()
			c.held[le.Holder] = ids
			for id := range ids {
				c.owner[id] = le.Holder
			}
			c.mu.Unlock()
			return
		}
	}
	for id := range ids {
		_ = c.pg.RemoveUffd(id)
		c.mu.Lock()
		delete(c.regions, id)
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.dropLocalsLocked(le.Holder)
	c.mu.Unlock()
	if _, err := c.ledger.Release(le.Holder); err != nil {
		if errors.Is(err, ErrLedgerWrite) {
			log.Error("partition reclaimed; freeing the lease is pending until the ledger can be written", "err", err)
		} else {
			log.Error("release lease", "err", err)
		}
		return
	}
	log.Info("partition reclaimed and lease freed")
}

// stopGroup sends SIGTERM to every process in g, then SIGKILL after grace,
// and waits until the group is empty.
func stopGroup(ctx context.Context, g *cgroups.Group, grace time.Duration) error {
	pids, err := g.Procs()
	if err != nil || len(pids) == 0 {
		return err
	}
	_ = g.Kill(syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	killed := false
	for {
		pids, err := g.Procs()
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if !killed && time.Now().After(deadline) {
			_ = g.Kill(syscall.SIGKILL)
			killed = true
			deadline = time.Now().Add(grace)
		} else if killed && time.Now().After(deadline) {
			return fmt.Errorf("core: processes %v of %s survive SIGKILL", pids, g.Path())
		}
		select {
		case <-ctx.Done():
			if !killed {
				_ = g.Kill(syscall.SIGKILL)
			}
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
