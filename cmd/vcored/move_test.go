package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/vcored/vcored/internal/api"
)

func TestMovedNote(t *testing.T) {
	one, unknown := 1, -1
	for _, tc := range []struct {
		s    api.Subsystem
		want string
	}{
		{api.Subsystem{MovedTo: &one}, " (to node1)"},
		{api.Subsystem{MovedTo: &unknown}, " (to another node)"},
		{api.Subsystem{MovedFrom: &one, MoveMode: "live"}, " (moved here from node1, live)"},
		{api.Subsystem{}, ""},
	} {
		if got := movedNote(tc.s); got != tc.want {
			t.Errorf("movedNote(%+v) = %q, want %q", tc.s, got, tc.want)
		}
	}
	var b bytes.Buffer
	printMoves(&b, []api.Move{{Subsystem: "m", HomeNode: 0, Node: 1, Mode: "restart", At: time.Unix(0, 0).UTC(), Cgroup: "vcored/node1/m"}})
	if !strings.Contains(b.String(), "MOVED SUBSYSTEM") || !strings.Contains(b.String(), "m\tnode0\tnode1\trestart") {
		t.Errorf("printMoves:\n%s", b.String())
	}
}
