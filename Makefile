# vcored: build, host tests, and the multi-node suite in qemu guests.
#
#   make build              static bin/vcored
#   make test               the host suite (same command as README and .ci/run)
#   make vmtest             the NUMA suite in a 2-node, then a 4-node qemu guest
#   make vmtest NODES=3     one guest with 3 nodes (NODES takes a comma list too)
#   make vmtest2 / vmtest4  one guest with 2 / 4 nodes
#   make vmtest VMTEST_FLAGS='--run Mbind --keep'   extra harness flags
#   make vmtest-nri         the NRI test (containerd in a 2-node guest; see below)
#
# The guest runs every package with a *_numa_test.go file plus
# internal/vmtest.CorePackages; see internal/vmtest/doc.go.

GO             ?= go
NODES          ?= 2,4
CPUS_PER_NODE  ?= 2
MEM_PER_NODE   ?= 512M
VMTEST_TIMEOUT ?= 12m
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

# NRI end-to-end test dependencies (internal/nrie2e): a real containerd v2
# with ctr and the runc shim built from containerd's Go module, Debian's runc
# and busybox-static (the test image's shell), and crictl. Idempotent: a pinned binary already in $(GOBIN) whose
# --version reports the pinned version is not rebuilt.
CONTAINERD_VERSION ?= v2.4.2
CRICTL_VERSION     ?= v1.37.0
GOBIN_DIR          := $(shell $(GO) env GOPATH)/bin

.PHONY: nri-deps
nri-deps:
	@debs=""; command -v runc >/dev/null || debs="runc"; command -v busybox >/dev/null || debs="$$debs busybox-static"; \
	if [ -n "$$debs" ]; then echo "nri-deps: installing$$debs"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$debs >/dev/null; fi
	@if $(GOBIN_DIR)/containerd --version 2>/dev/null | grep -q ' $(CONTAINERD_VERSION) ' && \
	    $(GOBIN_DIR)/ctr --version 2>/dev/null | grep -q ' $(CONTAINERD_VERSION)$$' && \
	    test -x $(GOBIN_DIR)/containerd-shim-runc-v2; then \
		echo "nri-deps: containerd $(CONTAINERD_VERSION) already installed"; \
	else \
		echo "nri-deps: building containerd $(CONTAINERD_VERSION)"; \
		CGO_ENABLED=1 $(GO) install \
		  -ldflags "-X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" \
		  github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION) \
		  github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD_VERSION) \
		  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD_VERSION); \
	fi
	@if $(GOBIN_DIR)/crictl --version 2>/dev/null | grep -q '$(CRICTL_VERSION)'; then \
		echo "nri-deps: crictl $(CRICTL_VERSION) already installed"; \
	else \
		echo "nri-deps: building crictl $(CRICTL_VERSION)"; \
		$(GO) install -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)" \
		  sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION); \
	fi

# The multi-node NRI test (internal/nrie2e TestNRIPlacementNUMA) in a 2-node
# qemu guest: containerd, ctr, the runc shim and crictl built static
# (CGO_ENABLED=0, stripped) into bin/nri-guest, Debian's runc with its ELF
# interpreter and libraries, and the pods' pause binary, all added to the
# initramfs with --extra. Not part of `make vmtest` (see README).
NRI_GUEST_DIR := $(CURDIR)/bin/nri-guest
# NRI_RUN=NRIPlacement NRI_MEM_PER_NODE=1G also runs TestNRIPlacement there.
NRI_RUN          ?= NUMA
NRI_MEM_PER_NODE ?= 768M
NRI_GUEST_TOOLS = $(NRI_GUEST_DIR)/containerd,$(NRI_GUEST_DIR)/containerd-shim-runc-v2,$(NRI_GUEST_DIR)/ctr,$(NRI_GUEST_DIR)/crictl,$(NRI_GUEST_DIR)/nrie2e-pause

.PHONY: nri-guest-deps vmtest-nri
nri-guest-deps:
	@command -v runc >/dev/null || { echo "nri-guest-deps: installing runc"; apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends runc >/dev/null; }
	@if $(NRI_GUEST_DIR)/containerd --version 2>/dev/null | grep -q ' $(CONTAINERD_VERSION) ' && \
	    $(NRI_GUEST_DIR)/ctr --version 2>/dev/null | grep -q ' $(CONTAINERD_VERSION)$$' && \
	    test -x $(NRI_GUEST_DIR)/containerd-shim-runc-v2; then \
		echo "nri-guest-deps: static containerd $(CONTAINERD_VERSION) already built"; \
	else \
		echo "nri-guest-deps: building static containerd $(CONTAINERD_VERSION)"; \
		CGO_ENABLED=0 GOBIN=$(NRI_GUEST_DIR) $(GO) install \
		  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" \
		  github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD_VERSION) \
		  github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD_VERSION) \
		  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD_VERSION); \
	fi
	@if $(NRI_GUEST_DIR)/crictl --version 2>/dev/null | grep -q '$(CRICTL_VERSION)'; then \
		echo "nri-guest-deps: static crictl $(CRICTL_VERSION) already built"; \
	else \
		echo "nri-guest-deps: building static crictl $(CRICTL_VERSION)"; \
		CGO_ENABLED=0 GOBIN=$(NRI_GUEST_DIR) $(GO) install \
		  -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$(CRICTL_VERSION)" \
		  sigs.k8s.io/cri-tools/cmd/crictl@$(CRICTL_VERSION); \
	fi
	CGO_ENABLED=0 $(GO) build -o $(NRI_GUEST_DIR)/nrie2e-pause ./internal/nrie2e/testdata/pause

vmtest-nri: nri-guest-deps
	$(GO) build -o bin/vmtest ./internal/vmtest/cmd/vmtest
	bin/vmtest --nodes 2 --cpus-per-node $(CPUS_PER_NODE) --mem-per-node $(NRI_MEM_PER_NODE) \
		--timeout $(VMTEST_TIMEOUT) --pkgs ./internal/nrie2e --run '$(NRI_RUN)' \
		--extra $(NRI_GUEST_TOOLS),$$(command -v runc) $(VMTEST_FLAGS)
