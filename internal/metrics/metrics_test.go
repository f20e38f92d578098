package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestExposition(t *testing.T) {
	r := New()
	n := 0.0
	r.Collect(Family{Name: "vcored_test_faults_total", Help: "faults", Kind: Counter, Labels: []string{"dataspace"}},
		func() []Sample {
			n++
			return []Sample{{Labels: []string{"a"}, Value: n}}
		})
	r.CollectSummaries("vcored_test_latency_seconds", "latency", []string{"dataspace"}, func() []Summary {
		return []Summary{{Labels: []string{"a"}, Count: 3, Sum: 0.5, Quantiles: map[float64]float64{0.5: 0.1}}}
	})
	for want := 1; want <= 2; want++ {
		rec := httptest.NewRecorder()
		r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		body, _ := io.ReadAll(rec.Body)
		s := string(body)
		for _, line := range []string{
			`vcored_test_faults_total{dataspace="a"} ` + string(rune('0'+want)),
			`vcored_test_latency_seconds{dataspace="a",quantile="0.5"} 0.1`,
			`vcored_test_latency_seconds_count{dataspace="a"} 3`,
			"go_goroutines",
		} {
			if !strings.Contains(s, line) {
				t.Errorf("scrape %d lacks %q", want, line)
			}
		}
	}
}
