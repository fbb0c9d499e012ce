# kvmctl — build, test and try the tool. Every target works on a fresh Debian machine:
# `make deps` installs what the cgo build of libvirt and the tests (ipmitool) need when it is
# missing. Only kvmagent links libvirt: kvmctl and kvmagent-stage are built with CGO_ENABLED=0.

GO      ?= go
BIN     := bin
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PKGS    := ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/kvmctl/kvmctl/pkg/buildinfo.Version=$(VERSION)

.PHONY: all deps build check test lint fmt bench bench-ha chaos demo clean

all: build

## deps: install libvirt-dev and pkg-config, and ipmitool (the fence tests and the lab's BMC tests
## drive a BMC with it), with apt-get when missing, then download Go modules
deps:
	@if ! pkg-config --exists libvirt 2>/dev/null; then \
		echo "installing libvirt-dev and pkg-config (needed by libvirt.org/go/libvirt)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libvirt-dev pkg-config >/dev/null; \
	fi
	@if ! command -v ipmitool >/dev/null 2>&1; then \
		echo "installing ipmitool (the ipmitool fence driver's and the lab's BMC tests run it)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ipmitool >/dev/null; \
	fi
	$(GO) mod download

## build: bin/kvmctl and bin/kvmagent-stage (static, without cgo) and bin/kvmagent (cgo: libvirt)
build: deps
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/kvmctl ./cmd/kvmctl
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/kvmagent-stage ./cmd/kvmagent-stage
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/kvmagent ./cmd/kvmagent

## check: fail when gofmt, go vet or go mod tidy would change or report anything
check: deps
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@$(GO) mod tidy -diff || { echo "go mod tidy would change go.mod/go.sum: run 'go mod tidy'"; exit 1; }

## lint: check, plus staticcheck (fetched from the Go module proxy on first use)
lint: check
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

## test: check, then every test under the race detector
test: check
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

## bench: the README's performance numbers (labs of 100 and 30 hosts, stage API benchmarks)
bench: build
	./scripts/bench.sh

## bench-ha: crash -> fence and crash -> VMs running elsewhere over ROUNDS lab crashes (default 20)
bench-ha: build
	./scripts/bench-ha.sh

## chaos: rolling maintenance on a lab while kvmctl and agents are killed at random; the fleet
## must be whole after every round (ROUNDS=10 by default)
chaos: build
	./scripts/chaos.sh $(or $(ROUNDS),10)

## demo: build, bring up a lab of 6 hosts (2 clusters, 3 VMs each), run rolling maintenance of c1
demo: build
	./scripts/demo.sh

## fmt: rewrite the sources with gofmt
fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)
