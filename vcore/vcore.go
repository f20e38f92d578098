// Package vcore is the per-node daemon (`vcored vcore`): it leases its
// partition (CPUs, memory, a partition cgroup) from core, runs and supervises
// its subsystems in one cpuset/memory cgroup each, and serves the page faults
// of their workers with a local pager pinned to the partition's CPUs.
//
// # Life of a vcore
//
// New checks the configuration against the machine and creates nothing. Run
// connects to core (retrying for a while at startup), says Hello and Claims
// the partition; a refused claim returns an error wrapping ErrClaimRefused,
// still having created nothing. Only after ClaimOK does the vcore pin itself
// to the partition's CPUs, start its pager, open its socket (workers, HTTP
// status, /metrics), create the subsystems' cgroups under the partition
// cgroup core made, and start the subsystems — or adopt them, when a
// previous vcore of this partition died and left them running.
//
// The session with core follows docs/PROTOCOL.md and the vcore<->core session
// rules: every worker uffd is handed to core as a dup (UffdAdd, RegionAdd,
// UffdRemove), faults in core-owned dataspaces are forwarded, uffds core held
// for a dead predecessor are taken back, and when core goes away the vcore
// keeps its subsystems untouched, serves every uffd itself and redials.
//
// When ctx ends, Run stops the subsystems (SIGTERM, SIGKILL after
// stop_grace), deletes their cgroups, releases the lease and removes the
// socket.
package vcore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/vcored/vcored/ramalloc"
	"github.com/vcored/vcored/vcore/replica"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vcored/vcored/internal/api"
	"github.com/vcored/vcored/internal/cgroups"
	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hist"
	"github.com/vcored/vcored/internal/linux"
	"github.com/vcored/vcored/internal/metrics"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/pager"
	"github.com/vcored/vcored/topology"
)

// Errors a caller tells apart (the vcored command exits 2 on both: nothing
// was created).
var (
	// ErrConfig is wrapped when the configuration does not fit the machine.
	ErrConfig = errors.New("vcore: bad configuration")
	// ErrClaimRefused is wrapped when core refuses the claim (or the
	// Hello); the message names the conflicting lease.
	ErrClaimRefused = errors.New("vcore: claim refused by core")
)

// Defaults of Options.
const (
	// DefaultDialTimeout is how long Run keeps trying to reach core at
	// startup.
	DefaultDialTimeout = 10 * time.Second
	// redialMin and redialMax bound the backoff of redialing a lost core.
	redialMin = 100 * time.Millisecond
	redialMax = 5 * time.Second
	// reapInterval is how often uffds dropped by the pager (worker exit)
	// and state changes are noticed.
	reapInterval = 500 * time.Millisecond
	// releaseWait bounds the wait for core's Ack of Release.
	releaseWait = time.Second
)

// Options configure a VCore.
type Options struct {
	// Config is the vcore file, already parsed (config.LoadVCore).
	Config *config.VCore
	// Machine is the topology the config is checked against and CPUs are
	// assigned from; nil means topology.Host().
	Machine *topology.Machine
	// Cgroups manages the host's cgroups; nil means cgroups.New with the
	// host's defaults.
	Cgroups *cgroups.Manager
	// Shim is the vcored binary whose `exec-in-cgroup` starts subsystems
	// inside their cgroup; "" means the running executable.
	Shim string
	// Log receives the daemon's log; nil discards it.
	Log *slog.Logger
	// NoPin leaves the process's CPU affinity alone (tests that run a vcore
	// inside their own process). The pager threads are pinned regardless.
	NoPin bool
	// DialTimeout bounds the first connection to core; 0 means
	// DefaultDialTimeout.
	DialTimeout time.Duration
}

