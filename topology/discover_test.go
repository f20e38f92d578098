package topology

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/vcored/vcored/internal/hw"
)

// describe renders everything Discover found as stable text, one fact per
// line, so a fixture's whole expected result reads as a small table.
func describe(m *Machine) string {
	var b strings.Builder
	set := func(s fmt.Stringer) string {
		if t := s.String(); t != "" {
			return t
		}
		return "-"
	}
	fmt.Fprintf(&b, "nodes %s\n", m.NodeIDs())
	for _, n := range m.Nodes {
		fmt.Fprintf(&b, "node %d cpus %s total %d free %d dist %s huge", n.ID, set(n.CPUs), n.MemTotal, n.MemFree,
			strings.Trim(strings.ReplaceAll(fmt.Sprint(n.Distances), " ", ","), "[]"))
		if len(n.HugePages) == 0 {
			b.WriteString(" -")
		}
		for _, size := range slices.Sorted(maps.Keys(n.HugePages)) {
			fmt.Fprintf(&b, " %s:%d/%d", size, n.HugePages[size].Total, n.HugePages[size].Free)
		}
		if n.CPULess {
			b.WriteString(" cpuless")
		}
		b.WriteByte('\n')
	}
	for _, c := range m.CPUs {
		state := "offline"
		if c.Online {
			state = "online"
		}
		fmt.Fprintf(&b, "cpu %d %s node %d pkg %d core %d sib %s llc %s\n", c.ID, state, c.Node, c.Package, c.Core, set(c.Siblings), set(c.LLC))
	}
	b.WriteString("llc")
	for _, g := range m.LLCGroups {
		b.WriteString(" " + g.String())
	}
	fmt.Fprintf(&b, "\nallowed cpus %s nodes %s\n", set(m.AllowedCPUs), set(m.AllowedNodes))
	for _, n := range m.Notes {
		fmt.Fprintf(&b, "note %s\n", n)
	}
	return b.String()
}

