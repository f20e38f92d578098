package cgroups

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vcored/vcored/internal/linux"
)

// Freezing a group stops every process in its subtree at a point where its
// memory is consistent (a checkpoint reads the pages of a frozen subsystem).
//
// On v2 that is the group's own cgroup.freeze, and cgroup.events says
// "frozen 1" once every task has stopped. On v1/hybrid the freezer is a
// separate hierarchy that vcored's groups do not live in (v1Controllers):
// Freeze makes <root>/freezer/<path>, moves the group's processes there and
// writes freezer.state FROZEN; Thaw writes THAWED, moves them back to the
// freezer root and removes the directory again, so a freezer directory
// exists only while its group is frozen.
//
// Plain file operations, not containerd's Freeze/Thaw: those loop on the
// state file with no deadline (a task stuck in an uninterruptible sleep
// would hang the caller), and cgroup1 would need the freezer in every
// group's hierarchy from its creation.

// ErrFreezeTimeout: the group did not reach the frozen (or thawed) state
// before the context's deadline. Freeze has thawed it again.
var ErrFreezeTimeout = errors.New("cgroups: freezer state not reached")

// freezerDir is the group's v1 freezer directory.
func (g *Group) freezerDir() string { return filepath.Join(g.m.root, "freezer", g.path) }

// Freeze stops every process of the group's subtree and returns once the
// kernel reports them all frozen. Give ctx a deadline: past it (or on any
// error) the group is thawed again and the error says so. Freezing a
// frozen group is not an error. Always pair a successful Freeze with Thaw.
func (g *Group) Freeze(ctx context.Context) error {
	_, err := g.FreezeStart(ctx)
	return err
}

// FreezeStart is Freeze, and also returns when the freeze began: just
// before the first write of the freezer state (v2 cgroup.freeze 1, v1
// freezer.state FROZEN). The processes stop from then on; before it they
// still ran (v1: while they were moved into the freezer cgroup, which
// takes a grace period of the kernel's, ~10 ms on a loaded VM). The time
// is zero if Freeze failed before it.
func (g *Group) FreezeStart(ctx context.Context) (time.Time, error) {
	var began time.Time
	var err error
	if g.m.unified() {
		err = g.freezeV2(ctx, &began)
	} else {
		err = g.freezeV1(ctx, &began)
	}
	if err == nil {
		return began, nil
	}
	// Leave the group running, as it was.
	tctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if terr := g.Thaw(tctx); terr != nil {
		err = errors.Join(err, terr)
	}
	return began, fmt.Errorf("cgroups: freeze %s: %w", g.path, err)
}

// Thaw lets the group's processes run again and waits until the kernel says
// they are (ctx bounds the wait). Thawing a group that is not frozen is not
// an error.
func (g *Group) Thaw(ctx context.Context) error {
	var err error
	if g.m.unified() {
		err = g.thawV2(ctx)
	} else {
		err = g.thawV1(ctx)
	}
	if err != nil {
		return fmt.Errorf("cgroups: thaw %s: %w", g.path, err)
	}
	return nil
}

// Frozen reports whether the group is frozen (v2: cgroup.events frozen 1;
// v1: its freezer directory says FROZEN).
func (g *Group) Frozen() (bool, error) {
	if g.m.unified() {
		return readEventsFrozen(filepath.Join(g.m.dirs(g.path)[0], "cgroup.events"))
	}
	b, err := os.ReadFile(filepath.Join(g.freezerDir(), "freezer.state"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return strings.TrimSpace(string(b)) == "FROZEN", nil
}

// waitFor polls cond until it holds or ctx ends (a short sleep that grows to
// 10ms: a freeze normally completes in microseconds).
func waitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	sleep := 100 * time.Microsecond
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s (%v)", ErrFreezeTimeout, what, ctx.Err())
		case <-time.After(sleep):
		}
		sleep = min(2*sleep, 10*time.Millisecond)
	}
}

func (g *Group) freezeV2(ctx context.Context, began *time.Time) error {
	dir := g.m.dirs(g.path)[0]
	*began = time.Now()
	if err := writeFile(filepath.Join(dir, "cgroup.freeze"), "1"); err != nil {
		return err
	}
	events := filepath.Join(dir, "cgroup.events")
	return waitFor(ctx, events+" frozen 1", func() (bool, error) { return readEventsFrozen(events) })
}

