package vcore

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/config"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/linux"
)

func TestChoosePlacement(t *testing.T) {
	one, two := hw.NewSet[hw.CPU](3), hw.NewSet[hw.CPU](2, 3)
	costs := func(same, sib time.Duration, errSame, errSib error) (func(config.PagerPlacement) (time.Duration, error), *int) {
		calls := new(int)
		return func(p config.PagerPlacement) (time.Duration, error) {
			*calls++
			if p == config.PlacementSibling {
				return sib, errSib
			}
			return same, errSame
		}, calls
	}
	fail := errors.New("no uffd")
	for _, c := range []struct {
		name          string
		want          config.PagerPlacement
		cpus          hw.CPUSet
		same, sib     time.Duration
		errSame, errB error
		got           config.PagerPlacement
		why           string
		measures      int
	}{
		{"auto, one CPU", config.PlacementAuto, one, 0, 0, nil, nil, config.PlacementSameCPU, "one CPU", 0},
		{"sibling, one CPU", config.PlacementSibling, one, 0, 0, nil, nil, config.PlacementSameCPU, "sibling asked for", 0},
		{"same-cpu configured", config.PlacementSameCPU, two, 0, 0, nil, nil, config.PlacementSameCPU, "configured", 0},
		{"sibling configured", config.PlacementSibling, two, 0, 0, nil, nil, config.PlacementSibling, "configured", 0},
		{"auto, sibling cheaper", config.PlacementAuto, two, 9 * time.Microsecond, 4 * time.Microsecond, nil, nil, config.PlacementSibling, "sibling 4µs", 2},
		{"auto, same-cpu cheaper", config.PlacementAuto, two, 3 * time.Microsecond, 4 * time.Microsecond, nil, nil, config.PlacementSameCPU, "same-cpu 3µs", 2},
		{"auto, a tie keeps same-cpu", config.PlacementAuto, two, 3 * time.Microsecond, 3 * time.Microsecond, nil, nil, config.PlacementSameCPU, "measured", 2},
		{"auto, sibling fails", config.PlacementAuto, two, 3 * time.Microsecond, 0, nil, fail, config.PlacementSameCPU, "no uffd", 2},
		{"auto, same-cpu fails", config.PlacementAuto, two, 0, time.Microsecond, fail, nil, config.PlacementSibling, "no uffd", 2},
	} {
		m, calls := costs(c.same, c.sib, c.errSame, c.errB)
		got, why := choosePlacement(c.want, c.cpus, m)
		if got != c.got || !strings.Contains(why, c.why) || *calls != c.measures {
			t.Errorf("%s: %s (%q) after %d measurements, want %s (%q) after %d", c.name, got, why, *calls, c.got, c.why, c.measures)
		}
	}
	if placementThreads(config.PlacementSameCPU, two) != 0 || placementThreads(config.PlacementSibling, two) != 2 {
		t.Error("placementThreads: same-cpu must be per CPU (0), sibling one thread per CPU allowed on all")
	}
}

// TestMeasurePlacement: the probe really serves its faults, both ways, on
// this machine's CPUs.
func TestMeasurePlacement(t *testing.T) {
	if _, err := linux.UffdFeatures(); err != nil {
		t.Skipf("userfaultfd: %v", err)
	}
	cpus, err := linux.ThreadAffinity()
	if err != nil {
		t.Skipf("affinity: %v", err)
	}
	for _, p := range []config.PagerPlacement{config.PlacementSameCPU, config.PlacementSibling} {
		d, err := measurePlacement(p, cpus)
		if err != nil || d <= 0 {
			t.Errorf("%s on %s: %v, %v", p, cpus, d, err)
		}
		t.Logf("%s on %s: %v per fault", p, cpus, d)
	}
}
