// Package plot draws the bench's latency plots as SVG: the cumulative
// distribution of per-fault latency of several modes on one log-x plot.
//
// It is the only package that imports gonum.org/v1/plot.
package plot

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/vcored/vcored/internal/hist"
)

// palette has one clearly distinct colour per series (plotutil's repeats
// after seven, and the bench draws up to nine curves).
var palette = []color.Color{
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, // red
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, // blue
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, // green
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}, // orange
	color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff}, // purple
	color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff}, // brown
	color.RGBA{R: 0xe3, G: 0x77, B: 0xc2, A: 0xff}, // pink
	color.RGBA{R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff}, // grey
	color.RGBA{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff}, // cyan
	color.RGBA{R: 0xbc, G: 0xbd, B: 0x22, A: 0xff}, // olive
}

// ErrNoData is returned when no series has any value to draw.
var ErrNoData = errors.New("plot: no data to draw")

// Series is one curve: a name for the legend and its histogram.
type Series struct {
	Name string
	Hist *hist.Histogram
}

// Canvas size of the plot: the data area on the left, the legend in a
// column of its own on the right, so no curve runs under it.
const (
	canvasWidth  = 10 * vg.Inch
	canvasHeight = 5 * vg.Inch
)

// CDF writes an SVG of the latency CDF of every series to w: x is the
// latency in µs on a log scale (from the fastest to just past the slowest
// fault), y the fraction of faults at most that slow. Empty series are
// left out of the plot; if all are empty it returns ErrNoData.
func CDF(w io.Writer, title string, series []Series) error {
	p := gplot.New()
	// A long title is wrapped rather than clipped at the canvas edge.
	p.Title.Text = strings.Replace(title, ", ", "\n", 1)
	p.X.Label.Text = "latency per fault (µs, log scale)"
	p.Y.Label.Text = "fraction of faults ≤ x"
	p.X.Scale = gplot.LogScale{}
	p.X.Tick.Marker = decadeTicks{}
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	// The legend is drawn in its own column (below), swatch first and the
	// text after it, left-aligned: a renderer whose font is wider than the
	// one measured here lengthens the text to the right, never over the
	// swatch.
	leg := gplot.NewLegend()
	leg.Top, leg.Left = true, true
	leg.TextStyle.Font.Size = vg.Points(9)
	leg.ThumbnailWidth = vg.Centimeter
	leg.Padding = 2 * vg.Millimeter
	drawn := 0
	var fastest, slowest float64
	for i, s := range series {
		if s.Hist == nil {
			continue
		}
		pts := s.Hist.CDF()
		if len(pts) == 0 {
			continue
		}
		// A log axis cannot show 0: the fastest bucket is at least 1 ns.
		x := func(ns int64) float64 { return float64(max(ns, 1)) / 1e3 }
		xys := make(plotter.XYs, 0, len(pts)+1)
		xys = append(xys, plotter.XY{X: x(pts[0].NS), Y: 0})
		for _, pt := range pts {
			xys = append(xys, plotter.XY{X: x(pt.NS), Y: pt.Fraction})
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("plot: series %q: %w", s.Name, err)
		}
		if drawn == 0 || xys[0].X < fastest {
			fastest = xys[0].X
		}
		slowest = max(slowest, xys[len(xys)-1].X)
		l.StepStyle = plotter.PostStep
		l.Color = palette[i%len(palette)]
		l.Dashes = plotutil.Dashes(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		leg.Add(fmt.Sprintf("%s  n=%d", s.Name, s.Hist.Count()), l)
		drawn++
	}
	if drawn == 0 {
		return ErrNoData
	}
	p.X.Min, p.X.Max = xRange(fastest, slowest)

	c := vgsvg.New(canvasWidth, canvasHeight)
	dc := draw.New(c)
	// The legend column: as wide as the widest entry plus a fifth for a
	// wider font, and a margin.
	legW := leg.Rectangle(dc).Size().X*6/5 + 4*vg.Millimeter
	legW = min(legW, canvasWidth/2)
	p.Draw(draw.Crop(dc, 0, -legW, 0, 0))
	// Entries start level with the top of the data area, below the title.
	leg.Draw(draw.Crop(dc, canvasWidth-legW+2*vg.Millimeter, 0, 0, -titleHeight(p)))
	if _, err := c.WriteTo(w); err != nil {
		return fmt.Errorf("plot: write svg: %w", err)
	}
	return nil
}

// xRange is the x axis of a plot whose data span fastest..slowest (µs):
// just past both ends, and at least one decade wide so that a tick is
// labelled.
func xRange(fastest, slowest float64) (lo, hi float64) {
	lo, hi = fastest/1.1, slowest*1.1
	if hi < lo*10 {
		hi = lo * 10
	}
	return lo, hi
}

// titleHeight is the height the plot's title takes at the top.
func titleHeight(p *gplot.Plot) vg.Length {
	return p.Title.TextStyle.Height(p.Title.Text) + p.Title.Padding + 2*vg.Millimeter
}

// decadeTicks labels every power of ten in range in one format (plain
// decimal µs: 0.1, 1, 10, 100, 1000, …) and marks 2…9 × each decade as
// unlabelled minor ticks.
type decadeTicks struct{}

// Ticks implements gplot.Ticker.
func (decadeTicks) Ticks(lo, hi float64) []gplot.Tick {
	if lo <= 0 || hi <= lo {
		return nil
	}
	var out []gplot.Tick
	for e := int(math.Floor(math.Log10(lo))); math.Pow10(e) <= hi; e++ {
		d := math.Pow10(e)
		for k := 1.0; k < 10; k++ {
			v := d * k
			if v < lo || v > hi {
				continue
			}
			t := gplot.Tick{Value: v}
			if k == 1 {
				t.Label = strconv.FormatFloat(v, 'f', -1, 64)
			}
			out = append(out, t)
		}
	}
	return out
}

// CDFFile writes the CDF plot to the file path (created or truncated).
func CDFFile(path, title string, series []Series) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if err := CDF(f, title, series); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot: close %s: %w", path, err)
	}
	return nil
}
