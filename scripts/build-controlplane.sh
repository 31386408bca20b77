#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-scheduler, kube-controller-manager and kwok
# from the Go module proxy once, caching the binaries under
# $QW_CACHE/controlplane/<versions>/bin. Safe to run concurrently (flock) and
# idempotent: when every binary is present it does nothing.
set -euo pipefail

K8S_VERSION=v1.33.13
ETCD_VERSION=v3.5.21
KWOK_VERSION=v0.8.0
QW_CACHE=${QW_CACHE:-$HOME/.cache/queue-worker}
BIN_DIR="$QW_CACHE/controlplane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION/bin"
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "[build-controlplane] $*" >&2; }

all_present() {
  for b in etcd kube-apiserver kube-scheduler kube-controller-manager kwok; do
    [ -x "$BIN_DIR/$b" ] || return 1
  done
}

if [ "${1:-}" = "--print-bin-dir" ]; then echo "$BIN_DIR"; exit 0; fi
if all_present; then echo "$BIN_DIR"; exit 0; fi

command -v go >/dev/null || { log "ERROR: go is not on PATH (needed once to build the control plane)"; exit 1; }
mkdir -p "$BIN_DIR"
exec 9>"$BIN_DIR/.build.lock"
flock 9
if all_present; then echo "$BIN_DIR"; exit 0; fi

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"

build() { # name package
  local name=$1 pkg=$2 start=$SECONDS
  if [ -x "$BIN_DIR/$name" ]; then return 0; fi
  log "building $name (cold builds take minutes on 2 cores)..."
  (cd "$HERE/controlplane" && go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$BIN_DIR/$name.tmp" "$pkg")
  mv "$BIN_DIR/$name.tmp" "$BIN_DIR/$name"
  log "built $name in $((SECONDS - start))s"
}

build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
if [ ! -x "$BIN_DIR/kwok" ]; then
  # kwok v0.8 needs Go >= 1.26. Install into a scratch dir and move it in, so
  # an interrupted install never leaves a half-written binary that looks done.
  log "installing kwok $KWOK_VERSION..."
  start=$SECONDS
  tmp=$(mktemp -d "$BIN_DIR/.kwok.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" go install -trimpath sigs.k8s.io/kwok/cmd/kwok@"$KWOK_VERSION"
  mv "$tmp/kwok" "$BIN_DIR/kwok"
  log "installed kwok in $((SECONDS - start))s"
fi
echo "$BIN_DIR"
