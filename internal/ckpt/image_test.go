package ckpt

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/content"
)

const testPS = 4096

// model is what the image should hold: page index → contents.
type model map[uint64][]byte

// pageOf makes a recognizable page: the pattern of seed at the page's
// offset (so a page served at the wrong offset or from the wrong layer
// fails), or zero for seed 0.
func pageOf(seed, page uint64) []byte {
	b := make([]byte, testPS)
	if seed != 0 {
		content.Pattern(seed).Fill(b, page*testPS)
	}
	return b
}

// commitLayer writes pages (ascending) with contents from m.
func commitLayer(t testing.TB, im *Image, pages []uint64, full bool, m model) LayerInfo {
	t.Helper()
	w, err := im.NewLayer(pages, full)
	if err != nil {
		t.Fatal(err)
	}
	// Write in uneven batches to exercise the run logic.
	for i := 0; i < len(pages); {
		n := min(1+i%3, len(pages)-i)
		var buf []byte
		for _, p := range pages[i : i+n] {
			buf = append(buf, m[p]...)
		}
		if err := w.Write(buf); err != nil {
			t.Fatal(err)
		}
		i += n
	}
	info, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// checkReader compares every page of the image in dir with want (missing
// pages zero), one page at a time and in one Fill over everything.
func checkReader(t testing.TB, dir string, npages uint64, want model) {
	t.Helper()
	r, err := OpenReader(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	all := make([]byte, npages*testPS)
	if err := r.Fill(all, 0); err != nil {
		t.Fatal(err)
	}
	for p := range npages {
		exp := want[p]
		if exp == nil {
			exp = make([]byte, testPS)
		}
		got := make([]byte, testPS)
		if err := r.Fill(got, p*testPS); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, exp) {
			t.Fatalf("page %d differs (single Fill)", p)
		}
		if !bytes.Equal(all[p*testPS:(p+1)*testPS], exp) {
			t.Fatalf("page %d differs (whole Fill)", p)
		}
	}
	// An unaligned piece across a page boundary.
	if npages >= 2 {
		got := make([]byte, 100)
		if err := r.Fill(got, testPS-50); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, all[testPS-50:testPS+50]) {
			t.Fatal("unaligned Fill differs")
		}
	}
	if err := r.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestImageRoundTrip(t *testing.T) {
	dir := t.TempDir()
	const npages = 64
	im, err := Create(dir, npages*testPS, testPS)
	if err != nil {
		t.Fatal(err)
	}
	// A new image reads as zero.
	r, err := OpenReader(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !r.IsZero() || r.Size() != npages*testPS {
		t.Fatalf("empty image: IsZero %v Size %d", r.IsZero(), r.Size())
	}
	r.Close()
	var _ content.Source = r // the pager's interface

	want := model{}
	// Base: pages 0-9 with data, 10 and 11 all zero (stored without data).
	var base []uint64
	for p := range uint64(12) {
		base = append(base, p)
		want[p] = pageOf(map[bool]uint64{true: 0, false: 1}[p >= 10], p)
	}
	info := commitLayer(t, im, base, false, want) // the first layer is full anyway
	if !info.Base || info.Pages != 12 || info.DataPages != 10 || info.Layers != 1 {
		t.Fatalf("base layer info %+v", info)
	}
	if want := int64(dataOffset(12, testPS) + 10*testPS); info.Bytes != want {
		t.Errorf("base layer is %d bytes, want %d: zero pages must take no data", info.Bytes, want)
	}
	checkReader(t, dir, npages, want)

	// Incremental: only the dirty pages, newest wins.
	dirty := []uint64{3, 11, 40}
	for _, p := range dirty {
		want[p] = pageOf(2, p)
	}
	info = commitLayer(t, im, dirty, false, want)
	if info.Base || info.Pages != 3 || info.Layers != 2 {
		t.Fatalf("incremental layer info %+v", info)
	}
	checkReader(t, dir, npages, want)

	// A page zeroed again is stored (as zero), not left to the older layer.
	want[3] = pageOf(0, 3)
	commitLayer(t, im, []uint64{3}, false, want)
	checkReader(t, dir, npages, want)

	// Reopen for writing: the chain continues.
	im2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	want[63] = pageOf(3, 63)
	info = commitLayer(t, im2, []uint64{63}, false, want)
	if info.Layers != 4 || info.Seq != 4 {
		t.Fatalf("after reopen: %+v", info)
	}
	checkReader(t, dir, npages, want)

	// A full layer replaces the chain; the old files go.
	full := model{}
	var fp []uint64
	for p := uint64(0); p < npages; p += 2 {
		fp = append(fp, p)
		full[p] = pageOf(4, p)
	}
	info = commitLayer(t, im2, fp, true, full)
	if !info.Base || info.Layers != 1 {
		t.Fatalf("full layer info %+v", info)
	}
	checkReader(t, dir, npages, full)
	layers, _ := filepath.Glob(filepath.Join(dir, "layer-*"))
	if len(layers) != 1 || filepath.Base(layers[0]) != layerName(info.Seq) {
		t.Errorf("layer files after a full layer: %v", layers)
	}
}

func TestImageBadInputChangesNothing(t *testing.T) {
	dir := t.TempDir()
	im, err := Create(dir, 8*testPS, testPS)
	if err != nil {
		t.Fatal(err)
	}
	want := model{1: pageOf(1, 1)}
	commitLayer(t, im, []uint64{1}, false, want)
	before, _ := os.ReadFile(filepath.Join(dir, manifestName))

	for _, pages := range [][]uint64{{2, 1}, {1, 1}, {8}} {
		if _, err := im.NewLayer(pages, false); err == nil {
			t.Errorf("NewLayer(%v): no error", pages)
		}
	}
	w, err := im.NewLayer([]uint64{2, 3}, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := im.NewLayer([]uint64{4}, false); err == nil {
		t.Error("a second concurrent layer: no error")
	}
	if err := w.Write(make([]byte, 100)); err == nil {
		t.Error("Write of a partial page: no error")
	}
	if err := w.Write(make([]byte, 3*testPS)); err == nil {
		t.Error("Write of more pages than the layer has: no error")
	}
	if err := w.Write(pageOf(5, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err == nil {
		t.Error("Commit with a page missing: no error")
	}
	after, _ := os.ReadFile(filepath.Join(dir, manifestName))
	if !bytes.Equal(before, after) {
		t.Error("manifest changed by refused input")
	}
	checkReader(t, dir, 8, want)
	if _, err := Create(dir, 8*testPS, testPS); !errors.Is(err, os.ErrExist) {
		t.Errorf("Create over an image: %v", err)
	}
	for _, c := range []struct{ size, ps uint64 }{{0, testPS}, {testPS + 1, testPS}, {testPS * 3, 3000}, {1 << 20, 1 << 20}} {
		if _, err := Create(t.TempDir(), c.size, int(c.ps)); err == nil {
			t.Errorf("Create(size %d, page size %d): no error", c.size, c.ps)
		}
	}
	if _, err := OpenReader(t.TempDir()); err == nil {
		t.Error("OpenReader of an empty directory: no error")
	}
}

// A crash after the layer file is complete but before the manifest is
// renamed: the previous checkpoint is what the image holds, and the next
// commit cleans the leftover up.
func TestImageCrashBeforeManifestRename(t *testing.T) {
	dir := t.TempDir()
	im, err := Create(dir, 16*testPS, testPS)
	if err != nil {
		t.Fatal(err)
	}
	want := model{0: pageOf(1, 0), 5: pageOf(1, 5)}
	commitLayer(t, im, []uint64{0, 5}, false, want)

	crash := errors.New("simulated crash")
	afterWriteHook = func(what string) error {
		if what == "rename "+manifestName {
			return crash
		}
		return nil
	}
	w, err := im.NewLayer([]uint64{5, 6}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(append(pageOf(2, 5), pageOf(2, 6)...)); err != nil {
		t.Fatal(err)
	}
	_, err = w.Commit()
	afterWriteHook = func(string) error { return nil }
	if !errors.Is(err, crash) {
		t.Fatalf("Commit = %v, want the simulated crash", err)
	}
	// A fresh process opening the image sees the previous checkpoint.
	checkReader(t, dir, 16, want)
	// A leftover layer file (as a real crash would leave it) is ignored...
	leftover := filepath.Join(dir, layerName(2))
	if err := os.WriteFile(leftover, []byte("half a layer"), 0o600); err != nil {
		t.Fatal(err)
	}
	checkReader(t, dir, 16, want)
	// ...and replaced by the next commit.
	im2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	want[6] = pageOf(3, 6)
	info := commitLayer(t, im2, []uint64{6}, false, want)
	if info.Seq != 2 || info.Layers != 2 {
		t.Fatalf("commit after the crash: %+v", info)
	}
	checkReader(t, dir, 16, want)
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp")); len(tmps) != 0 {
		t.Errorf("temporary files left: %v", tmps)
	}
}

// flip xors one byte of a file.
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestImageCorruptionRefused(t *testing.T) {
	mk := func(t *testing.T) (string, string, model) {
		dir := t.TempDir()
		im, err := Create(dir, 8*testPS, testPS)
		if err != nil {
			t.Fatal(err)
		}
		want := model{1: pageOf(1, 1), 2: pageOf(1, 2), 4: pageOf(1, 4)}
		info := commitLayer(t, im, []uint64{1, 2, 4}, false, want)
		return dir, info.File, want
	}
	data := int64(dataOffset(3, testPS))
	for _, c := range []struct {
		name string
		off  func(layer string) (string, int64)
		open bool // refused at OpenReader (else at Fill of the page)
	}{
		{"header", func(l string) (string, int64) { return l, 20 }, true},
		{"magic", func(l string) (string, int64) { return l, 0 }, true},
		{"map", func(l string) (string, int64) { return l, headerSize + entrySize + 3 }, true},
		{"page data", func(l string) (string, int64) { return l, data + testPS + 77 }, false},
		{"manifest", func(l string) (string, int64) { return filepath.Join(filepath.Dir(l), manifestName), 30 }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir, layer, want := mk(t)
			file, off := c.off(layer)
			flip(t, file, off)
			r, err := OpenReader(dir)
			if c.open {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("OpenReader = %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			// Page 2 (the second data page) is bad; 1 and 4 still serve.
			got := make([]byte, testPS)
			for _, p := range []uint64{1, 4} {
				if err := r.Fill(got, p*testPS); err != nil || !bytes.Equal(got, want[p]) {
					t.Fatalf("good page %d: %v", p, err)
				}
			}
			err = r.Fill(got, 2*testPS)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "page 2") {
				t.Fatalf("Fill of the flipped page = %v, want ErrCorrupt naming page 2", err)
			}
			if !bytes.Equal(got, make([]byte, testPS)) {
				t.Error("bytes of a corrupt page were served")
			}
			// A fault-around Fill covering it fails too.
			if err := r.Fill(make([]byte, 4*testPS), 0); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Fill over the flipped page = %v", err)
			}
			if err := r.Verify(); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Verify = %v", err)
			}
			// Compaction refuses to carry a corrupt page over.
			im, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			commitLayer(t, im, []uint64{7}, false, model{7: pageOf(9, 7)})
			if _, _, err := im.Compact(1); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Compact over a corrupt layer = %v", err)
			}
		})
	}
	t.Run("torn", func(t *testing.T) {
		dir, layer, _ := mk(t)
		st, _ := os.Stat(layer)
		if err := os.Truncate(layer, st.Size()-1); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenReader(dir); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "torn") {
			t.Fatalf("OpenReader of a truncated layer = %v", err)
		}
	})
	t.Run("missing layer", func(t *testing.T) {
		dir, layer, _ := mk(t)
		os.Remove(layer)
		if _, err := OpenReader(dir); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("OpenReader without its layer = %v", err)
		}
	})
	t.Run("manifest torn", func(t *testing.T) {
		dir, _, _ := mk(t)
		mf := filepath.Join(dir, manifestName)
		b, _ := os.ReadFile(mf)
		os.WriteFile(mf, b[:len(b)/2], 0o600)
		if _, err := OpenReader(dir); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("OpenReader with half a manifest = %v", err)
		}
	})
}

