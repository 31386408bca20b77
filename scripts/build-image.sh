#!/usr/bin/env bash
# Builds the queue-worker image without a container engine: `make build`
# (a static binary), then scripts/image assembles an OCI image layout
# archive from it and config/ (see docs/operations.md, "The image").
#
#   scripts/build-image.sh                       -> bin/image/queue-worker.tar, queue-worker:dev
#   IMAGE_TAG=v1.2.3 IMAGE_OUT=/tmp/qw.tar scripts/build-image.sh
#
# Load it with `docker load -i`, `podman load -i`, `ctr -n k8s.io images
# import`, or push it with `skopeo copy oci-archive:<file> docker://<ref>`.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${IMAGE_TAG:-dev}
OUT=${IMAGE_OUT:-bin/image/queue-worker.tar}
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
make --no-print-directory build VERSION="$VERSION" >&2
# Reproducible: the image's timestamps are the last commit's.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)} \
  go run ./scripts/image -binary bin/queue-worker -config config -tag "queue-worker:$TAG" -version "$VERSION" -out "$OUT"
