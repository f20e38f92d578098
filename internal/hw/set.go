package hw

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// CPU is a logical CPU id as the kernel numbers it (/sys/devices/system/cpu/cpuN).
type CPU int

// Node is a NUMA node id (/sys/devices/system/node/nodeN). Ids may have holes.
type Node int

// ID is the constraint for the ids a Set holds.
type ID interface{ ~int }

// MaxID bounds the ids a Set accepts. Linux supports at most 8192 CPUs
// (CONFIG_NR_CPUS) and 1024 nodes; anything larger in a list is a typo or an
// attack on the allocator.
const MaxID = 1<<16 - 1

// ErrBadList is wrapped by every Parse error.
var ErrBadList = errors.New("hw: bad id list")

// Set is an immutable set of ids. The zero value is the empty set. Methods
// never modify the receiver; they return new sets.
type Set[T ID] struct {
	words []uint64 // bit i of words[i/64] set ⇔ id i in the set; no trailing zero words
}

// CPUSet is a set of CPU ids.
type CPUSet = Set[CPU]

// NodeSet is a set of NUMA node ids.
type NodeSet = Set[Node]

// NewSet returns the set of the given ids. It panics on a negative id or one
// above MaxID: those are programming errors, not input.
func NewSet[T ID](ids ...T) Set[T] {
	var b builder
	for _, id := range ids {
		if id < 0 || int(id) > MaxID {
			panic(fmt.Sprintf("hw.NewSet: id %d out of range", id))
		}
		b.add(int(id))
	}
	return Set[T]{words: b.trim()}
}

// Range returns the set {lo, lo+1, ..., hi}; empty when hi < lo.
func Range[T ID](lo, hi T) Set[T] {
	var b builder
	for i := lo; i <= hi; i++ {
		b.add(int(i))
	}
	return Set[T]{words: b.trim()}
}

// ParseCPUSet parses a Linux CPU list ("0-3,8"). See Parse.
func ParseCPUSet(s string) (CPUSet, error) { return Parse[CPU](s) }

// ParseNodeSet parses a Linux node list ("0,2"). See Parse.
func ParseNodeSet(s string) (NodeSet, error) { return Parse[Node](s) }

// MustParse is Parse for literals in code and tests; it panics on error.
func MustParse[T ID](s string) Set[T] {
	set, err := Parse[T](s)
	if err != nil {
		panic(err)
	}
	return set
}

// Parse reads the Linux list format used by sysfs and cgroupfs: comma
// separated ids or inclusive ranges "a-b". Surrounding white space (the
// trailing newline of a sysfs file) is ignored; the empty string is the empty
// set. The error names the bad token.
func Parse[T ID](s string) (Set[T], error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Set[T]{}, nil
	}
	var b builder
	for tok := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(tok, "-")
		a, err := parseID(lo)
		if err != nil {
			return Set[T]{}, fmt.Errorf("%w %q: token %q: %v", ErrBadList, s, tok, err)
		}
		z := a
		if isRange {
			if z, err = parseID(hi); err != nil {
				return Set[T]{}, fmt.Errorf("%w %q: token %q: %v", ErrBadList, s, tok, err)
			}
			if z < a {
				return Set[T]{}, fmt.Errorf("%w %q: token %q: range end %d is below its start %d", ErrBadList, s, tok, z, a)
			}
		}
		for i := a; i <= z; i++ {
			b.add(i)
		}
	}
	return Set[T]{words: b.trim()}, nil
}

func parseID(s string) (int, error) {
	if s == "" {
		return 0, errors.New("empty id")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("%q is not a decimal id", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > MaxID {
		return 0, fmt.Errorf("id %s exceeds the maximum %d", s, MaxID)
	}
	return n, nil
}

// Len is the number of ids in the set.
func (s Set[T]) Len() int {
	n := 0
	for _, w := range s.words {
		n += bits.OnesCount64(w)
	}
	return n
}

// IsEmpty reports whether the set has no ids.
func (s Set[T]) IsEmpty() bool { return len(s.words) == 0 }

// Contains reports whether id is in the set.
func (s Set[T]) Contains(id T) bool {
	i := int(id)
	return i >= 0 && i/64 < len(s.words) && s.words[i/64]&(1<<(i%64)) != 0
}

// IsSubsetOf reports whether every id of s is in o.
func (s Set[T]) IsSubsetOf(o Set[T]) bool { return s.Difference(o).IsEmpty() }

// Equal reports whether both sets hold the same ids.
func (s Set[T]) Equal(o Set[T]) bool {
	if len(s.words) != len(o.words) {
		return false
	}
	for i := range s.words {
		if s.words[i] != o.words[i] {
			return false
		}
	}
	return true
}

// Slice returns the ids in ascending order.
func (s Set[T]) Slice() []T {
	out := make([]T, 0, s.Len())
	for i, w := range s.words {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			out = append(out, T(i*64+b))
			w &^= 1 << b
		}
	}
	return out
}

// Min returns the smallest id; ok is false for the empty set.
func (s Set[T]) Min() (id T, ok bool) {
	for i, w := range s.words {
		if w != 0 {
			return T(i*64 + bits.TrailingZeros64(w)), true
		}
	}
	return 0, false
}

// Union returns s ∪ o.
func (s Set[T]) Union(o Set[T]) Set[T] {
	a, b := s.words, o.words
	if len(a) < len(b) {
		a, b = b, a
	}
	out := append([]uint64(nil), a...)
	for i, w := range b {
		out[i] |= w
	}
	return Set[T]{words: trim(out)}
}

// Intersect returns s ∩ o.
func (s Set[T]) Intersect(o Set[T]) Set[T] {
	n := min(len(s.words), len(o.words))
	out := make([]uint64, n)
	for i := range n {
		out[i] = s.words[i] & o.words[i]
	}
	return Set[T]{words: trim(out)}
}

// Difference returns s \ o.
func (s Set[T]) Difference(o Set[T]) Set[T] {
	out := append([]uint64(nil), s.words...)
	for i := range min(len(out), len(o.words)) {
		out[i] &^= o.words[i]
	}
	return Set[T]{words: trim(out)}
}

// String returns the canonical Linux list form: ascending, runs of consecutive
// ids collapsed into ranges as the kernel prints them ("0-3,8,10-11"), "" for the empty set.
// Parse(s.String()) == s for every set.
func (s Set[T]) String() string {
	var sb strings.Builder
	ids := s.Slice()
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		if sb.Len() > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(strconv.Itoa(int(ids[i])))
		if j > i {
			sb.WriteByte('-')
			sb.WriteString(strconv.Itoa(int(ids[j])))
		}
		i = j + 1
	}
	return sb.String()
}

// MarshalText encodes the set in list form, so sets are plain strings in
// JSON and TOML.
func (s Set[T]) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses the list form.
func (s *Set[T]) UnmarshalText(b []byte) error {
	v, err := Parse[T](string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

type builder struct{ words []uint64 }

func (b *builder) add(i int) {
	for i/64 >= len(b.words) {
		b.words = append(b.words, 0)
	}
	b.words[i/64] |= 1 << (i % 64)
}

func (b *builder) trim() []uint64 { return trim(b.words) }

func trim(w []uint64) []uint64 {
	for len(w) > 0 && w[len(w)-1] == 0 {
		w = w[:len(w)-1]
	}
	if len(w) == 0 {
		return nil
	}
	return w
}
