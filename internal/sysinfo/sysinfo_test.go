package sysinfo

import (
	"bufio"
	"context"
	"os"
	"strings"
	"testing"
)

// TestCPUMatchesProcCPUInfo checks the adapter against /proc/cpuinfo read
// directly: the model name must be the first "model name" line.
func TestCPUMatchesProcCPUInfo(t *testing.T) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		t.Skipf("no /proc/cpuinfo on this host: %v", err)
	}
	defer f.Close()
	want := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			want = strings.TrimSpace(v)
			break
		}
	}
	if want == "" {
		t.Skip("/proc/cpuinfo has no \"model name\" line on this architecture")
	}

	info, err := CPU(context.Background())
	if err != nil {
		t.Fatalf("CPU: %v", err)
	}
	if info.Model != want {
		t.Errorf("Model = %q, want %q (from /proc/cpuinfo)", info.Model, want)
	}
	if info.MHz < 0 {
		t.Errorf("MHz = %v, want >= 0", info.MHz)
	}
}
