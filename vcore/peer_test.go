package vcore

import (
	"testing"
	"testing/fstest"
)

func TestCgroupOfAndSubsystem(t *testing.T) {
	procfs := fstest.MapFS{
		"10/cgroup": {Data: []byte("12:pids:/vcored/node0/web\n5:cpuset:/vcored/node0/web\n1:name=systemd:/user.slice\n0::/\n")},
		"11/cgroup": {Data: []byte("0::/vcored/node1/db/sub\n")},
		"12/cgroup": {Data: []byte("garbage\n")},
	}
	groups := map[string]string{"web": "vcored/node0/web", "db": "vcored/node1/db", "we": "vcored/node0/we"}
	for _, tc := range []struct {
		pid     int
		path    string
		sub     string
		wantErr bool
	}{
		{pid: 10, path: "/vcored/node0/web", sub: "web"},
		{pid: 11, path: "/vcored/node1/db/sub", sub: "db"},
		{pid: 12, wantErr: true},
		{pid: 13, wantErr: true},
	} {
		p, err := cgroupOf(procfs, tc.pid)
		if (err != nil) != tc.wantErr {
			t.Fatalf("pid %d: err = %v", tc.pid, err)
		}
		if err != nil {
			continue
		}
		if p != tc.path {
			t.Errorf("pid %d: path %q, want %q", tc.pid, p, tc.path)
		}
		if s, ok := subsystemOf(p, groups); !ok || s != tc.sub {
			t.Errorf("pid %d: subsystem %q %v, want %q", tc.pid, s, ok, tc.sub)
		}
	}
	if _, ok := subsystemOf("/vcored/node0/webx", groups); ok {
		t.Error("prefix of a sibling's name matched")
	}
}
