package plot

import (
	"bytes"
	"encoding/xml"
	"errors"
	"os"
	"path/filepath"
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
