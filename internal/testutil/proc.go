// Package testutil holds the few helpers the project's tests share. Only
// _test.go files import it.
package testutil

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// ProcStatus returns the value of field in /proc/<pid>/status, e.g.
// ProcStatus(pid, "Cpus_allowed_list") → "1". Tests assert a process's
// CPU and memory confinement from the kernel's own view with it.
func ProcStatus(pid int, field string) (string, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return "", fmt.Errorf("%s has no %s", path, field)
}
