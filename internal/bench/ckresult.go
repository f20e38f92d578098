package bench

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/vcored/vcored/internal/hist"
)

// The checkpoint scenario (modes checkpoint, checkpoint_sync, restore):
// a worker (`vcored worker --ckpt-role …`) attaches a persistent dataspace
// and a plain one through its vcore and works through numbered steps.
// After step K it writes its CkptStep to <control>/step-K.json and waits
// for <control>/go-K, which the bench creates once it has done its part
// (a checkpoint through the vcore's API, a floor measurement). The first
// life of a restore worker waits for <control>/start before it attaches.

// Checkpoint worker roles.
const (
	CkptRoleCheckpoint = "checkpoint"
	CkptRoleRestore    = "restore"
)

// Kinds of CkptStep.
const (
	StepPopulate    = "populate"    // every page of both dataspaces written once (generation 1)
	StepTrack       = "track"       // one epoch of the write loop, untracked and tracked
	StepIncremental = "incremental" // 1 % of the persistent pages written
	StepDone        = "done"        // the first life verified everything and is about to exit
	StepRestored    = "restored"    // the restarted life restored and verified every page
)

// CkptStep is what a checkpoint-scenario worker reports after one step.
type CkptStep struct {
	Step int    `json:"step"`
	Kind string `json:"kind"`
	Pid  int    `json:"pid"`
	// Track: the write loop over a hot working set, the first Pages
	// pages, Passes passes of a full-page write each per epoch, on the
	// plain (untracked) and on the persistent (tracked) dataspace, pass by
	// pass in alternating order. UntrackedNS and TrackedNS are the
	// writing thread's CPU time (CLOCK_THREAD_CPUTIME_ID: async tracking's
	// write-protect faults are handled in it, and time the thread spends
	// preempted by the rest of the machine does not count), the …WallNS
	// the wall clock (sync tracking waits for the pager, off the CPU).
	Passes          int   `json:"passes,omitempty"`
	Pages           int   `json:"pages,omitempty"`
	UntrackedNS     int64 `json:"untracked_ns,omitempty"`
	TrackedNS       int64 `json:"tracked_ns,omitempty"`
	UntrackedWallNS int64 `json:"untracked_wall_ns,omitempty"`
	TrackedWallNS   int64 `json:"tracked_wall_ns,omitempty"`
	// Incremental: the pages written (each one once, a full-page write).
	WrittenPages int `json:"written_pages,omitempty"`
	// Done and Restored: pages whose every word held what was last written.
	VerifiedPages int `json:"verified_pages,omitempty"`
	// Done: wall clock (Unix ns) after the persistent dataspace was
	// detached, just before the first life exits for its restart.
	ExitUnixNS int64 `json:"exit_unix_ns,omitempty"`
	// Restored: wall clock at the restarted worker's package
	// initialisation (its first Go statement) and when its attach of the
	// persistent dataspace returned.
	StartUnixNS    int64 `json:"start_unix_ns,omitempty"`
	AttachedUnixNS int64 `json:"attached_unix_ns,omitempty"`
	// Restored: first-touch (read) latency of the persistent pages
	// (restored from the image) and of as many plain local pages (zero
	// content, the same pager), interleaved page by page.
	RestoreLatency hist.Snapshot `json:"restore_latency"`
	LocalLatency   hist.Snapshot `json:"local_latency"`
	// Restored: the remaining persistent pages first-touched in one
	// sequential pass: how many, and the pass's wall time.
	SeqPages  int   `json:"seq_pages,omitempty"`
	SeqWallNS int64 `json:"seq_wall_ns,omitempty"`
	// Restored with restore_prefetch (--ckpt-prefetch): the restarted
	// life touched nothing until PresentPages (every page of the
	// persistent dataspace) were present, PresentNS after its attach
	// began (pagemap, polled every millisecond).
	PresentPages int      `json:"present_pages,omitempty"`
	PresentNS    int64    `json:"present_ns,omitempty"`
	Errors       []string `json:"errors,omitempty"`
}

// CkptStepPath is where a worker with control directory dir writes step k.
func CkptStepPath(dir string, k int) string { return fmt.Sprintf("%s/step-%d.json", dir, k) }

// CkptGoPath is the file the bench creates to let the worker past step k.
func CkptGoPath(dir string, k int) string { return fmt.Sprintf("%s/go-%d", dir, k) }

// CkptStartPath is the file a restore worker's first life waits for.
func CkptStartPath(dir string) string { return dir + "/start" }

// CkptDonePath is the done step of a restore worker's first life: its
// existence tells the restarted life that it is the restarted one.
func CkptDonePath(dir string) string { return dir + "/done.json" }

// CkptRestoredPath is the result of a restore worker's restarted life.
func CkptRestoredPath(dir string) string { return dir + "/restored.json" }

// WriteCkptStep writes s as JSON to path (atomically: a temp file renamed).
func WriteCkptStep(path string, s *CkptStep) error {
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("bench: encode step: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: write step: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("bench: write step: %w", err)
	}
	return nil
}

// ReadCkptStep reads a step file.
func ReadCkptStep(path string) (*CkptStep, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bench: read step: %w", err)
	}
	var s CkptStep
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("bench: step %s: %w", path, err)
	}
	return &s, nil
}

// CkptWord is the 8-byte word at byte offset off of a page last written
// in generation gen by a checkpoint-scenario worker (seed: the run's). A
// full-page write stores it at every word; verification expects it.
func CkptWord(seed, gen, off uint64) uint64 { return CkptWordBase(seed, gen) ^ (off * CkptWordStep) }

// CkptWordBase and CkptWordStep compute CkptWord incrementally: the word
// at off is base ^ off×step, so a loop adds 8×step per word.
func CkptWordBase(seed, gen uint64) uint64 {
	return (seed * 0x9e3779b97f4a7c15) ^ (gen * 0xbf58476d1ce4e5b9) ^ 1
}

// CkptWordStep: see CkptWordBase.
const CkptWordStep = 0x94d049bb133111eb

// CkptIncrementalPage reports whether page i is written by incremental
// step k (1-based): every 100th page, shifted by k, so 1 % of the pages.
func CkptIncrementalPage(i, k int) bool { return i%100 == (k-1)%100 }
