#!/usr/bin/env bash
# `make chaos`: N builds through 3 queue-worker replicas on the dev cluster,
# a replica SIGKILLed every 2 s, Redis and the kube-apiserver SIGKILLed and
# restarted once; prints the report (see scripts/chaos/main.go). It kills
# the dev cluster's apiserver: do not run it beside `make test`.
# Extra flags go to the driver: scripts/chaos.sh -n 2000 -rate 50
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
go build -trimpath -o bin/chaos ./scripts/chaos
bin/chaos -kubeconfig "$KUBECONFIG" "$@"