// TestImageCompactionEquivalence: random chains of layers, compacted at
// random points to random limits, always read as the model says.
func TestImageCompactionEquivalence(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { compactionProperty(t, seed) })
	}
}

func compactionProperty(t testing.TB, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	dir := t.(interface{ TempDir() string }).TempDir()
	npages := uint64(1 + rng.IntN(40))
	im, err := Create(dir, npages*testPS, testPS)
	if err != nil {
		t.Fatal(err)
	}
	want := model{}
	for step := range 12 {
		// A layer of random pages, some of them zero.
		set := map[uint64]bool{}
		for range rng.IntN(int(npages) + 1) {
			set[rng.Uint64N(npages)] = true
		}
		full := rng.IntN(8) == 0
		if full {
			want = model{}
		}
		pages := slices.Sorted(func(yield func(uint64) bool) {
			for p := range set {
				if !yield(p) {
					return
				}
			}
		})
		for _, p := range pages {
			s := uint64(step + 1)
			if rng.IntN(5) == 0 {
				s = 0
			}
			want[p] = pageOf(s, p)
		}
		before := im.Layers()
		info := commitLayer(t, im, pages, full, want)
		if full && info.Layers != 1 || !full && before > 0 && info.Layers != before+1 {
			t.Fatalf("step %d: %d layers after a commit on %d (full %v)", step, info.Layers, before, full)
		}
		checkReader(t, dir, npages, want)
		if rng.IntN(3) == 0 {
			limit := 1 + rng.IntN(3)
			before := im.Layers()
			merged, _, err := im.Compact(limit)
			if err != nil {
				t.Fatal(err)
			}
			if merged != (before > limit) || im.Layers() != min(before, limit) {
				t.Fatalf("Compact(%d) on %d layers: merged %v, %d layers", limit, before, merged, im.Layers())
			}
			checkReader(t, dir, npages, want)
			files, _ := filepath.Glob(filepath.Join(dir, "layer-*"))
			if len(files) != im.Layers() {
				t.Fatalf("%d layer files for %d layers", len(files), im.Layers())
			}
		}
	}
}