// VCore is one vcore daemon.
type VCore struct {
	cfg     *config.VCore
	m       *topology.Machine
	cg      *cgroups.Manager
	opts    Options
	log     *slog.Logger
	started time.Time
	procfs  fs.FS // /proc, for the peer checks

	// Set once in Run after ClaimOK, read-only afterwards.
	pgr    *pager.Pager
	ln     *wire.Listener
	subs   []*subsystem
	groups map[string]string // subsystem name → cgroup path, for subsystemOf
	core   map[string]wire.DataspaceInfo
	// placement of the pager threads and why (set at start).
	placement    config.PagerPlacement
	placementWhy string
	// replicas of core-owned read-only pages (nil: replica_budget 0).
	replicas *replica.Store
	closers  []io.Closer
	reg      *metrics.Registry
	// loopStarted: the core loop reads the session (set and read by Run).
	loopStarted bool

	// mu guards the session with core, the uffd table and the grant (which
	// a re-claim may refresh). Messages to core are sent with mu held, so
	// the replay after a reconnect and new registrations never interleave.
	mu        sync.Mutex
	conn      *wire.Conn // nil while core is unreachable
	grant     wire.ClaimOK
	stopping  bool
	uffds     map[uint64]*uffdState
	seq       uint64
	releaseOK chan struct{} // closed when core acks Release
	declared  declaredSet   // local dataspaces declared to core on conn

	// out queues the messages to core; sendLoop writes them, holding no
	// lock across the I/O (a Forward on an idle connection is written by
	// the pager thread itself: tryForward).
	out outbox

	// fwdMu guards the forwarded faults in flight and their latencies.
	fwdMu   sync.Mutex
	fwdSeq  uint64
	pending map[uint64]pendingForward
	// fwdInflight maps a forwarded page to the seqno of its pending
	// Forward: a page is forwarded once until core answers.
	fwdInflight map[fwdKey]uint64
	fwdLat      map[string]*hist.Histogram
	// regionGen numbers the regions attached (regionState.gen); a
	// pending forward records it (pendingForward.gen).
	regionGen atomic.Uint64

	ext externals // containers placed by the NRI plugin (external.go)
	mv  moves     // subsystems moved away or moved in (move.go)
}

// New checks opts.Config against the machine and returns a VCore ready to
// Run. It creates nothing. A configuration that does not fit the machine
// gives an error wrapping ErrConfig (and config.Errors listing every
// problem).
func New(opts Options) (*VCore, error) {
	if opts.Config == nil {
		return nil, fmt.Errorf("%w: no configuration", ErrConfig)
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := opts.Machine
	if m == nil {
		var err error
		if m, err = topology.Host(); err != nil {
			return nil, fmt.Errorf("vcore: read the machine's topology: %w", err)
		}
	}
	if err := opts.Config.Validate(m, nil); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = DefaultDialTimeout
	}
	return &VCore{
		cfg:     opts.Config,
		m:       m,
		cg:      opts.Cgroups,
		opts:    opts,
		log:     log.With("node", int(opts.Config.Node)),
		uffds:   map[uint64]*uffdState{},
		pending: map[uint64]pendingForward{},
		fwdLat:  map[string]*hist.Histogram{},
		procfs:  os.DirFS("/proc"),
	}, nil
}

