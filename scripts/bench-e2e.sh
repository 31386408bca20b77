#!/usr/bin/env bash
# `make bench-e2e`: queue-worker end to end against a bare client-go loop on
# the dev cluster (see scripts/e2ebench/main.go for what each part measures).
# Extra flags go to the driver: scripts/bench-e2e.sh -n 500 -only burst
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh
started_cluster=0
if ! scripts/dev-cluster.sh status >/dev/null 2>&1; then started_cluster=1; fi
cleanup() { if [ "$started_cluster" = 1 ]; then scripts/dev-cluster.sh down || true; fi; }
trap cleanup EXIT
eval "$(scripts/dev-cluster.sh up)"
mkdir -p bin
go build -trimpath -ldflags "-s -w" -o bin/queue-worker ./cmd/queue-worker   # as `make build`
go build -trimpath -o bin/e2ebench ./scripts/e2ebench
bin/e2ebench -kubeconfig "$KUBECONFIG" "$@"
