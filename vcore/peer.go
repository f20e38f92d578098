package vcore

import (
	"bufio"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// cgroupOf returns the cgroup path of pid as /proc/<pid>/cgroup lists it:
// the cpuset hierarchy's path on cgroup v1 (and hybrid), the unified path
// ("0::/...") on v2. The path starts with "/".
func cgroupOf(procfs fs.FS, pid int) (string, error) {
	name := strconv.Itoa(pid) + "/cgroup"
	f, err := procfs.Open(name)
	if err != nil {
		return "", fmt.Errorf("vcore: peer pid %d: %w", pid, err)
	}
	defer f.Close()
	var unified string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "cpuset" {
				return parts[2], nil
			}
		}
		if parts[0] == "0" && parts[1] == "" {
			unified = parts[2]
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("vcore: read /proc/%s: %w", name, err)
	}
	if unified == "" {
		return "", fmt.Errorf("vcore: peer pid %d: no cpuset or unified cgroup in /proc/%s", pid, name)
	}
	return unified, nil
}

// subsystemOf maps a cgroup path to the subsystem whose cgroup contains it.
// groups maps subsystem name → its cgroup path relative to the hierarchy
// root (no leading slash). ok is false for a process outside every one.
func subsystemOf(cgroupPath string, groups map[string]string) (name string, ok bool) {
	p := strings.TrimPrefix(cgroupPath, "/")
	for n, g := range groups {
		if p == g || strings.HasPrefix(p, g+"/") {
			return n, true
		}
	}
	return "", false
}
