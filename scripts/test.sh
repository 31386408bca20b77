#!/usr/bin/env bash
# `make test`: static checks, then unit and integration tests against a real
# Redis and the project's own kube-apiserver + etcd + scheduler + kwok. It
# brings the bed up itself and takes down what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

STATICCHECK=honnef.co/go/tools/cmd/staticcheck@v0.8.2

scripts/ensure-packages.sh
scripts/ensure-redis.sh
# The Sentinel and Cluster tests start private redis-servers on free ports
# (scripts/redis-topology.sh, stopped by each test): install redis-server
# even when ensure-redis.sh found a Redis it did not have to install.
scripts/redis-topology.sh install

started_cluster=0
if ! scripts/dev-cluster.sh status >/dev/null 2>&1; then
  started_cluster=1
fi
cleanup() {
  if [ "$started_cluster" = 1 ]; then scripts/dev-cluster.sh down || true; fi
}
trap cleanup EXIT
eval "$(scripts/dev-cluster.sh up)"
# Tests read QW_TEST_KUBECONFIG, never KUBECONFIG, so a developer's real
# cluster can't be touched by accident.
export QW_TEST_KUBECONFIG="$KUBECONFIG"

echo "[test] gofmt" >&2
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bench/*'))
if [ -n "$unformatted" ]; then echo "gofmt needed: $unformatted" >&2; exit 1; fi
echo "[test] go vet" >&2
go vet ./...
echo "[test] staticcheck" >&2
go run "$STATICCHECK" ./...
# Alerting and recording rules: syntax, then the alert unit tests (series
# fixtures). The deploy tests also parse the dashboard's queries with it.
echo "[test] promtool check/test rules" >&2
QW_PROMTOOL=$(scripts/ensure-promtool.sh)
export QW_PROMTOOL
"$QW_PROMTOOL" check rules deploy/prometheus/queue-worker.rules.yml
"$QW_PROMTOOL" test rules deploy/prometheus/queue-worker.rules.test.yml
echo "[test] go test -race" >&2
go test -race -count=1 -timeout 20m ./...
# Every fuzz target for a few seconds beyond its seed corpus (which go test
# already ran): `make fuzz` runs them for minutes.
echo "[test] fuzz smoke" >&2
FUZZTIME=${FUZZTIME:-4s} scripts/fuzz.sh
