package wire

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vcored/vcored/internal/linux"
)

// Access decides which peers a Listener accepts: root, the daemon's own
// effective uid, and — when Gid >= 0 — members of group Gid, as primary
// group or (read from <ProcRoot>/<pid>/status) supplementary group.
type Access struct {
	Gid      int    // -1: no group access
	ProcRoot string // "/proc" unless testing
}

// Allowed reports whether the peer may talk to the daemon, and why not.
func (a Access) Allowed(p linux.Ucred) (bool, string) {
	if p.Uid == 0 || p.Uid == os.Geteuid() {
		return true, ""
	}
	if a.Gid < 0 {
		return false, "not root and no group access is configured"
	}
	if p.Gid == a.Gid {
		return true, ""
	}
	root := a.ProcRoot
	if root == "" {
		root = "/proc"
	}
	groups, err := procGroups(root, p.Pid)
	if err != nil {
		return false, fmt.Sprintf("not root, not in group %d (supplementary groups unreadable: %v)", a.Gid, err)
	}
	for _, g := range groups {
		if g == a.Gid {
			return true, ""
		}
	}
	return false, fmt.Sprintf("not root and not in group %d", a.Gid)
}

// procGroups reads the supplementary groups of pid from <root>/<pid>/status.
func procGroups(root string, pid int) ([]int, error) {
	path := filepath.Join(root, strconv.Itoa(pid), "status")
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	g, err := parseGroups(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return g, nil
}

// parseGroups finds the "Groups:" line of a /proc/<pid>/status file.
func parseGroups(r io.Reader) ([]int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var gs []int
		for f := range strings.FieldsSeq(rest) {
			g, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("bad group %q", f)
			}
			gs = append(gs, g)
		}
		return gs, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("no Groups line")
}

type peerKey struct{}

// PeerFromContext returns the credentials of the client of an HTTP request
// served by a Listener (pass r.Context()).
func PeerFromContext(ctx context.Context) (linux.Ucred, bool) {
	p, ok := ctx.Value(peerKey{}).(linux.Ucred)
	return p, ok
}
