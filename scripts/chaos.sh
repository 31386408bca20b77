#!/usr/bin/env bash
# `make chaos`: N builds through 3 queue-worker replicas, a replica SIGKILLed
# every 2 s, Redis and the kube-apiserver SIGKILLed and restarted once;
# prints the report (see scripts/chaos/main.go).
#
# It runs on a control plane of its own (another state dir and ports than
# the dev cluster of `make test`), started here and removed at the end, so
# killing its apiserver disturbs nothing else.
# Extra flags go to the driver: scripts/chaos.sh -n 2000 -rate 50
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-packages.sh
scripts/ensure-redis.sh   # installs redis-server; the run uses a private one
export QW_DEV_CLUSTER_DIR=${QW_CHAOS_CLUSTER_DIR:-$HOME/.cache/queue-worker/chaos-cluster}
export QW_ETCD_PORT=${QW_CHAOS_ETCD_PORT:-23791}
export QW_ETCD_PEER_PORT=${QW_CHAOS_ETCD_PEER_PORT:-23801}
export QW_APISERVER_PORT=${QW_CHAOS_APISERVER_PORT:-16444}
# Room for 10,000 running builds (a build requests about 2.25 CPUs of a
# kwok node's 1000).
export QW_KWOK_NODES_PER_POOL=${QW_CHAOS_NODES_PER_POOL:-14}
cleanup() { scripts/dev-cluster.sh down || true; }
trap cleanup EXIT
eval "$(scripts/dev-cluster.sh up)"
mkdir -p bin
go build -trimpath -ldflags "-s -w" -o bin/queue-worker ./cmd/queue-worker   # as `make build`
go build -trimpath -o bin/chaos ./scripts/chaos
bin/chaos -kubeconfig "$KUBECONFIG" -cluster-dir "$QW_DEV_CLUSTER_DIR" "$@"
