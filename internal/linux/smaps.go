package linux

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// UffdRegisteredIn reports whether any mapping of process pid that overlaps
// [start, start+length) is registered with a userfaultfd (its smaps VmFlags
// carry "um", "uw" or "ui"). A vcore uses it to tell a region it still
// holds for a live registration from one whose mapping is gone (its UNMAP
// event was lost with a killed daemon): a fresh mmap at the same address is
// never registered until someone registers it.
func UffdRegisteredIn(pid int, start, length uintptr) (bool, error) {
	return uffdRegisteredIn(fmt.Sprintf("/proc/%d/smaps", pid), start, length)
}

func uffdRegisteredIn(path string, start, length uintptr) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("linux: %w", err)
	}
	defer f.Close()
	end := start + length
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	in := false // the current mapping overlaps the range
	for sc.Scan() {
		line := sc.Text()
		if flags, ok := strings.CutPrefix(line, "VmFlags:"); ok {
			if in {
				for _, fl := range strings.Fields(flags) {
					if fl == "um" || fl == "uw" || fl == "ui" {
						return true, nil
					}
				}
			}
			continue
		}
		// A mapping's header: "lo-hi perms offset dev inode [path]".
		rng, _, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		los, his, ok := strings.Cut(rng, "-")
		if !ok {
			continue
		}
		lo, err1 := strconv.ParseUint(los, 16, 64)
		hi, err2 := strconv.ParseUint(his, 16, 64)
		if err1 != nil || err2 != nil {
			continue // a "Key: value" line
		}
		in = uintptr(lo) < end && start < uintptr(hi)
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("linux: read %s: %w", path, err)
	}
	return false, nil
}

// AnyPresentIn reports whether process pid has any page of [start,
// start+length) present or swapped out (the pages it has touched); see
// Pagemap.PresentPages. Reading the pagemap faults nothing in.
func AnyPresentIn(pid int, start, length uintptr) (bool, error) {
	p, err := OpenPagemap(pid)
	if err != nil {
		return false, err
	}
	defer p.Close()
	pages, err := p.PresentPages(start, start+length)
	return len(pages) > 0, err
}
