package policy

import (
	"errors"
	"fmt"

	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/topology"
)

// Request is one subsystem's CPU demand within a partition: a Count picked by
// topology, an explicit List, or (zero value) the whole partition.
type Request struct {
	Count int
	List  hw.CPUSet
}

// CheckRequest reports whether r can be met inside partition on its own:
// a list must lie inside the partition, a count must fit in it.
func CheckRequest(partition hw.CPUSet, r Request) error {
	switch {
	case r.Count < 0 || (r.Count > 0 && !r.List.IsEmpty()):
		return fmt.Errorf("%w: count %d with list %q", ErrBadRequest, r.Count, r.List)
	case !r.List.IsSubsetOf(partition):
		return fmt.Errorf("%w: CPUs %s are not in the partition %q", ErrOutsidePartition, r.List.Difference(partition), partition)
	case r.Count > partition.Len():
		return fmt.Errorf("%w: %d CPUs wanted, the partition %q has %d", ErrNotEnoughCPUs, r.Count, partition, partition.Len())
	case partition.IsEmpty():
		return fmt.Errorf("%w: the partition has no CPUs", ErrNotEnoughCPUs)
	}
	return nil
}

// AssignSubsystems resolves the CPU requests of a vcore's subsystems inside
// its partition; out[i] is the cpuset of reqs[i].
//
//   - An explicit list is taken as it is (it must lie inside the partition).
//   - The zero request gets the whole partition.
//   - Counts are served in request order with PickCPUs, from the CPUs that
//     no list and no earlier count has taken when enough are left, and
//     otherwise from the whole partition: subsystems then share CPUs. Sharing
//     is allowed because vcored's cpusets are never cpu_exclusive; a
//     partition smaller than the sum of its requests is over-committed, not
//     refused.
//
// Pure and deterministic: the same inputs give the same cpusets, so a
// restarted vcore computes the same assignment again. Every bad request is
// reported (errors.Join), each naming its index.
func AssignSubsystems(m *topology.Machine, partition hw.CPUSet, reqs []Request) ([]hw.CPUSet, error) {
	var errs []error
	for i, r := range reqs {
		if err := CheckRequest(partition, r); err != nil {
			errs = append(errs, fmt.Errorf("request %d: %w", i, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make([]hw.CPUSet, len(reqs))
	var taken hw.CPUSet
	for i, r := range reqs {
		switch {
		case !r.List.IsEmpty():
			out[i] = r.List
			taken = taken.Union(r.List)
		case r.Count == 0:
			out[i] = partition
		}
	}
	for i, r := range reqs {
		if r.Count == 0 {
			continue
		}
		from := partition.Difference(taken)
		if from.Len() < r.Count {
			from = partition
		}
		cpus, err := PickCPUs(m, from, r.Count)
		if err != nil {
			return nil, fmt.Errorf("request %d: %w", i, err)
		}
		out[i] = cpus
		taken = taken.Union(cpus)
	}
	return out, nil
}