// Run runs the vcore until ctx ends, then stops everything it started and
// returns nil. Errors before the partition is granted leave nothing behind;
// a refused claim wraps ErrClaimRefused.
func (v *VCore) Run(ctx context.Context) (err error) {
	v.started = time.Now()
	conn, grant, err := v.connect(ctx)
	if err != nil {
		return err
	}
	v.grant = grant
	v.conn = conn
	v.log.Info("partition granted", "cpus", grant.CPUs, "mems", grant.Mems, "cgroup", grant.Cgroup, "pager", grant.Pager, "fault_around", grant.FaultAround)

	// From here on, whatever fails is undone: a half-started vcore releases
	// its lease so core can hand it out again.
	defer func() {
		if err != nil {
			v.shutdown()
		}
	}()
	if v.cg == nil {
		if v.cg, err = cgroups.New(cgroups.Options{}); err != nil {
			return fmt.Errorf("vcore: cgroups: %w", err)
		}
	}
	if !v.opts.NoPin {
		if err := linux.PinProcess(grant.CPUs); err != nil {
			return fmt.Errorf("vcore: pin to the partition's CPUs %s: %w", grant.CPUs, err)
		}
		// Pinned to a small partition, the runtime would size GOMAXPROCS to
		// it (1 on a one-CPU partition). A pager thread coming back from
		// epoll_wait would then wait for the only P whenever another
		// goroutine (status, forwarding) runs. One P more than the pager
		// threads keeps a P free for them; every thread stays on the
		// partition's CPUs either way.
		runtime.GOMAXPROCS(max(grant.CPUs.Len(), v.cfg.PagerThreads) + 1)
	}
	if err := v.prepare(); err != nil {
		return err
	}
	threads := v.cfg.PagerThreads
	switch {
	case threads > 0:
		v.placement, v.placementWhy = config.PlacementSibling, "pager_threads is set: every pager thread may run on every CPU of the partition"
	case grant.Pager == wire.PagerCentral && v.cfg.PagerPlacement == config.PlacementAuto && grant.CPUs.Len() > 1:
		v.placement, v.placementWhy = config.PlacementSameCPU, "central pager mode: core serves the faults, nothing to measure"
	default:
		v.placement, v.placementWhy = choosePlacement(v.cfg.PagerPlacement, grant.CPUs, func(p config.PagerPlacement) (time.Duration, error) {
			return measurePlacement(p, grant.CPUs)
		})
		threads = placementThreads(v.placement, grant.CPUs)
	}
	v.log.Info("pager placement", "placement", v.placement, "why", v.placementWhy)
	var replicaFn func(string, uint64, []byte) bool
	if v.cfg.ReplicaBudget > 0 {
		v.replicas = replica.New(v.cfg.Node, v.cfg.ReplicaBudget, linux.PageSize())
		replicaFn = v.replicas.Lookup
	}
	if v.pgr, err = pager.New(pager.Options{
		Replica:     replicaFn,
		CPUs:        grant.CPUs,
		Threads:     threads,
		FaultAround: v.faultAround(),
		Forward:     v.forward,
		TryForward:  v.tryForward,
		// An UNMAP the pager read changes core's view too.
		RegionsChanged: func(id uint64) { go v.regionsChanged(id) },
		Log:            v.log.With("part", "pager"),
		// Persistent dataspaces: sync write tracking on request (else
		// async where the kernel has it).
		SyncWriteTracking: syncWriteTracking(),
	}); err != nil {
		return fmt.Errorf("vcore: start the pager: %w", err)
	}
	if v.ln, err = wire.Listen(v.cfg.Socket, 0o600, -1, v.log); err != nil {
		return fmt.Errorf("vcore: %w", err)
	}
	v.initMoves(ctx)
	if err := v.startSubsystems(ctx); err != nil {
		return err
	}
	if err := v.startMovedIn(ctx); err != nil {
		return err
	}
	v.registerMetrics()

	var wg sync.WaitGroup
	sctx, cancel := context.WithCancel(context.Background())
	wg.Go(func() {
		if err := v.ln.Serve(sctx, v.serveWorker, v.httpHandler()); err != nil {
			v.log.Error("socket stopped", "err", err)
		}
	})
	v.loopStarted = true
	wg.Go(func() { v.sendLoop(sctx) })
	wg.Go(func() { v.coreLoop(sctx, conn) })
	wg.Go(func() { v.reapLoop(sctx) })
	v.checkpointLoops(ctx, &wg)
	v.log.Info("vcore running", "socket", v.cfg.Socket, "subsystems", len(v.subs))

	<-ctx.Done()
	v.log.Info("stopping")
	v.shutdown()
	cancel()
	wg.Wait()
	v.log.Info("stopped")
	return nil
}

// faultAround is the vcore file's fault_around when it differs from the
// default, else core's.
func (v *VCore) faultAround() int {
	if v.cfg.FaultAround != config.DefaultFaultAround || v.grant.FaultAround < 1 {
		return v.cfg.FaultAround
	}
	return v.grant.FaultAround
}

// prepare builds what the workers' dataspaces need: the content sources of
// the local dataspaces and the catalogue of core's.
func (v *VCore) prepare() error {
	v.core = map[string]wire.DataspaceInfo{}
	for _, d := range v.grant.Dataspaces {
		v.core[d.Name] = d
	}
	v.groups = map[string]string{}
	for _, sc := range v.cfg.Subsystems {
		s := &subsystem{cfg: sc, cgroup: v.grant.Cgroup + "/" + sc.Name, sources: map[string]content.Source{}}
		s.quota = ramalloc.NewQuota(sc.Name, int64(sc.Memory))
		for _, d := range sc.Local {
			src, err := v.openSource(d)
			if err == nil && d.Persistent {
				var p *persistentDS
				if p, err = v.openPersistent(sc.Name, d, src); err == nil {
					src = p
					v.closers = append(v.closers, p)
				}
			}
			if err != nil {
				return fmt.Errorf("vcore: subsystem %s: dataspace %s: %w", sc.Name, d.Name, err)
			}
			s.sources[d.Name] = src
		}
		v.subs = append(v.subs, s)
		v.groups[sc.Name] = s.cgroup
	}
	return nil
}

