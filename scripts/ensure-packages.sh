#!/usr/bin/env bash
# Installs the Debian packages the scripts rely on, when missing: curl and
# openssl (dev-cluster certs and health checks). Idempotent.
set -euo pipefail
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v flock >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "[ensure-packages] installing ${missing[*]}" >&2
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >&2
$SUDO apt-get install -y -qq "${missing[@]}" >&2
