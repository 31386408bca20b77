# queue-worker. The two commands that matter: `make demo` and `make test`.
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
GO ?= go

.PHONY: demo test build image bench lint cluster-up cluster-down clean

demo:
	scripts/demo.sh

test:
	scripts/test.sh

# Static (no cgo): the image (make image) has no libc.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/queue-worker ./cmd/queue-worker

# The container image without a container engine: bin/image/queue-worker.tar
# (OCI layout + docker manifest), tag queue-worker:$(IMAGE_TAG).
IMAGE_TAG ?= dev
image:
	IMAGE_TAG=$(IMAGE_TAG) VERSION=$(VERSION) scripts/build-image.sh

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./internal/...

lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

cluster-up:
	@scripts/dev-cluster.sh up

cluster-down:
	scripts/dev-cluster.sh down

clean:
	rm -rf bin

# Queue throughput: ours vs asynq vs node-resque (see docs/benchmarks.md).
.PHONY: bench-queue
bench-queue:
	bench/run.sh

# End to end on the dev cluster: queue-worker vs a bare client-go loop
# (burst, fixed rate, full cluster, memory). See docs/benchmarks.md.
.PHONY: bench-e2e
bench-e2e:
	scripts/bench-e2e.sh

# N builds, 3 replicas, one SIGKILLed every 2 s, Redis and the apiserver
# SIGKILLed and restarted once; a report of lost, duplicate and failed
# builds and CI reports (see docs/reliability.md). N=10000 by default.
.PHONY: chaos
chaos:
	scripts/chaos.sh $(CHAOS_FLAGS)

# Every fuzz target for FUZZTIME each (make test runs each for a few
# seconds). Findings land in testdata/fuzz/ of their package.
FUZZTIME ?= 5m
.PHONY: fuzz
fuzz:
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh
