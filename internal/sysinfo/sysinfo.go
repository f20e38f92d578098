// Package sysinfo is the one adapter around gopsutil: it supplies host facts
// the project does not parse itself, such as the CPU model name and nominal
// frequency. No other package imports gopsutil.
//
// Everything here is best-effort description for humans (logs, `vcored
// topology`); placement decisions never depend on it.
package sysinfo

import (
	"context"
	"errors"
	"fmt"

	"github.com/shirou/gopsutil/v3/cpu"
)

// ErrNoCPUInfo is returned when the host reports no CPU description at all.
var ErrNoCPUInfo = errors.New("sysinfo: no CPU information")

// CPUInfo describes the host's processors.
type CPUInfo struct {
	// Model is the model name as the kernel reports it ("AMD EPYC 7763 64-Core Processor").
	Model string
	// MHz is the nominal (or maximum) frequency in MHz; 0 when unknown.
	MHz float64
}

// CPU returns the model name and frequency of the host's first CPU. On
// Linux gopsutil reads /proc/cpuinfo and cpufreq from sysfs.
func CPU(ctx context.Context) (CPUInfo, error) {
	infos, err := cpu.InfoWithContext(ctx)
	if err != nil {
		return CPUInfo{}, fmt.Errorf("sysinfo: cpu info: %w", err)
	}
	if len(infos) == 0 {
		return CPUInfo{}, ErrNoCPUInfo
	}
	return CPUInfo{Model: infos[0].ModelName, MHz: infos[0].Mhz}, nil
}