func FuzzCompactionEquivalence(f *testing.F) {
	f.Add(uint64(7))
	f.Fuzz(func(t *testing.T, seed uint64) { compactionProperty(t, seed) })
}

// A reader over a base content: pages no layer holds read from it; a page
// stored as zero stays zero.
func TestReaderOver(t *testing.T) {
	dir := t.TempDir()
	im, err := Create(dir, 8*testPS, testPS)
	if err != nil {
		t.Fatal(err)
	}
	base := content.Pattern(9)
	r, err := OpenReaderOver(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	if r.IsZero() {
		t.Error("an empty image over a pattern says IsZero")
	}
	r.Close()
	commitLayer(t, im, []uint64{2, 5}, false, model{2: pageOf(3, 2), 5: pageOf(0, 5)})
	r, err = OpenReaderOver(dir, base)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make([]byte, 8*testPS)
	if err := r.Fill(got, 0); err != nil {
		t.Fatal(err)
	}
	for p := range uint64(8) {
		want := pageOf(9, p)
		switch p {
		case 2:
			want = pageOf(3, 2)
		case 5:
			want = pageOf(0, 5)
		}
		if !bytes.Equal(got[p*testPS:(p+1)*testPS], want) {
			t.Fatalf("page %d differs", p)
		}
	}
}

// TestLayerWriteback: a layer writer hands what it wrote to writeback as
// it goes (every writebackChunk bytes of data, zero pages taking none; on
// a goroutine of its own, which Commit ends), and the layer it commits
// reads back whole; an aborted one ends its goroutine too.
func TestLayerWriteback(t *testing.T) {
	old := writebackChunk
	writebackChunk = 3 * testPS
	defer func() { writebackChunk = old }()
	const npages = 64
	im, err := Create(filepath.Join(t.TempDir(), "img"), npages*testPS, testPS)
	if err != nil {
		t.Fatal(err)
	}
	m := model{}
	var pages []uint64
	for p := uint64(0); p < npages; p++ {
		if p%5 != 4 {
			m[p] = pageOf(7, p)
		} else {
			m[p] = pageOf(0, p) // all zero: no data
		}
		pages = append(pages, p)
	}
	w, err := im.NewLayer(pages, true)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < npages; i += 4 {
		var buf []byte
		for _, p := range pages[i : i+4] {
			buf = append(buf, m[p]...)
		}
		if err := w.Write(buf); err != nil {
			t.Fatal(err)
		}
		if w.written != int64(w.dataPages)*testPS || w.kicked > w.written {
			t.Fatalf("after %d pages: %d bytes written (%d data pages), %d handed to writeback", i+4, w.written, w.dataPages, w.kicked)
		}
	}
	if w.kicked == 0 {
		t.Fatal("nothing handed to writeback")
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if w.wb != nil {
		t.Fatal("the writeback goroutine outlived the commit")
	}
	checkReader(t, im.Dir(), npages, m)
	w, err = im.NewLayer(pages[:8], false)
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for _, p := range pages[:8] {
		buf = append(buf, m[p]...)
	}
	if err := w.Write(buf); err != nil {
		t.Fatal(err)
	}
	if w.wb == nil {
		t.Fatal("no writeback started")
	}
	w.Abort()
	if w.wb != nil {
		t.Fatal("the writeback goroutine outlived the abort")
	}
}
