// Package hw holds the small leaf types every other vcored package speaks:
// CPU and NUMA node ids, immutable sets of them in the Linux list format
// ("0-3,8,10-11"), and byte sizes ("512MiB").
//
// It imports nothing from the project, so anything may import it.
package hw
