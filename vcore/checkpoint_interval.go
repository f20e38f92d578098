package vcore

import (
	"context"
	"errors"
	"sync"
	"time"
)

// checkpointLoops starts, on wg, one goroutine per subsystem of the vcore
// file that has a checkpoint_interval: every interval it checkpoints the
// subsystem as `vcored checkpoint` would, until ctx ends (the vcore is
// stopping; a checkpoint under way sees ctx end too). A subsystem that does
// not run at the tick (between restarts, moved to another node) is skipped
// until the next one; a failed checkpoint is logged and retried at the next
// tick (the image keeps its last complete checkpoint).
func (v *VCore) checkpointLoops(ctx context.Context, wg *sync.WaitGroup) {
	for _, s := range v.subs {
		every, name := s.cfg.CheckpointInterval, s.cfg.Name
		if every <= 0 {
			continue
		}
		wg.Go(func() {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				_, err := v.Checkpoint(ctx, name)
				switch {
				case err == nil, ctx.Err() != nil:
					// Checkpoint logs what it did.
				case errors.Is(err, errConflict):
					v.log.Debug("periodic checkpoint skipped: the subsystem does not run", "subsystem", name, "err", err)
				default:
					v.log.Warn("periodic checkpoint failed; the image keeps its last complete checkpoint", "subsystem", name, "every", every, "err", err)
				}
			}
		})
	}
}
