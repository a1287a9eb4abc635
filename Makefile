# pushrelay — the two commands a fresh machine needs are `make run` and
# `make test`.

GO       ?= go
BIN      := bin/pushrelay
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
GOFLAGS_BUILD := -trimpath -ldflags '$(LDFLAGS)'

.PHONY: all build run test fuzz vet bench clean npm-deps

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN) ./cmd/pushrelay

# Build and start the relay on the embedded default config, data in ./data.
run: build
	./$(BIN) run --config configs/pushrelay.yaml

# Everything CI runs: vet, unit and end-to-end tests (with the race detector
# on the core packages), fuzz seed corpora, and the npm web-push interop test.
test: vet npm-deps
	$(GO) test -count=1 -timeout 10m ./...
	$(GO) test -count=1 -race -timeout 10m ./relay/...

# The web-push npm package, the third-party sender of the interop test,
# pinned by testdata/webpush-npm/package-lock.json.
npm-deps: testdata/webpush-npm/node_modules/.package-lock.json
testdata/webpush-npm/node_modules/.package-lock.json: testdata/webpush-npm/package-lock.json
	cd testdata/webpush-npm && npm ci --no-audit --no-fund --loglevel=error

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || (echo "gofmt needed:"; gofmt -l .; exit 1)
	$(GO) vet ./...

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

clean:
	rm -rf bin dist
