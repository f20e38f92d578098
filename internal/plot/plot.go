// Package plot draws the bench's latency plots as SVG: the cumulative
// distribution of per-fault latency of several modes on one log-x plot.
//
// It is the only package that imports gonum.org/v1/plot.
package plot

import (
	"errors"
	"fmt"
	"io"
	"os"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/vcored/vcored/internal/hist"
)

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
	p.Title.Text = title
	p.X.Label.Text = "latency per fault (µs, log scale)"
	p.Y.Label.Text = "fraction of faults ≤ x"
	p.X.Scale = gplot.LogScale{}
	p.X.Tick.Marker = gplot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Millimeter

	drawn := 0
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
		l.StepStyle = plotter.PostStep
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (n=%d)", s.Name, s.Hist.Count()), l)
		drawn++
	}
	if drawn == 0 {
		return ErrNoData
	}
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
