package plot

import (
	"bytes"
	"encoding/xml"
	"errors"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vcored/vcored/internal/hist"
)

func histOf(vals ...int64) *hist.Histogram {
	h := hist.New()
	for _, v := range vals {
		h.Record(v)
	}
	return h
}

func TestCDFWritesSVGWithLegend(t *testing.T) {
	var buf bytes.Buffer
	err := CDF(&buf, "fault latency", []Series{
		{Name: "local", Hist: histOf(12000, 13000, 15000, 90000)},
		{Name: "central", Hist: histOf(150000, 170000, 400000)},
		{Name: "empty", Hist: hist.New()},
		{Name: "nil"},
	})
	if err != nil {
		t.Fatal(err)
	}
	svg := buf.String()
	if err := xml.Unmarshal(buf.Bytes(), new(struct{ XMLName xml.Name })); err != nil {
		t.Fatalf("not XML: %v", err)
	}
	for _, want := range []string{"<svg", "local  n=4", "central  n=3", "fault latency"} {
		if !strings.Contains(svg, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if strings.Contains(svg, "empty (n=") {
		t.Error("an empty series was drawn")
	}
}

func TestCDFNoData(t *testing.T) {
	if err := CDF(&bytes.Buffer{}, "x", []Series{{Name: "a", Hist: hist.New()}}); !errors.Is(err, ErrNoData) {
		t.Fatalf("err = %v, want ErrNoData", err)
	}
	path := filepath.Join(t.TempDir(), "x.svg")
	if err := CDFFile(path, "x", nil); !errors.Is(err, ErrNoData) {
		t.Fatalf("CDFFile err = %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed CDFFile left %s behind", path)
	}
}

func TestCDFFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cdf.svg")
	if err := CDFFile(path, "t", []Series{{Name: "kernel", Hist: histOf(2000, 2500, 3000)}}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil || !bytes.Contains(data, []byte("kernel  n=3")) {
		t.Fatalf("file: %v, %d bytes", err, len(data))
	}
}

// TestAxisEndsNearTheData: the x axis ends just past the slowest fault,
// not decades beyond it (it used to end at 200× the slowest).
func TestAxisEndsNearTheData(t *testing.T) {
	for _, tc := range []struct{ fastest, slowest float64 }{{0.03, 5000}, {4, 4.5}, {1, 1e6}} {
		lo, hi := xRange(tc.fastest, tc.slowest)
		if lo >= tc.fastest || lo < tc.fastest/1.2 {
			t.Errorf("xRange(%v, %v) starts at %v", tc.fastest, tc.slowest, lo)
		}
		if hi <= tc.slowest || (hi > 1.2*tc.slowest && hi > lo*10.01) {
			t.Errorf("xRange(%v, %v) ends at %v", tc.fastest, tc.slowest, hi)
		}
	}
}

// TestDecadeTicksOneFormat: every labelled tick is a power of ten written
// as a plain decimal (no "1e+06" next to "100000").
func TestDecadeTicksOneFormat(t *testing.T) {
	var labels []string
	for _, tk := range (decadeTicks{}).Ticks(0.02, 2e6) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	want := "0.1 1 10 100 1000 10000 100000 1000000"
	if got := strings.Join(labels, " "); got != want {
		t.Errorf("labels %q, want %q", got, want)
	}
	if len((decadeTicks{}).Ticks(0.02, 2e6)) < 8*9 {
		t.Error("no minor ticks")
	}
	if (decadeTicks{}).Ticks(0, 1) != nil {
		t.Error("ticks for a range that a log axis cannot show")
	}
}

// TestLegendBesideThePlot: the legend is in its own column right of the
// data area, each text left-aligned after its swatch, so neither a curve
// nor its own swatch runs under the text (they used to overlap).
func TestLegendBesideThePlot(t *testing.T) {
	var buf bytes.Buffer
	if err := CDF(&buf, "t", []Series{{Name: "local", Hist: histOf(12000, 13000)}, {Name: "central", Hist: histOf(150000, 4e6)}}); err != nil {
		t.Fatal(err)
	}
	svg := buf.String()
	if strings.Contains(svg, "e+0") {
		t.Error("an exponent-format tick label")
	}
	// A legend entry: the swatch (a two-point path) then its text.
	entry := regexp.MustCompile(`<path d="M([0-9.]+),[0-9.]+L([0-9.]+),[0-9.]+" [^>]*/>\s*<text x="([0-9.]+)"[^>]*>\s*[^<]*?>?([a-z]+  n=\d+)</text>`)
	entries := entry.FindAllStringSubmatch(svg, -1)
	if len(entries) != 2 {
		t.Fatalf("legend entries %d, want 2", len(entries))
	}
	legendLeft := math.Inf(1)
	for _, e := range entries {
		x0, _ := strconv.ParseFloat(e[1], 64)
		x1, _ := strconv.ParseFloat(e[2], 64)
		tx, _ := strconv.ParseFloat(e[3], 64)
		if tx <= x1 {
			t.Errorf("%s: text at x=%v starts before its swatch ends (%v)", e[4], tx, x1)
		}
		legendLeft = min(legendLeft, x0)
	}
	if strings.Contains(svg, "text-anchor:end\">local") {
		t.Error("legend text right-aligned")
	}
	// Every curve point is left of the legend column.
	curve := regexp.MustCompile(`<path d="(M[^"]+)" style="fill:none;stroke:#(D62728|1F77B4)`)
	num := regexp.MustCompile(`[ML]([0-9.]+),`)
	for _, c := range curve.FindAllStringSubmatch(svg, -1) {
		pts := num.FindAllStringSubmatch(c[1], -1)
		if len(pts) <= 2 {
			continue // a swatch
		}
		for _, p := range pts {
			if x, _ := strconv.ParseFloat(p[1], 64); x >= legendLeft {
				t.Errorf("curve point at x=%v in the legend column (from %v)", x, legendLeft)
			}
		}
	}
}