// fixtureWant is the hand-written expected result of every fixture under
// testdata/.
var fixtureWant = map[string]string{
	"single-node-2cpu": `
nodes 0
node 0 cpus 0-1 total 6268604416 free 5268721664 dist 10 huge 2MiB:0/0 1GiB:0/0
cpu 0 online node 0 pkg 0 core 0 sib 0 llc 0-1
cpu 1 online node 0 pkg 0 core 1 sib 1 llc 0-1
llc 0-1
allowed cpus 0-1 nodes 0
`,
	"two-socket-smt2": `
nodes 0-1
node 0 cpus 0-3,8-11 total 33614262272 free 30834733056 dist 10,21 huge 2MiB:512/500 1GiB:0/0
node 1 cpus 4-7,12-15 total 33823481856 free 32325611520 dist 21,10 huge 2MiB:512/512 1GiB:2/1
cpu 0 online node 0 pkg 0 core 0 sib 0,8 llc 0-1,8-9
cpu 1 online node 0 pkg 0 core 1 sib 1,9 llc 0-1,8-9
cpu 2 online node 0 pkg 0 core 2 sib 2,10 llc 2-3,10-11
cpu 3 online node 0 pkg 0 core 3 sib 3,11 llc 2-3,10-11
cpu 4 online node 1 pkg 1 core 0 sib 4,12 llc 4-5,12-13
cpu 5 online node 1 pkg 1 core 1 sib 5,13 llc 4-5,12-13
cpu 6 online node 1 pkg 1 core 2 sib 6,14 llc 6-7,14-15
cpu 7 online node 1 pkg 1 core 3 sib 7,15 llc 6-7,14-15
cpu 8 online node 0 pkg 0 core 0 sib 0,8 llc 0-1,8-9
cpu 9 online node 0 pkg 0 core 1 sib 1,9 llc 0-1,8-9
cpu 10 online node 0 pkg 0 core 2 sib 2,10 llc 2-3,10-11
cpu 11 online node 0 pkg 0 core 3 sib 3,11 llc 2-3,10-11
cpu 12 online node 1 pkg 1 core 0 sib 4,12 llc 4-5,12-13
cpu 13 online node 1 pkg 1 core 1 sib 5,13 llc 4-5,12-13
cpu 14 online node 1 pkg 1 core 2 sib 6,14 llc 6-7,14-15
cpu 15 online node 1 pkg 1 core 3 sib 7,15 llc 6-7,14-15
llc 0-1,8-9 2-3,10-11 4-5,12-13 6-7,14-15
allowed cpus 0-15 nodes 0-1
`,
	"epyc-8node-nps4": `
nodes 0-7
node 0 cpus 0-3,32-35 total 16642998272 free 16106127360 dist 10,12,12,12,32,32,32,32 huge 2MiB:0/0 1GiB:0/0
node 1 cpus 4-7,36-39 total 16644046848 free 16101933056 dist 12,10,12,12,32,32,32,32 huge 2MiB:0/0 1GiB:0/0
node 2 cpus 8-11,40-43 total 16645095424 free 16097738752 dist 12,12,10,12,32,32,32,32 huge 2MiB:0/0 1GiB:0/0
node 3 cpus 12-15,44-47 total 16646144000 free 16093544448 dist 12,12,12,10,32,32,32,32 huge 2MiB:0/0 1GiB:0/0
node 4 cpus 16-19,48-51 total 16647192576 free 16089350144 dist 32,32,32,32,10,12,12,12 huge 2MiB:0/0 1GiB:0/0
node 5 cpus 20-23,52-55 total 16648241152 free 16085155840 dist 32,32,32,32,12,10,12,12 huge 2MiB:0/0 1GiB:0/0
node 6 cpus 24-27,56-59 total 16649289728 free 16080961536 dist 32,32,32,32,12,12,10,12 huge 2MiB:0/0 1GiB:0/0
node 7 cpus 28-31,60-63 total 16650338304 free 16076767232 dist 32,32,32,32,12,12,12,10 huge 2MiB:0/0 1GiB:0/0
cpu 0 online node 0 pkg 0 core 0 sib 0,32 llc 0-1,32-33
cpu 1 online node 0 pkg 0 core 1 sib 1,33 llc 0-1,32-33
cpu 2 online node 0 pkg 0 core 2 sib 2,34 llc 2-3,34-35
cpu 3 online node 0 pkg 0 core 3 sib 3,35 llc 2-3,34-35
cpu 4 online node 1 pkg 0 core 4 sib 4,36 llc 4-5,36-37
cpu 5 online node 1 pkg 0 core 5 sib 5,37 llc 4-5,36-37
cpu 6 online node 1 pkg 0 core 6 sib 6,38 llc 6-7,38-39
cpu 7 online node 1 pkg 0 core 7 sib 7,39 llc 6-7,38-39
cpu 8 online node 2 pkg 0 core 8 sib 8,40 llc 8-9,40-41
cpu 9 online node 2 pkg 0 core 9 sib 9,41 llc 8-9,40-41
cpu 10 online node 2 pkg 0 core 10 sib 10,42 llc 10-11,42-43
cpu 11 online node 2 pkg 0 core 11 sib 11,43 llc 10-11,42-43
cpu 12 online node 3 pkg 0 core 12 sib 12,44 llc 12-13,44-45
cpu 13 online node 3 pkg 0 core 13 sib 13,45 llc 12-13,44-45
cpu 14 online node 3 pkg 0 core 14 sib 14,46 llc 14-15,46-47
cpu 15 online node 3 pkg 0 core 15 sib 15,47 llc 14-15,46-47
cpu 16 online node 4 pkg 1 core 0 sib 16,48 llc 16-17,48-49
cpu 17 online node 4 pkg 1 core 1 sib 17,49 llc 16-17,48-49
cpu 18 online node 4 pkg 1 core 2 sib 18,50 llc 18-19,50-51
cpu 19 online node 4 pkg 1 core 3 sib 19,51 llc 18-19,50-51
cpu 20 online node 5 pkg 1 core 4 sib 20,52 llc 20-21,52-53
cpu 21 online node 5 pkg 1 core 5 sib 21,53 llc 20-21,52-53
cpu 22 online node 5 pkg 1 core 6 sib 22,54 llc 22-23,54-55
cpu 23 online node 5 pkg 1 core 7 sib 23,55 llc 22-23,54-55
cpu 24 online node 6 pkg 1 core 8 sib 24,56 llc 24-25,56-57
cpu 25 online node 6 pkg 1 core 9 sib 25,57 llc 24-25,56-57
cpu 26 online node 6 pkg 1 core 10 sib 26,58 llc 26-27,58-59
cpu 27 online node 6 pkg 1 core 11 sib 27,59 llc 26-27,58-59
cpu 28 online node 7 pkg 1 core 12 sib 28,60 llc 28-29,60-61
cpu 29 online node 7 pkg 1 core 13 sib 29,61 llc 28-29,60-61
cpu 30 online node 7 pkg 1 core 14 sib 30,62 llc 30-31,62-63
cpu 31 online node 7 pkg 1 core 15 sib 31,63 llc 30-31,62-63
cpu 32 online node 0 pkg 0 core 0 sib 0,32 llc 0-1,32-33
cpu 33 online node 0 pkg 0 core 1 sib 1,33 llc 0-1,32-33
cpu 34 online node 0 pkg 0 core 2 sib 2,34 llc 2-3,34-35
cpu 35 online node 0 pkg 0 core 3 sib 3,35 llc 2-3,34-35
cpu 36 online node 1 pkg 0 core 4 sib 4,36 llc 4-5,36-37
cpu 37 online node 1 pkg 0 core 5 sib 5,37 llc 4-5,36-37
cpu 38 online node 1 pkg 0 core 6 sib 6,38 llc 6-7,38-39
cpu 39 online node 1 pkg 0 core 7 sib 7,39 llc 6-7,38-39
cpu 40 online node 2 pkg 0 core 8 sib 8,40 llc 8-9,40-41
cpu 41 online node 2 pkg 0 core 9 sib 9,41 llc 8-9,40-41
cpu 42 online node 2 pkg 0 core 10 sib 10,42 llc 10-11,42-43
cpu 43 online node 2 pkg 0 core 11 sib 11,43 llc 10-11,42-43
cpu 44 online node 3 pkg 0 core 12 sib 12,44 llc 12-13,44-45
cpu 45 online node 3 pkg 0 core 13 sib 13,45 llc 12-13,44-45
cpu 46 online node 3 pkg 0 core 14 sib 14,46 llc 14-15,46-47
cpu 47 online node 3 pkg 0 core 15 sib 15,47 llc 14-15,46-47
cpu 48 online node 4 pkg 1 core 0 sib 16,48 llc 16-17,48-49
cpu 49 online node 4 pkg 1 core 1 sib 17,49 llc 16-17,48-49
cpu 50 online node 4 pkg 1 core 2 sib 18,50 llc 18-19,50-51
cpu 51 online node 4 pkg 1 core 3 sib 19,51 llc 18-19,50-51
cpu 52 online node 5 pkg 1 core 4 sib 20,52 llc 20-21,52-53
cpu 53 online node 5 pkg 1 core 5 sib 21,53 llc 20-21,52-53
cpu 54 online node 5 pkg 1 core 6 sib 22,54 llc 22-23,54-55
cpu 55 online node 5 pkg 1 core 7 sib 23,55 llc 22-23,54-55
cpu 56 online node 6 pkg 1 core 8 sib 24,56 llc 24-25,56-57
cpu 57 online node 6 pkg 1 core 9 sib 25,57 llc 24-25,56-57
cpu 58 online node 6 pkg 1 core 10 sib 26,58 llc 26-27,58-59
cpu 59 online node 6 pkg 1 core 11 sib 27,59 llc 26-27,58-59
cpu 60 online node 7 pkg 1 core 12 sib 28,60 llc 28-29,60-61
cpu 61 online node 7 pkg 1 core 13 sib 29,61 llc 28-29,60-61
cpu 62 online node 7 pkg 1 core 14 sib 30,62 llc 30-31,62-63
cpu 63 online node 7 pkg 1 core 15 sib 31,63 llc 30-31,62-63
llc 0-1,32-33 2-3,34-35 4-5,36-37 6-7,38-39 8-9,40-41 10-11,42-43 12-13,44-45 14-15,46-47 16-17,48-49 18-19,50-51 20-21,52-53 22-23,54-55 24-25,56-57 26-27,58-59 28-29,60-61 30-31,62-63
allowed cpus 0-63 nodes 0-7
`,
	"cpuless-memory-node": `
nodes 0-2
node 0 cpus 0-3 total 16777216000 free 15360000000 dist 10,21,24 huge 2MiB:0/0 1GiB:0/0
node 1 cpus 4-7 total 16911433728 free 16384000000 dist 21,10,24 huge 2MiB:0/0 1GiB:0/0
node 2 cpus - total 68719476736 free 68710400000 dist 24,24,10 huge 2MiB:0/0 1GiB:0/0 cpuless
cpu 0 online node 0 pkg 0 core 0 sib 0 llc 0-3
cpu 1 online node 0 pkg 0 core 1 sib 1 llc 0-3
cpu 2 online node 0 pkg 0 core 2 sib 2 llc 0-3
cpu 3 online node 0 pkg 0 core 3 sib 3 llc 0-3
cpu 4 online node 1 pkg 1 core 0 sib 4 llc 4-7
cpu 5 online node 1 pkg 1 core 1 sib 5 llc 4-7
cpu 6 online node 1 pkg 1 core 2 sib 6 llc 4-7
cpu 7 online node 1 pkg 1 core 3 sib 7 llc 4-7
llc 0-3 4-7
allowed cpus 0-7 nodes 0-2
`,
	"offline-cpus-holes": `
nodes 0,2
node 0 cpus 0-2 total 8589934592 free 7516192768 dist 10,20 huge 2MiB:16/16 1GiB:0/0
node 2 cpus 4-6 total 8455716864 free 8192000000 dist 20,10 huge 2MiB:0/0 1GiB:0/0
cpu 0 online node 0 pkg 0 core 0 sib 0 llc 0-2
cpu 1 online node 0 pkg 0 core 1 sib 1 llc 0-2
cpu 2 online node 0 pkg 0 core 2 sib 2 llc 0-2
cpu 3 offline node -1 pkg -1 core -1 sib - llc -
cpu 4 online node 2 pkg 1 core 0 sib 4 llc 4-6
cpu 5 online node 2 pkg 1 core 1 sib 5 llc 4-6
cpu 6 online node 2 pkg 1 core 2 sib 6 llc 4-6
cpu 7 offline node -1 pkg -1 core -1 sib - llc -
cpu 8 offline node -1 pkg -1 core -1 sib - llc -
cpu 9 offline node -1 pkg -1 core -1 sib - llc -
llc 0-2 4-6
allowed cpus 0-2,4-6 nodes 0,2
`, "xeon-nul-padded": `
nodes 0
node 0 cpus 0-11 total 67401109504 free 61554978816 dist 10 huge 2MiB:64/64 1GiB:0/0
cpu 0 online node 0 pkg 0 core 0 sib 0,6 llc 0-11
cpu 1 online node 0 pkg 0 core 1 sib 1,7 llc 0-11
cpu 2 online node 0 pkg 0 core 2 sib 2,8 llc 0-11
cpu 3 online node 0 pkg 0 core 8 sib 3,9 llc 0-11
cpu 4 online node 0 pkg 0 core 9 sib 4,10 llc 0-11
cpu 5 online node 0 pkg 0 core 10 sib 5,11 llc 0-11
cpu 6 online node 0 pkg 0 core 0 sib 0,6 llc 0-11
cpu 7 online node 0 pkg 0 core 1 sib 1,7 llc 0-11
cpu 8 online node 0 pkg 0 core 2 sib 2,8 llc 0-11
cpu 9 online node 0 pkg 0 core 8 sib 3,9 llc 0-11
cpu 10 online node 0 pkg 0 core 9 sib 4,10 llc 0-11
cpu 11 online node 0 pkg 0 core 10 sib 5,11 llc 0-11
llc 0-11
allowed cpus 0-11 nodes 0
`,
	"rhel5-masks-no-node-online": `
nodes 0-1
node 0 cpus 0-3 total 8589934592 free 6442450944 dist 10,20 huge -
node 1 cpus 4-7 total 8589934592 free 7516192768 dist 20,10 huge -
cpu 0 online node 0 pkg 0 core 0 sib 0 llc 0-3
cpu 1 online node 0 pkg 0 core 1 sib 1 llc 0-3
cpu 2 online node 0 pkg 0 core 2 sib 2 llc 0-3
cpu 3 online node 0 pkg 0 core 3 sib 3 llc 0-3
cpu 4 online node 1 pkg 1 core 0 sib 4 llc 4-7
cpu 5 online node 1 pkg 1 core 1 sib 5 llc 4-7
cpu 6 online node 1 pkg 1 core 2 sib 6 llc 4-7
cpu 7 online node 1 pkg 1 core 3 sib 7 llc 4-7
llc 0-3 4-7
allowed cpus 0-7 nodes 0-1
note no devices/system/node/online (older kernel): the online nodes are the nodeN directories (0-1)
note no devices/system/cpu/possible: the possible CPUs are the present and online ones (0-7)
`,
	"node0-offline-possible-distance": `
nodes 1
node 1 cpus 0-3 total 4123926528 free 3596308480 dist 10 huge 2MiB:0/0 1GiB:0/0
cpu 0 online node 1 pkg 0 core 0 sib 0 llc 0-3
cpu 1 online node 1 pkg 0 core 1 sib 1 llc 0-3
cpu 2 online node 1 pkg 0 core 2 sib 2 llc 0-3
cpu 3 online node 1 pkg 0 core 3 sib 3 llc 0-3
llc 0-3
allowed cpus 0-3 nodes 1
note distance rows not indexed by online node: node 1: one per possible node (0-1)
`,
	"kvm-partial-caches": `
nodes 0-1
node 0 cpus 0-3 total 4127195136 free 3737714688 dist 10,20 huge 2MiB:0/0 1GiB:0/0
node 1 cpus 4-7 total 4227858432 free 4093640704 dist 20,10 huge 2MiB:0/0 1GiB:0/0
cpu 0 online node 0 pkg 0 core 0 sib 0 llc 0-3
cpu 1 online node 0 pkg 0 core 1 sib 1 llc 0-3
cpu 2 online node 0 pkg 0 core 2 sib 2 llc 0-3
cpu 3 online node 0 pkg 0 core 3 sib 3 llc 0-3
cpu 4 online node 1 pkg 1 core 0 sib 4 llc 4-7
cpu 5 online node 1 pkg 1 core 1 sib 5 llc 4-7
cpu 6 online node 1 pkg 1 core 2 sib 6 llc 4-7
cpu 7 online node 1 pkg 1 core 3 sib 7 llc 4-7
llc 0-3 4-7
allowed cpus 0-7 nodes 0-1
note no last-level cache information for cpus 3-7 (cpus 4-5: no L3 cache, highest L2; cpus 3,6-7: no cache directory): cpus 3 join the L3 group that lists them; cpus 4-7 use their package (within their node) as LLC group
`,
	"arm64-no-package-private-l2": `
nodes 0-1
node 0 cpus 0-3 total 68381835264 free 65548582912 dist 10,16 huge 2MiB:0/0 1GiB:0/0
node 1 cpus 4-7 total 68652367872 free 67108864000 dist 16,10 huge 2MiB:0/0 1GiB:0/0
cpu 0 online node 0 pkg -1 core 0 sib 0 llc 0-3
cpu 1 online node 0 pkg -1 core 1 sib 1 llc 0-3
cpu 2 online node 0 pkg -1 core 2 sib 2 llc 0-3
cpu 3 online node 0 pkg -1 core 3 sib 3 llc 0-3
cpu 4 online node 1 pkg -1 core 4 sib 4 llc 4-7
cpu 5 online node 1 pkg -1 core 5 sib 5 llc 4-7
cpu 6 online node 1 pkg -1 core 6 sib 6 llc 4-7
cpu 7 online node 1 pkg -1 core 7 sib 7 llc 4-7
llc 0-3 4-7
allowed cpus 0-7 nodes 0-1
note cpus 0-7 report physical_package_id -1: their package is unknown
note no last-level cache information for cpus 0-7 (cpus 0-7: only core-private caches, up to L2): cpus 0-7 use their node as LLC group (package unknown)
`,
	"cxl-memory-only-node": `
nodes 0,2
node 0 cpus 0-6 total 33382465536 free 30769414144 dist 10,50 huge 2MiB:8/8 1GiB:0/0
node 2 cpus - total 137438953472 free 137216000000 dist 50,10 huge - cpuless
cpu 0 online node 0 pkg 0 core 0 sib 0,4 llc 0-6
cpu 1 online node 0 pkg 0 core 1 sib 1,5 llc 0-6
cpu 2 online node 0 pkg 0 core 2 sib 2,6 llc 0-6
cpu 3 online node 0 pkg 0 core 3 sib 3 llc 0-6
cpu 4 online node 0 pkg 0 core 0 sib 0,4 llc 0-6
cpu 5 online node 0 pkg 0 core 1 sib 1,5 llc 0-6
cpu 6 online node 0 pkg 0 core 2 sib 2,6 llc 0-6
cpu 7 offline node -1 pkg -1 core -1 sib - llc -
cpu 8 offline node -1 pkg -1 core -1 sib - llc -
cpu 9 offline node -1 pkg -1 core -1 sib - llc -
cpu 10 offline node -1 pkg -1 core -1 sib - llc -
cpu 11 offline node -1 pkg -1 core -1 sib - llc -
cpu 12 offline node -1 pkg -1 core -1 sib - llc -
cpu 13 offline node -1 pkg -1 core -1 sib - llc -
cpu 14 offline node -1 pkg -1 core -1 sib - llc -
cpu 15 offline node -1 pkg -1 core -1 sib - llc -
llc 0-6
allowed cpus 0-6 nodes 0,2
note no devices/system/cpu/online: the online CPUs (0-6) are devices/system/cpu/present less those whose cpuN/online says 0
`,
	"power9-lpar-no-distance": `
nodes 0-1
node 0 cpus 0-3,8-11 total 34359738368 free 31138512896 dist 10,20 huge 16MiB:0/0 16GiB:0/0
node 1 cpus 16-19,24-27 total 34359738368 free 32212254720 dist 20,10 huge 16MiB:0/0 16GiB:0/0
cpu 0 online node 0 pkg -1 core 0 sib 0-3 llc 0-3
cpu 1 online node 0 pkg -1 core 0 sib 0-3 llc 0-3
cpu 2 online node 0 pkg -1 core 0 sib 0-3 llc 0-3
cpu 3 online node 0 pkg -1 core 0 sib 0-3 llc 0-3
cpu 4 offline node -1 pkg -1 core -1 sib - llc -
cpu 5 offline node -1 pkg -1 core -1 sib - llc -
cpu 6 offline node -1 pkg -1 core -1 sib - llc -
cpu 7 offline node -1 pkg -1 core -1 sib - llc -
cpu 8 online node 0 pkg -1 core 8 sib 8-11 llc 8-11
cpu 9 online node 0 pkg -1 core 8 sib 8-11 llc 8-11
cpu 10 online node 0 pkg -1 core 8 sib 8-11 llc 8-11
cpu 11 online node 0 pkg -1 core 8 sib 8-11 llc 8-11
cpu 12 offline node -1 pkg -1 core -1 sib - llc -
cpu 13 offline node -1 pkg -1 core -1 sib - llc -
cpu 14 offline node -1 pkg -1 core -1 sib - llc -
cpu 15 offline node -1 pkg -1 core -1 sib - llc -
cpu 16 online node 1 pkg -1 core 16 sib 16-19 llc 16-19
cpu 17 online node 1 pkg -1 core 16 sib 16-19 llc 16-19
cpu 18 online node 1 pkg -1 core 16 sib 16-19 llc 16-19
cpu 19 online node 1 pkg -1 core 16 sib 16-19 llc 16-19
cpu 20 offline node -1 pkg -1 core -1 sib - llc -
cpu 21 offline node -1 pkg -1 core -1 sib - llc -
cpu 22 offline node -1 pkg -1 core -1 sib - llc -
cpu 23 offline node -1 pkg -1 core -1 sib - llc -
cpu 24 online node 1 pkg -1 core 24 sib 24-27 llc 24-27
cpu 25 online node 1 pkg -1 core 24 sib 24-27 llc 24-27
cpu 26 online node 1 pkg -1 core 24 sib 24-27 llc 24-27
cpu 27 online node 1 pkg -1 core 24 sib 24-27 llc 24-27
cpu 28 offline node -1 pkg -1 core -1 sib - llc -
cpu 29 offline node -1 pkg -1 core -1 sib - llc -
cpu 30 offline node -1 pkg -1 core -1 sib - llc -
cpu 31 offline node -1 pkg -1 core -1 sib - llc -
llc 0-3 8-11 16-19 24-27
allowed cpus 0-3,8-11,16-19,24-27 nodes 0-1
note nodes 0-1 have no distance file: their distances are taken from the other nodes' rows, else 10 to themselves and 20 to the others
note cpus 0-3,8-11,16-19,24-27 report physical_package_id -1: their package is unknown
`,
	"s390x-no-numa": `
nodes 0
node 0 cpus 0-3 total 4294967296 free 0 dist 10 huge -
cpu 0 online node 0 pkg 0 core 0 sib 0-1 llc 0-3
cpu 1 online node 0 pkg 0 core 0 sib 0-1 llc 0-3
cpu 2 online node 0 pkg 0 core 1 sib 2-3 llc 0-3
cpu 3 online node 0 pkg 0 core 1 sib 2-3 llc 0-3
cpu 4 offline node -1 pkg -1 core -1 sib - llc -
cpu 5 offline node -1 pkg -1 core -1 sib - llc -
cpu 6 offline node -1 pkg -1 core -1 sib - llc -
cpu 7 offline node -1 pkg -1 core -1 sib - llc -
cpu 8 offline node -1 pkg -1 core -1 sib - llc -
cpu 9 offline node -1 pkg -1 core -1 sib - llc -
cpu 10 offline node -1 pkg -1 core -1 sib - llc -
cpu 11 offline node -1 pkg -1 core -1 sib - llc -
cpu 12 offline node -1 pkg -1 core -1 sib - llc -
cpu 13 offline node -1 pkg -1 core -1 sib - llc -
cpu 14 offline node -1 pkg -1 core -1 sib - llc -
cpu 15 offline node -1 pkg -1 core -1 sib - llc -
llc 0-3
allowed cpus 0-3 nodes 0
note no devices/system/node (kernel without NUMA support): one node 0 holds every online CPU
note node 0 size is its 16 online memory blocks of 256MiB; free memory is unknown
note no last-level cache information for cpus 0-3 (cpus 0-3: only core-private caches, up to L2): cpus 0-3 use their package (within their node) as LLC group
`,
	"hotplug-cpus-unlisted": `
nodes 0-1
node 0 cpus 0-3 total 16710184960 free 15564800000 dist 10,21 huge 2MiB:0/0 1GiB:0/0
node 1 cpus 4-6 total 16907517952 free 16384000000 dist 21,10 huge 2MiB:0/0 1GiB:0/0
cpu 0 online node 0 pkg 0 core 0 sib 0 llc 0-3
cpu 1 online node 0 pkg 0 core 1 sib 1 llc 0-3
cpu 2 online node 0 pkg 0 core 2 sib 2 llc 0-3
cpu 3 online node 0 pkg 0 core 3 sib 3 llc 0-3
cpu 4 online node 1 pkg 1 core 0 sib 4 llc 4-7
cpu 5 online node 1 pkg 1 core 1 sib 5 llc 4-7
cpu 6 online node 1 pkg 1 core 2 sib 6 llc 4-7
cpu 7 online node -1 pkg 1 core 3 sib 7 llc 4-7
llc 0-3 4-7
allowed cpus 0-6 nodes 0-1
note online cpus 3 are in no node's cpulist: placed by their cpuN/nodeM links
note online cpus 7 are in no node's cpulist and name no node: node -1, left out of the allowed CPUs
`,
}

