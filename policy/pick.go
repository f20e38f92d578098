package policy

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// PickCPUs chooses n CPUs of within, packed by topology the way kubelet's
// static CPU manager does ("takeByTopology"), with last-level-cache groups
// in the place of sockets:
//
//  1. as few LLC groups as possible: while n exceeds every group's free
//     CPUs, take the largest group whole; then take the rest from one
//     group that can hold it, choosing the group where the fewest picked
//     threads share their core with a thread outside the pick (whole SMT
//     sibling sets), then the smallest such group (keeping large groups
//     free for larger requests);
//  2. inside a group, whole cores (all SMT siblings free) first;
//  3. a remainder smaller than a core comes from cores whose siblings are
//     already taken or unavailable, then from whole cores, so that whole
//     cores stay whole.
//
// Ties go to the lowest CPU ids, so the answer is deterministic. within must
// hold online CPUs only (ErrUnknownCPU); n must be in [1, within.Len()]
// (ErrBadRequest, ErrNotEnoughCPUs).
func PickCPUs(m *topology.Machine, within hw.CPUSet, n int) (hw.CPUSet, error) {
	if n < 1 {
		return hw.CPUSet{}, fmt.Errorf("%w: CPU count %d must be at least 1", ErrBadRequest, n)
	}
	if bad := within.Difference(m.OnlineCPUs()); !bad.IsEmpty() {
		return hw.CPUSet{}, fmt.Errorf("%w: CPUs %s", ErrUnknownCPU, bad)
	}
	if n > within.Len() {
		return hw.CPUSet{}, fmt.Errorf("%w: %d wanted, %d in %q", ErrNotEnoughCPUs, n, within.Len(), within)
	}
	if n == within.Len() {
		return within, nil
	}
	groups := llcGroups(m, within)
	var picked hw.CPUSet
	for n > 0 {
		// The group that holds the rest best: fewest threads whose SMT
		// sibling stays outside the pick, then the smallest group, then
		// the lowest id.
		var best hw.CPUSet
		bestSplit, bestSize := 0, 0
		for _, g := range groups {
			if g.Len() < n {
				continue
			}
			pick := pickInGroup(m, g, within, n)
			split := splitThreads(m, pick)
			if best.IsEmpty() || split < bestSplit || split == bestSplit && g.Len() < bestSize {
				best, bestSplit, bestSize = pick, split, g.Len()
			}
		}
		if !best.IsEmpty() {
			return picked.Union(best), nil
		}
		// Otherwise the largest group whole (lowest id on ties).
		largest := 0
		for i, g := range groups {
			if g.Len() > groups[largest].Len() {
				largest = i
			}
		}
		picked = picked.Union(groups[largest])
		n -= groups[largest].Len()
		groups = slices.Delete(groups, largest, largest+1)
	}
	return picked, nil
}

// llcGroups splits avail by last-level cache, ordered by lowest CPU. A CPU
// with no known LLC is a group of its own.
func llcGroups(m *topology.Machine, avail hw.CPUSet) []hw.CPUSet {
	var groups []hw.CPUSet
	seen := hw.CPUSet{}
	for _, id := range avail.Slice() {
		if seen.Contains(id) {
			continue
		}
		g := hw.NewSet(id)
		if c, ok := m.CPUByID(id); ok && !c.LLC.IsEmpty() {
			g = c.LLC.Intersect(avail).Union(g)
		}
		seen = seen.Union(g)
		groups = append(groups, g)
	}
	return groups
}

// core is the available part of one physical core.
type core struct {
	cpus  hw.CPUSet
	whole bool // every SMT sibling is available
}

// pickInGroup takes n CPUs of group g (n ≤ g.Len()), whole cores first.
func pickInGroup(m *topology.Machine, g, avail hw.CPUSet, n int) hw.CPUSet {
	var cores []core
	seen := hw.CPUSet{}
	for _, id := range g.Slice() {
		if seen.Contains(id) {
			continue
		}
		sib := hw.NewSet(id)
		if c, ok := m.CPUByID(id); ok && !c.Siblings.IsEmpty() {
			sib = c.Siblings.Union(sib)
		}
		cpus := sib.Intersect(g)
		seen = seen.Union(cpus)
		cores = append(cores, core{cpus: cpus, whole: sib.IsSubsetOf(avail)})
	}
	var picked hw.CPUSet
	// Whole cores that fit entirely, lowest first.
	for i, c := range cores {
		if c.whole && c.cpus.Len() <= n {
			picked = picked.Union(c.cpus)
			n -= c.cpus.Len()
			cores[i].cpus = hw.CPUSet{}
		}
	}
	// The rest: threads of broken cores first, then of whole ones.
	slices.SortStableFunc(cores, func(a, b core) int {
		if a.whole != b.whole {
			if a.whole {
				return 1
			}
			return -1
		}
		return cmp.Compare(minOf(a.cpus), minOf(b.cpus))
	})
	for _, c := range cores {
		for _, id := range c.cpus.Slice() {
			if n == 0 {
				return picked
			}
			picked = picked.Union(hw.NewSet(id))
			n--
		}
	}
	return picked
}

// splitThreads counts the CPUs of pick whose SMT siblings are not all in
// pick: threads that share a core with someone else's work.
func splitThreads(m *topology.Machine, pick hw.CPUSet) int {
	n := 0
	for _, id := range pick.Slice() {
		if c, ok := m.CPUByID(id); ok && !c.Siblings.IsSubsetOf(pick) {
			n++
		}
	}
	return n
}

func minOf(s hw.CPUSet) hw.CPU {
	id, _ := s.Min()
	return id
}
