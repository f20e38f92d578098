package ckpt

import "fmt"

// Compact merges the oldest layers of the chain into one when it holds more
// than maxLayers, so that the chain has maxLayers layers afterwards: the
// merged layer holds, for each page any of them holds, its newest content.
// It is committed like any layer (atomic: a crash leaves the old chain) and
// reads every page it merges against its checksum first, so a corrupt
// layer stops the compaction with an error instead of being carried over.
// It reports whether it merged anything.
func (im *Image) Compact(maxLayers int) (bool, LayerInfo, error) {
	if maxLayers < 1 {
		return false, LayerInfo{}, fmt.Errorf("ckpt: compact to %d layers: want at least 1", maxLayers)
	}
	im.mu.Lock()
	if im.writing {
		im.mu.Unlock()
		return false, LayerInfo{}, errWriting
	}
	m := im.m
	if len(m.Layers) <= maxLayers {
		im.mu.Unlock()
		return false, LayerInfo{}, nil
	}
	k := len(m.Layers) - maxLayers + 1 // oldest layers to merge
	r, err := openReader(im.dir, m, m.Layers[:k])
	if err != nil {
		im.mu.Unlock()
		return false, LayerInfo{}, err
	}
	defer r.Close()
	pages := r.StoredPages()
	w, err := im.newLayerLocked(pages, k, true)
	if err != nil {
		im.mu.Unlock()
		return false, LayerInfo{}, err
	}
	im.writing = true
	im.mu.Unlock()

	ps := uint64(m.PageSize)
	const batch = 256
	buf := make([]byte, batch*ps)
	for i := 0; i < len(pages); {
		// Consecutive page indexes fill in one call.
		n := 1
		for n < batch && i+n < len(pages) && pages[i+n] == pages[i]+uint64(n) {
			n++
		}
		if err := r.Fill(buf[:uint64(n)*ps], pages[i]*ps); err != nil {
			w.Abort()
			return false, LayerInfo{}, fmt.Errorf("ckpt: compact %s: %w", im.dir, err)
		}
		if err := w.Write(buf[:uint64(n)*ps]); err != nil {
			return false, LayerInfo{}, err
		}
		i += n
	}
	info, err := w.Commit()
	if err != nil {
		return false, LayerInfo{}, err
	}
	return true, info, nil
}
