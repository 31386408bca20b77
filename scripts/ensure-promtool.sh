#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus's rule checker and rule unit
# test runner), building it from the Go module proxy on first use. The
# binary is cached per version under $HOME/.cache/queue-worker/bin, so only
# the first run pays for the build (about a minute or two on 2 cores).
#
#   PROMTOOL=$(scripts/ensure-promtool.sh)
#   "$PROMTOOL" check rules deploy/prometheus/queue-worker.rules.yml
set -euo pipefail
# github.com/prometheus/prometheus v0.316.0 is Prometheus 3.16.
VERSION=${QW_PROMTOOL_VERSION:-v0.316.0}
DIR=${QW_CACHE_DIR:-$HOME/.cache/queue-worker}/bin/promtool-$VERSION
BIN=$DIR/promtool
if [ ! -x "$BIN" ]; then
  echo "[ensure-promtool] building promtool $VERSION into $DIR (first run only)" >&2
  mkdir -p "$DIR"
  # GOFLAGS cleared: a -mod=... meant for this repo does not apply to go install.
  # remove_all_sd leaves out the service-discovery plugins (every cloud SDK):
  # promtool checks and tests rule files without them, and builds in a
  # fraction of the time.
  GOFLAGS= GOBIN="$DIR" go install -tags remove_all_sd "github.com/prometheus/prometheus/cmd/promtool@$VERSION" >&2
fi
echo "$BIN"