func (v *VCore) openSource(d config.Dataspace) (content.Source, error) {
	var (
		src content.Source
		c   io.Closer
		err error
	)
	if d.Content == config.ContentFile {
		src, c, err = content.File(d.Source) // the vcore's own configuration names the file
	} else {
		src, c, err = content.Open(d.Content, d.Seed, nil)
	}
	if err != nil {
		return nil, err
	}
	if c != nil {
		v.closers = append(v.closers, c)
	}
	return src, nil
}

// shutdown stops the subsystems, deletes their cgroups, releases the lease
// and closes the socket and the pager. It is called once, from Run.
func (v *VCore) shutdown() {
	var wg sync.WaitGroup
	for _, s := range v.runningSubs() {
		wg.Go(func() { v.stopSubsystem(s) })
	}
	wg.Wait()
	if len(v.subs) > 0 && v.cfg.StateDir != "" {
		if err := os.Remove(v.statePath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			v.log.Warn("remove state file", "err", err)
		}
	}
	if v.ln != nil {
		v.ln.Close()
	}
	v.release()
	if v.pgr != nil {
		if err := v.pgr.Close(); err != nil {
			v.log.Warn("close pager", "err", err)
		}
	}
	if v.replicas != nil {
		v.replicas.Close() // the pager threads that read it are gone
	}
	v.mu.Lock()
	for _, c := range v.closers {
		c.Close()
	}
	v.closers = nil
	v.mu.Unlock()
}

// release gives the lease back: Release, then up to releaseWait for the Ack.
func (v *VCore) release() {
	v.mu.Lock()
	v.stopping = true
	conn := v.conn
	ack := make(chan struct{})
	v.releaseOK = ack
	v.mu.Unlock()
	var err error
	if conn != nil {
		err = conn.SendMsg(&wire.Release{Reason: "vcore stopping"})
	}
	if conn == nil {
		v.log.Warn("core unreachable: the lease is not released explicitly")
		return
	}
	if err != nil {
		v.log.Warn("send Release", "err", err)
	} else {
		if v.loopStarted {
			// The core loop reads the Ack.
			select {
			case <-ack:
			case <-time.After(releaseWait):
				v.log.Warn("core did not acknowledge Release", "wait", releaseWait)
			}
		} else {
			readAck(conn, v.log)
		}
	}
	conn.Close()
}

// readAck waits for the Ack of Release on a connection nobody else reads.
func readAck(conn *wire.Conn, log *slog.Logger) {
	conn.SetReadDeadline(time.Now().Add(releaseWait))
	for {
		f, err := conn.Recv()
		if err != nil {
			log.Warn("core did not acknowledge Release", "err", err)
			return
		}
		f.CloseFDs()
		if f.Type == wire.TypeAck {
			return
		}
	}
}

// statePath is the vcore's state file.
func (v *VCore) statePath() string { return filepath.Join(v.cfg.StateDir, "vcore.json") }

// Info is the /v1/info document.
func (v *VCore) Info() api.Info {
	v.mu.Lock()
	connected := v.conn != nil
	mode := string(v.grant.Pager)
	cpus := v.grant.CPUs
	v.mu.Unlock()
	node := int(v.cfg.Node)
	return api.Info{
		Role:          "vcore",
		Pid:           os.Getpid(),
		PagerMode:     mode,
		Node:          &node,
		CPUs:          cpus.String(),
		CoreConnected: &connected,
		Started:       v.started,
	}
}

// sortedSubs returns the subsystems by name.
func (v *VCore) sortedSubs() []*subsystem {
	out := slices.Clone(v.subs)
	slices.SortFunc(out, func(a, b *subsystem) int { return cmp.Compare(a.cfg.Name, b.cfg.Name) })
	return out
}
