package policy

import "errors"

// Failure classes; every error of this package wraps one of them.
var (
	// ErrUnknownCPU: a CPU that the machine does not have, or that is offline.
	ErrUnknownCPU = errors.New("policy: unknown or offline CPU")
	// ErrNothingToPartition: after the reservations no node has a CPU left.
	ErrNothingToPartition = errors.New("policy: nothing left to partition")
	// ErrNotEnoughCPUs: a count larger than the CPUs available.
	ErrNotEnoughCPUs = errors.New("policy: not enough CPUs")
	// ErrOutsidePartition: an explicit CPU list that leaves the partition.
	ErrOutsidePartition = errors.New("policy: CPUs outside the partition")
	// ErrBadRequest: a malformed request (a count below 1, a count and a list at once).
	ErrBadRequest = errors.New("policy: bad request")
)
