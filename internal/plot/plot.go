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
	"os"
	"strings"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

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

// CDF writes an SVG of the latency CDF of every series to w: x is the
// latency in µs on a log scale, y the fraction of faults at most that slow.
// Empty series are left out of the plot; if all are empty it returns
// ErrNoData.
func CDF(w io.Writer, title string, series []Series) error {
	p := gplot.New()
	// A long title is wrapped rather than clipped at the canvas edge.
	p.Title.Text = strings.Replace(title, ", ", "\n", 1)
	p.X.Label.Text = "latency per fault (µs, log scale)"
	p.Y.Label.Text = "fraction of faults ≤ x"
	p.X.Scale = gplot.LogScale{}
	p.X.Tick.Marker = gplot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	// The legend sits in the empty lower right: every curve has reached 1
	// well before the axis ends (it is extended past the slowest fault).
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -3 * vg.Millimeter
	p.Legend.YOffs = 3 * vg.Millimeter
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Legend.ThumbnailWidth = vg.Centimeter
	p.Legend.Padding = 2 * vg.Millimeter
	drawn := 0
	var slowest float64
	for i, s := range series {
		if s.Hist == nil {
			continue
		}
		pts := s.Hist.CDF()
		if len(pts) == 0 {
			continue
		}
		xys := make(plotter.XYs, 0, len(pts)+1)
		xys = append(xys, plotter.XY{X: float64(pts[0].NS) / 1e3, Y: 0})
		for _, pt := range pts {
			xys = append(xys, plotter.XY{X: float64(pt.NS) / 1e3, Y: pt.Fraction})
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("plot: series %q: %w", s.Name, err)
		}
		slowest = max(slowest, xys[len(xys)-1].X)
		l.StepStyle = plotter.PostStep
		l.Color = palette[i%len(palette)]
		l.Dashes = plotutil.Dashes(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s  n=%d", s.Name, s.Hist.Count()), l)
		drawn++
	}
	if drawn == 0 {
		return ErrNoData
	}
	p.X.Max = slowest * 200 // room for the legend
	wt, err := p.WriterTo(8*vg.Inch, 5*vg.Inch, "svg")
	if err != nil {
		return fmt.Errorf("plot: render svg: %w", err)
	}
	if _, err := wt.WriteTo(w); err != nil {
		return fmt.Errorf("plot: write svg: %w", err)
	}
	return nil
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
