# pushrelay — the two commands a fresh machine needs are `make run` and
# `make test`.

GO       ?= go
BIN      := bin/pushrelay
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
GOFLAGS_BUILD := -trimpath -ldflags '$(LDFLAGS)'

.PHONY: all build run test fuzz vet bench clean npm-deps cross test-arm package

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN) ./cmd/pushrelay

# Build and start the relay on the embedded default config, data in ./data.
run: build
	./$(BIN) run --config configs/pushrelay.yaml

# Everything CI runs: vet, unit and end-to-end tests (with the race detector
# on the core packages), fuzz seed corpora, and the npm web-push interop test;
# the endpoint's tests again, and a few end-to-end tests, on net/http
# without HTTP/2, as mips and mipsle serve it (tags nofasthttp
# nethttpomithttp2, seconds).
test: vet npm-deps
	$(GO) test -count=1 -timeout 10m ./...
	$(GO) test -count=1 -race -timeout 10m ./relay/... ./kick/... ./discovery/...
	$(GO) test -count=1 -race -timeout 5m -tags 'nofasthttp nethttpomithttp2' ./relay/endpoint/
	$(GO) test -count=1 -timeout 5m -tags 'nofasthttp nethttpomithttp2' \
	  -run 'TestE2EFlow|TestE2EBadEndpointInput|TestE2EBatch|TestE2ESite$$|TestE2EUpstream$$|TestE2EMegaphone|TestE2EChainThreeTiers|TestE2EWebPushNPM|TestNoFastHTTPBuild' ./cmd/pushrelay/
	cd firmware && $(GO) vet ./... && $(GO) test -count=1 -timeout 5m ./...

# The web-push npm package, the third-party sender of the interop test,
# pinned by testdata/webpush-npm/package-lock.json.
npm-deps: testdata/webpush-npm/node_modules/.package-lock.json
testdata/webpush-npm/node_modules/.package-lock.json: testdata/webpush-npm/package-lock.json
	cd testdata/webpush-npm && npm ci --no-audit --no-fund --loglevel=error

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || (echo "gofmt needed:"; gofmt -l .; exit 1)
	$(GO) vet ./...
	$(GO) vet -tags 'notools nosite nopprof nofasthttp' ./cmd/pushrelay/ ./relay/admin/ ./relay/endpoint/
	$(GO) vet -tags 'notools nopprof nofasthttp nethttpomithttp2' ./cmd/pushrelay/ ./relay/admin/ ./relay/endpoint/
	$(GO) vet -tags 'notools nethttpomithttp2' ./cmd/pushrelay/ ./relay/admin/ ./relay/endpoint/

# A short coverage-guided run of every fuzz target (FUZZTIME each).
FUZZTIME ?= 15s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# Benchmarks of the packages (the relay-level load tool is `pushrelay bench`).
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s ./relay/...

# Static, reproducible gateway binaries (no cgo, -trimpath, no build id,
# version and commit stamped) for every target, with SHA256SUMS, and the
# size budget checked. Same commit, same bytes. Gateway builds leave out
# the developer and test tools (tag notools: device, send, bench; `make
# build` keeps them) and net/http's HTTP/2 (tag nethttpomithttp2: 0.3-0.5
# MiB; nothing here speaks HTTP/2: fasthttp serves HTTP/1.1 only, WebSockets
# and the upstream and megaphone clients use HTTP/1.1), and the MIPS builds
# pprof too (tag nopprof) and serve the endpoint with net/http instead of
# fasthttp (tag nofasthttp: 0.5 MiB; docs/benchmarks.md, "The endpoint on
# net/http for mips"), to fit the budget and small flash. Every
# gateway build has the site (memberlist and hashicorp/raft); `nosite`
# leaves it out (about 2.8 MiB on mips) for a single relay with more room
# (docs/benchmarks.md, "Gateway builds: room for the site", section 9).
TARGETS := amd64 arm64 armv5 armv6 armv7 mipsle mips riscv64
SIZE_BUDGET := 14680064
# Inlining off outside the hot path: 1.06-1.25 MiB less per target, CPU per
# message within the noise on posts and +2-5% on the relay link
# (docs/benchmarks.md, "Gateway builds: room for the site", 3d). On by
# default since the site is in every gateway build; `make cross
# CROSS_GCFLAGS=` builds without it. Our own command (flags, configuration,
# wiring, the store tools: nothing per message) is built without inlining
# too: 64 KiB on mips.
NOINLINE_COLD := -gcflags=all=-l -gcflags=runtime= -gcflags=internal/...= \
  -gcflags=sync/...= -gcflags=syscall= -gcflags=net= -gcflags=time= \
  -gcflags=github.com/pushrelay/...= -gcflags=github.com/valyala/...= \
  -gcflags=go.etcd.io/...= -gcflags=github.com/gorilla/...= \
  -gcflags=github.com/pushrelay/pushrelay/cmd/...=-l
CROSS_GCFLAGS ?= $(NOINLINE_COLD)
cross:
	@rm -rf dist && mkdir -p dist
	@for t in $(TARGETS); do \
	  arch=$$t; goarm=; gomips=; tags="notools nethttpomithttp2"; \
	  case $$t in armv*) arch=arm; goarm=$${t#armv};; mips|mipsle) gomips=softfloat; tags="notools nopprof nofasthttp nethttpomithttp2";; esac; \
	  out=dist/pushrelay-linux-$$t; \
	  echo "build $$out"; \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch GOARM=$$goarm GOMIPS=$$gomips \
	    $(GO) build -trimpath -buildvcs=false -tags "$$tags" $(CROSS_GCFLAGS) \
	    -ldflags '-s -w -buildid= -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.target=linux/'$$t \
	    -o $$out ./cmd/pushrelay || exit 1; \
	done
	@cd dist && sha256sum pushrelay-linux-* > SHA256SUMS
	@for f in dist/pushrelay-linux-*; do \
	  size=$$(stat -c %s $$f); \
	  printf '%-32s %9d bytes (%.2f MiB)\n' $$f $$size $$(echo "$$size/1048576" | bc -l); \
	  if [ $$size -gt $(SIZE_BUDGET) ]; then echo "$$f is over the 14 MiB budget"; exit 1; fi; \
	done

# OpenWrt .ipk and Debian .deb for every target in dist/ (firmware/ is its
# own Go module so the packaging library stays out of the relay's deps).
package: cross
	cd firmware && $(GO) run ./mkpkg -dist ../dist -out ../dist -version $(VERSION)

# The core packages' tests on 32- and 64-bit ARM under qemu-user (no
# binfmt needed: go test runs the test binary through the emulator).
test-arm:
	CGO_ENABLED=0 GOARCH=arm GOARM=7 PUSHRELAY_TEST_EXEC=qemu-arm-static \
	  $(GO) test -count=1 -timeout 15m -exec qemu-arm-static ./relay/... ./kick/... ./discovery/...
	CGO_ENABLED=0 GOARCH=arm64 PUSHRELAY_TEST_EXEC=qemu-aarch64-static \
	  $(GO) test -count=1 -timeout 15m -exec qemu-aarch64-static ./relay/... ./kick/... ./discovery/...

clean:
	rm -rf bin dist
