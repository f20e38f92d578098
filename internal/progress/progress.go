// Package progress shows how far a long command is: a progress bar when
// writing to a terminal, one plain line per step otherwise (logs, CI, pipes).
//
// It is the only package that imports github.com/schollz/progressbar.
package progress

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// Mode chooses how progress is shown.
type Mode int

// The modes.
const (
	// Auto is Bar when the writer is a terminal, Lines otherwise.
	Auto Mode = iota
	// Bar draws a progress bar in place.
	Bar
	// Lines writes "[i/n] step" lines.
	Lines
	// Off shows nothing.
	Off
)

// Reporter reports the steps of one job. Its methods are safe for
// concurrent use; a nil *Reporter shows nothing.
type Reporter struct {
	mu    sync.Mutex
	mode  Mode
	w     io.Writer
	total int
	done  int
	bar   *progressbar.ProgressBar
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// New returns a Reporter for total steps written to w. Auto picks Bar on a
// terminal and Lines otherwise.
func New(w io.Writer, total int, mode Mode, title string) *Reporter {
	if mode == Auto {
		mode = Lines
		if IsTerminal(w) {
			mode = Bar
		}
	}
	r := &Reporter{mode: mode, w: w, total: total}
	switch mode {
	case Bar:
		r.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(title),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionClearOnFinish(),
		)
	case Lines:
		if title != "" {
			fmt.Fprintf(w, "%s (%d steps)\n", title, total)
		}
	}
	return r
}

// Mode returns the mode in use (Auto resolved).
func (r *Reporter) Mode() Mode {
	if r == nil {
		return Off
	}
	return r.mode
}

// Start announces the step that begins now (shown as the bar's description,
// or as a line).
func (r *Reporter) Start(step string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.mode {
	case Bar:
		r.bar.Describe(step)
	case Lines:
		fmt.Fprintf(r.w, "[%d/%d] %s\n", r.done+1, r.total, step)
	}
}

// Done marks one step finished.
func (r *Reporter) Done() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done++
	if r.mode == Bar {
		_ = r.bar.Add(1) // writing to the terminal failed: nothing useful to do
	}
}

// Finish ends the report (clears the bar).
func (r *Reporter) Finish() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mode == Bar {
		_ = r.bar.Finish()
		_ = r.bar.Clear()
	}
}
