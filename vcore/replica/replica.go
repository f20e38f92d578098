// Package replica is a vcore's store of node-local replicas of core-owned
// read-only dataspaces (replica_budget).
package replica

import (
	"container/list"
	"fmt"
	"sync"

	"github.com/vcored/vcored/internal/content"
	"github.com/vcored/vcored/internal/hw"
	"github.com/vcored/vcored/internal/wire"
	"github.com/vcored/vcored/ramalloc"
)

// The first fault of a page of a core-owned dataspace on this node is
// forwarded to core as always. When core answers it, the vcore keeps a
// copy of the page in node-bound memory (ramalloc, at most replica_budget
// bytes, least recently used pages dropped beyond it); later faults of the
// page by any worker of this vcore are served by the pager thread from the
// copy (pager.Options.Replica), without a round trip to core.
//
// The copy is never read back from a worker (which may have written its
// private copy already). For zero and pattern content it is built from
// the content as core announced it (DataspaceInfo: a pure function of the
// offset) once core's ForwardDone says the fault was resolved. For file
// content it is the page core itself sent (wire.ReplicaPage, asked for by
// the Claim's ReplicaPages): core alone opens the file, no path is on the
// wire. A file dataspace is assumed not to change while core serves it
// (core reads it as it goes; a replica keeps what core read first).
// Dataspaces core.toml declares writable are never replicated.

// key is a page of a core-owned dataspace.
type key struct {
	ds   string
	page uint64 // offset ÷ page size
}

// Store is a vcore's replica store. Its methods are safe for concurrent
// use.
type Store struct {
	node  hw.Node
	ps    int
	slots int // budget in pages

	mu    sync.Mutex
	mem   *ramalloc.Region // allocated at the first fill
	index map[key]*list.Element
	lru   *list.List // of *entry, most recently used first
	used  int        // slots handed out so far (the first used are never freed)
	shut  bool       // closed: no more fills
	hits  uint64
	fills uint64
	drops uint64
}

type entry struct {
	key  key
	slot int
}

// New returns a store of budget bytes of node's memory (allocated at the
// first Fill) for pages of ps bytes.
func New(node hw.Node, budget hw.Bytes, ps int) *Store {
	return &Store{node: node, ps: ps, slots: int(budget) / ps, index: map[key]*list.Element{}, lru: list.New()}
}

// Replicable says whether pages of the core-owned dataspace info may be
// replicated from its announced content, and from what source.
func Replicable(info wire.DataspaceInfo) (content.Source, bool) {
	if info.Writable {
		return nil, false
	}
	switch info.Content { // "" (an older core that did not say): not replicated
	case wire.ContentZero:
		return content.Zero(), true
	case wire.ContentPattern:
		return content.Pattern(info.Seed), true
	}
	return nil, false
}

// FromCore says whether pages of the core-owned dataspace info are
// replicated from the bytes core sends (ReplicaPage): read-only file
// content.
func FromCore(info wire.DataspaceInfo) bool {
	return !info.Writable && info.Content == wire.ContentFile
}

// Lookup copies the replica of page off of ds into dst (one page) and
// reports whether there is one. It runs on pager threads: no I/O, a short
// lock.
func (s *Store) Lookup(ds string, off uint64, dst []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	el := s.index[key{ds, off / uint64(s.ps)}]
	if el == nil {
		return false
	}
	s.lru.MoveToFront(el)
	slot := el.Value.(*entry).slot
	copy(dst, s.mem.Bytes()[slot*s.ps:(slot+1)*s.ps])
	s.hits++
	return true
}

// Fill keeps page off of ds, built from src, dropping the least recently
// used page when the budget is full.
func (s *Store) Fill(ds string, off uint64, src content.Source) error {
	return s.fill(ds, off, func(page []byte) error { return src.Fill(page, off&^uint64(s.ps-1)) })
}

// FillBytes keeps page (one page: the bytes of page off of ds), dropping
// the least recently used page when the budget is full.
func (s *Store) FillBytes(ds string, off uint64, page []byte) error {
	if len(page) != s.ps {
		return fmt.Errorf("replica: page of %d bytes, want %d", len(page), s.ps)
	}
	return s.fill(ds, off, func(dst []byte) error { copy(dst, page); return nil })
}

// fill keeps page off of ds, written by put.
func (s *Store) fill(ds string, off uint64, put func(page []byte) error) error {
	if s.slots == 0 {
		return nil
	}
	k := key{ds, off / uint64(s.ps)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shut || s.index[k] != nil {
		return nil
	}
	if s.mem == nil {
		m, err := ramalloc.Alloc(s.node, s.slots*s.ps, ramalloc.Options{})
		if err != nil {
			return err
		}
		s.mem = m
	}
	var slot int
	if s.used < s.slots {
		slot = s.used
		s.used++
	} else {
		old := s.lru.Back()
		e := old.Value.(*entry)
		s.lru.Remove(old)
		delete(s.index, e.key)
		slot = e.slot
		s.drops++
	}
	page := s.mem.Bytes()[slot*s.ps : (slot+1)*s.ps]
	if err := put(page); err != nil {
		s.lru.PushBack(&entry{key: key{}, slot: slot}) // keep the slot, unreachable
		return err
	}
	s.index[k] = s.lru.PushFront(&entry{key: k, slot: slot})
	s.fills++
	return nil
}

// Stats returns the pages held, hits, fills and drops.
func (s *Store) Stats() (pages int, hits, fills, drops uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index), s.hits, s.fills, s.drops
}

// Close frees the memory; later Fills keep nothing.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem != nil {
		_ = s.mem.Free()
		s.mem = nil
	}
	s.index = map[key]*list.Element{}
	s.lru.Init()
	s.used = 0
	s.shut = true
}

// Memory is the store's memory so far (nil before the first Fill), for
// placement checks.
func (s *Store) Memory() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mem == nil {
		return nil
	}
	return s.mem.Bytes()[:s.used*s.ps]
}