func TestDiscoverFixtures(t *testing.T) {
	entries, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, e := range entries {
		if e.IsDir() {
			seen = append(seen, e.Name())
		}
	}
	if got, want := seen, slices.Sorted(maps.Keys(fixtureWant)); !slices.Equal(got, want) {
		t.Fatalf("fixtures in testdata/ = %v, expectations for %v: every fixture needs its expected result", got, want)
	}
	for _, name := range seen {
		t.Run(name, func(t *testing.T) {
			m, err := Discover(os.DirFS(path.Join("testdata", name)))
			if err != nil {
				t.Fatalf("Discover: %v", err)
			}
			checkConsistent(t, m)
			got, want := describe(m), strings.TrimPrefix(fixtureWant[name], "\n")
			if got != want {
				t.Errorf("Discover(%s) differs from the expectation:\n%s", name, lineDiff(got, want))
			}
			if m.Model != "" {
				t.Errorf("Model = %q; Discover must not look at the host", m.Model)
			}
		})
	}
}

// lineDiff lists the lines that differ between got and want.
func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	var b strings.Builder
	for i := range max(len(g), len(w)) {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			fmt.Fprintf(&b, "line %d:\n  got:  %s\n  want: %s\n", i+1, gl, wl)
		}
	}
	return b.String()
}

