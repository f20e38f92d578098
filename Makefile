# vcored: build, host tests, and the multi-node suite in qemu guests.
#
#   make build              static bin/vcored
#   make test               the host suite (same command as README and .ci/run)
#   make vmtest             the NUMA suite in a 2-node, then a 4-node qemu guest
#   make vmtest NODES=3     one guest with 3 nodes (NODES takes a comma list too)
#   make vmtest2 / vmtest4  one guest with 2 / 4 nodes
#   make vmtest VMTEST_FLAGS='--run Mbind --keep'   extra harness flags
#
# The guest runs every package with a *_numa_test.go file plus
# internal/vmtest.CorePackages; see internal/vmtest/doc.go.

GO             ?= go
NODES          ?= 2,4
CPUS_PER_NODE  ?= 2
MEM_PER_NODE   ?= 512M
VMTEST_TIMEOUT ?= 8m
VMTEST_FLAGS   ?=

.PHONY: build test vmtest vmtest2 vmtest4

build:
	CGO_ENABLED=0 $(GO) build -o bin/vcored ./cmd/vcored

test:
	$(GO) test -race -count=1 -timeout 45m ./...

# Built first rather than `go run`: go run turns every failure into exit 1,
# and the harness's codes (124 timeout, 125 no sentinel/panic) matter.
vmtest:
	$(GO) build -o bin/vmtest ./internal/vmtest/cmd/vmtest
	bin/vmtest --nodes $(NODES) --cpus-per-node $(CPUS_PER_NODE) \
		--mem-per-node $(MEM_PER_NODE) --timeout $(VMTEST_TIMEOUT) $(VMTEST_FLAGS)

vmtest2:
	$(MAKE) vmtest NODES=2

vmtest4:
	$(MAKE) vmtest NODES=4
