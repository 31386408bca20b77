#!/usr/bin/env bash
# Installs the Debian packages the scripts rely on, when missing: curl and
# openssl (dev-cluster certs and health checks), skopeo (checks the image
# archive in the deploy tests). Idempotent.
set -euo pipefail
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v flock >/dev/null || missing+=(util-linux)
# skopeo: a second, independent reader of the image archive (deploy tests).
command -v skopeo >/dev/null || missing+=(skopeo)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "[ensure-packages] installing ${missing[*]}" >&2
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq "${missing[@]}" >&2
