package config

import "testing"

// The per-subsystem resource bounds: defaults, explicit values, and
// file:line errors for values out of range or of the wrong type.
func TestSubsystemLimits(t *testing.T) {
	const head = "node = 0\nmemory = \"1GiB\"\n[[subsystem]]\nname = \"a\"\ncommand = [\"x\"]\nmemory = \"1MiB\"\n"
	v, err := ParseVCore("n.toml", []byte(head))
	if err != nil {
		t.Fatal(err)
	}
	if s := v.Subsystems[0]; s.MaxConnections != 64 || s.MaxRegions != 4096 || s.PidsMax != 4096 {
		t.Errorf("defaults: max_connections %d, max_regions %d, pids_max %d; want 64, 4096, 4096", s.MaxConnections, s.MaxRegions, s.PidsMax)
	}
	v, err = ParseVCore("n.toml", []byte(head+"max_connections = 2\nmax_regions = 10\npids_max = 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := v.Subsystems[0]; s.MaxConnections != 2 || s.MaxRegions != 10 || s.PidsMax != 0 {
		t.Errorf("explicit: max_connections %d, max_regions %d, pids_max %d; want 2, 10, 0", s.MaxConnections, s.MaxRegions, s.PidsMax)
	}
	_, err = ParseVCore("n.toml", []byte(head+"max_connections = 0\nmax_regions = 2000000\npids_max = -1\n"))
	assertProblems(t, err, "n.toml", []problem{
		{7, "subsystem[0].max_connections", ErrValue, "0 is out of range [1, 65536]"},
		{8, "subsystem[0].max_regions", ErrValue, "2000000 is out of range [1, 1048576]"},
		{9, "subsystem[0].pids_max", ErrValue, "-1 is out of range [0, 4194304]"},
	})
	_, err = ParseVCore("n.toml", []byte(head+"pids_max = \"max\"\n"))
	assertProblems(t, err, "n.toml", []problem{{7, "subsystem[0].pids_max", ErrType, `expected an integer, got string "max"`}})
}