func (g *Group) thawV2(ctx context.Context) error {
	dir := g.m.dirs(g.path)[0]
	if err := writeFile(filepath.Join(dir, "cgroup.freeze"), "0"); err != nil {
		return err
	}
	events := filepath.Join(dir, "cgroup.events")
	return waitFor(ctx, events+" frozen 0", func() (bool, error) {
		f, err := readEventsFrozen(events)
		return !f, err
	})
}

// readEventsFrozen reads the "frozen" key of a v2 cgroup.events file.
func readEventsFrozen(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, _ := strings.Cut(s.Text(), " ")
		if k == "frozen" {
			return v == "1", nil
		}
	}
	if err := s.Err(); err != nil {
		return false, err
	}
	return false, fmt.Errorf("%s has no \"frozen\" key (kernel older than 5.2?): %w", path, linux.ErrNotSupported)
}

// freezerProcs reads the pids in a v1 cgroup.procs.
func freezerProcs(dir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s/cgroup.procs: %q: %w", dir, f, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// moveProcs writes each pid into dir's cgroup.procs; a process that exited
// meanwhile is not an error.
func moveProcs(dir string, pids []int) error {
	for _, pid := range pids {
		err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid))
		if err != nil && !errors.Is(err, linux.ESRCH) {
			return err
		}
	}
	return nil
}

func (g *Group) freezeV1(ctx context.Context, began *time.Time) error {
	root := filepath.Join(g.m.root, "freezer")
	if _, err := os.Stat(filepath.Join(root, "freezer.state")); err == nil {
		// The root freezer cgroup has no state file; a mount that has one
		// is not a freezer root.
		return fmt.Errorf("%s is not the freezer hierarchy's root", root)
	}
	if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
		return unavailable("v1 freezer hierarchy at "+root, err)
	}
	dir := g.freezerDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	state := filepath.Join(dir, "freezer.state")
	// A process the group's processes fork between listing and moving
	// stays behind: list again once frozen until nothing is missing (a
	// process moved into a frozen freezer cgroup is frozen on attach).
	for round := 0; ; round++ {
		pids, err := g.Procs()
		if err != nil {
			return err
		}
		in, err := freezerProcs(dir)
		if err != nil {
			return err
		}
		var missing []int
		for _, pid := range pids {
			if !slices.Contains(in, pid) {
				missing = append(missing, pid)
			}
		}
		if round > 0 && len(missing) == 0 {
			return nil
		}
		if round > 100 {
			return fmt.Errorf("%w: processes keep appearing in %s", ErrFreezeTimeout, g.path)
		}
		if err := moveProcs(dir, missing); err != nil {
			return err
		}
		if began.IsZero() {
			*began = time.Now()
		}
		if err := writeFile(state, "FROZEN"); err != nil {
			return err
		}
		err = waitFor(ctx, state+" FROZEN", func() (bool, error) {
			b, err := os.ReadFile(state)
			return strings.TrimSpace(string(b)) == "FROZEN", err
		})
		if err != nil {
			return err
		}
	}
}

func (g *Group) thawV1(ctx context.Context) error {
	dir := g.freezerDir()
	state := filepath.Join(dir, "freezer.state")
	if _, err := os.Stat(state); errors.Is(err, fs.ErrNotExist) {
		return nil // never frozen, or thawed already
	}
	if err := writeFile(state, "THAWED"); err != nil {
		return err
	}
	err := waitFor(ctx, state+" THAWED", func() (bool, error) {
		b, err := os.ReadFile(state)
		return strings.TrimSpace(string(b)) == "THAWED", err
	})
	if err != nil {
		return err
	}
	// Back to the freezer root, and remove the directories: the leaf and
	// each parent left empty (vcored makes no other freezer groups).
	// Running again, the processes may fork into the freezer directory
	// while they are moved: move until it stays empty.
	root := filepath.Join(g.m.root, "freezer")
	for round := 0; ; round++ {
		pids, err := freezerProcs(dir)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			break
		}
		if round > 100 {
			return fmt.Errorf("processes keep appearing in %s: %v", dir, pids)
		}
		if err := moveProcs(root, pids); err != nil {
			return err
		}
	}
	for d := dir; d != root && strings.HasPrefix(d, root+"/"); d = filepath.Dir(d) {
		if err := rmdir(d); err != nil {
			if d == dir {
				return err
			}
			break // a parent still in use
		}
	}
	return nil
}