// TestMachineAccessors checks the helpers policy code uses, on fixtures with
// several nodes and holes in the node ids.
func TestMachineAccessors(t *testing.T) {
	epyc := mustDiscover(t, "epyc-8node-nps4")
	for _, tc := range []struct {
		a, b hw.Node
		want int
	}{{0, 0, 10}, {0, 3, 12}, {3, 0, 12}, {0, 4, 32}, {7, 4, 12}, {5, 2, 32}, {0, 8, -1}, {9, 0, -1}} {
		if got := epyc.Distance(tc.a, tc.b); got != tc.want {
			t.Errorf("epyc Distance(%d, %d) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}

	holes := mustDiscover(t, "offline-cpus-holes")
	if got := holes.Distance(2, 0); got != 20 {
		t.Errorf("holes Distance(2, 0) = %d, want 20", got)
	}
	if _, ok := holes.NodeByID(1); ok {
		t.Error("holes NodeByID(1) found a node; node ids are {0,2}")
	}
	if n, ok := holes.NodeByID(2); !ok || n.CPUs.String() != "4-6" {
		t.Errorf("holes NodeByID(2) = %+v, %v; want the node with CPUs 4-6", n, ok)
	}
	if c, ok := holes.CPUByID(7); !ok || c.Online {
		t.Errorf("holes CPUByID(7) = %+v, %v; want an offline CPU", c, ok)
	}
	if got := holes.OnlineCPUs().String(); got != "0-2,4-6" {
		t.Errorf("holes OnlineCPUs = %s, want 0-2,4-6", got)
	}

	cpuless := mustDiscover(t, "cpuless-memory-node")
	for _, n := range cpuless.Nodes {
		if n.CPULess != (n.ID == 2) {
			t.Errorf("node %d CPULess = %v", n.ID, n.CPULess)
		}
	}
}

func mustDiscover(t *testing.T, fixture string, opts ...Option) *Machine {
	t.Helper()
	m, err := Discover(os.DirFS(path.Join("testdata", fixture)), opts...)
	if err != nil {
		t.Fatalf("Discover(%s): %v", fixture, err)
	}
	return m
}

func TestDiscoverWithAllowed(t *testing.T) {
	for _, tc := range []struct {
		fixture            string
		cpus, nodes        string
		wantCPUs, wantNode string
	}{
		{"two-socket-smt2", "0-3", "0", "0-3", "0"},
		// Allowed sets are cut down to what is online.
		{"two-socket-smt2", "2-40", "0-7", "2-15", "0-1"},
		{"offline-cpus-holes", "0-9", "0-3", "0-2,4-6", "0,2"},
		{"offline-cpus-holes", "3,7", "1", "", ""},
		{"cpuless-memory-node", "1", "2", "1", "2"},
	} {
		m := mustDiscover(t, tc.fixture, WithAllowed(hw.MustParse[hw.CPU](tc.cpus), hw.MustParse[hw.Node](tc.nodes)))
		if m.AllowedCPUs.String() != tc.wantCPUs || m.AllowedNodes.String() != tc.wantNode {
			t.Errorf("%s WithAllowed(%q, %q): allowed cpus %q nodes %q, want %q %q",
				tc.fixture, tc.cpus, tc.nodes, m.AllowedCPUs, m.AllowedNodes, tc.wantCPUs, tc.wantNode)
		}
	}
}

func TestReadAllowed(t *testing.T) {
	status := func(body string) fstest.MapFS {
		return fstest.MapFS{"self/status": {Data: []byte("Name:\tvcored\nState:\tR (running)\n" + body + "voluntary_ctxt_switches:\t3\n")}}
	}
	cpus, nodes, err := ReadAllowed(status("Cpus_allowed:\tff\nCpus_allowed_list:\t0-3,8\nMems_allowed:\t00000000,00000005\nMems_allowed_list:\t0,2\n"))
	if err != nil || cpus.String() != "0-3,8" || nodes.String() != "0,2" {
		t.Errorf("ReadAllowed = %s, %s, %v; want 0-3,8 0,2 nil", cpus, nodes, err)
	}

	for name, fsys := range map[string]fstest.MapFS{
		"no mems line":  status("Cpus_allowed_list:\t0-1\n"),
		"no cpus line":  status("Mems_allowed_list:\t0\n"),
		"bad cpu list":  status("Cpus_allowed_list:\t0-\nMems_allowed_list:\t0\n"),
		"bad node list": status("Cpus_allowed_list:\t0-1\nMems_allowed_list:\tx\n"),
	} {
		_, _, err := ReadAllowed(fsys)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "self/status") {
			t.Errorf("%s: err = %v, want ErrMalformed naming self/status", name, err)
		}
	}
	if _, _, err := ReadAllowed(fstest.MapFS{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing status: err = %v, want fs.ErrNotExist", err)
	}
}

// TestHost checks invariants on the real machine: whatever it looks like,
// the result must be self-consistent and agree with what this process may use.
func TestHost(t *testing.T) {
	if _, err := os.Stat("/sys/devices/system/node/online"); err != nil {
		t.Skipf("no NUMA sysfs on this host (kernel without CONFIG_NUMA?): %v", err)
	}
	m, err := Host()
	if err != nil {
		t.Fatalf("Host: %v", err)
	}
	if len(m.Nodes) == 0 || len(m.CPUs) == 0 {
		t.Fatalf("Host found %d nodes and %d CPUs", len(m.Nodes), len(m.CPUs))
	}
	var union hw.CPUSet
	for _, n := range m.Nodes {
		if !union.Intersect(n.CPUs).IsEmpty() {
			t.Errorf("node %d CPUs %s overlap another node's", n.ID, n.CPUs)
		}
		union = union.Union(n.CPUs)
		if len(n.Distances) != len(m.Nodes) || m.Distance(n.ID, n.ID) != 10 {
			t.Errorf("node %d distances %v: want %d entries with the local distance 10", n.ID, n.Distances, len(m.Nodes))
		}
		if n.MemTotal == 0 || n.MemFree > n.MemTotal {
			t.Errorf("node %d memory total %d free %d", n.ID, n.MemTotal, n.MemFree)
		}
		if n.CPULess != n.CPUs.IsEmpty() {
			t.Errorf("node %d CPULess = %v with CPUs %q", n.ID, n.CPULess, n.CPUs)
		}
	}
	if !union.Equal(m.OnlineCPUs()) {
		t.Errorf("node CPUs %s != online CPUs %s", union, m.OnlineCPUs())
	}
	var llcs hw.CPUSet
	for _, g := range m.LLCGroups {
		llcs = llcs.Union(g)
	}
	if !llcs.Equal(m.OnlineCPUs()) {
		t.Errorf("LLC groups %v do not cover the online CPUs %s", m.LLCGroups, m.OnlineCPUs())
	}
	for _, c := range m.CPUs {
		if !c.Online {
			continue
		}
		if !c.Siblings.Contains(c.ID) || !c.Siblings.IsSubsetOf(c.LLC) {
			t.Errorf("cpu %d: siblings %s must contain it and lie within its LLC %s", c.ID, c.Siblings, c.LLC)
		}
		if n, ok := m.NodeByID(c.Node); !ok || !n.CPUs.Contains(c.ID) {
			t.Errorf("cpu %d: node %d does not list it", c.ID, c.Node)
		}
	}

	cpus, nodes, err := ReadAllowed(os.DirFS("/proc"))
	if err != nil {
		t.Fatalf("ReadAllowed: %v", err)
	}
	if want := cpus.Intersect(m.OnlineCPUs()); !m.AllowedCPUs.Equal(want) || m.AllowedCPUs.IsEmpty() {
		t.Errorf("AllowedCPUs = %s, want %s (Cpus_allowed_list ∩ online), non-empty", m.AllowedCPUs, want)
	}
	if want := nodes.Intersect(m.NodeIDs()); !m.AllowedNodes.Equal(want) || m.AllowedNodes.IsEmpty() {
		t.Errorf("AllowedNodes = %s, want %s (Mems_allowed_list ∩ online), non-empty", m.AllowedNodes, want)
	}
}
