#!/usr/bin/env bash
# Makes sure a Redis answers PING on 127.0.0.1:$REDIS_PORT (default 6379).
# If none does, installs redis-server with apt-get when it is missing and
# starts a throwaway instance on loopback with persistence off. Idempotent;
# progress on stderr; exits non-zero with a reason when Redis cannot be had.
#
# Environment (defaults):
#   REDIS_PORT       6379
#   REDIS_STATE_DIR  $HOME/.cache/queue-worker/redis-$REDIS_PORT (log, pid, cwd)
#   REDIS_WAIT       10   seconds to wait for the new server to answer
set -euo pipefail

PORT=${REDIS_PORT:-6379}
DIR=${REDIS_STATE_DIR:-$HOME/.cache/queue-worker/redis-$PORT}
WAIT=${REDIS_WAIT:-10}

log() { echo "[ensure-redis] $*" >&2; }
die() {
  echo "[ensure-redis] ERROR: $*" >&2
  exit 1
}

case $PORT in
  '' | *[!0-9]*) die "REDIS_PORT must be a number, got '$PORT'" ;;
esac

# PING over bash's /dev/tcp (no redis-cli needed). Exit status: 0 on +PONG,
# 2 on -NOAUTH (a password-protected Redis), 1 otherwise.
ping_redis() (
  reply=""
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" || exit 1
  printf 'PING\r\n' >&3
  IFS= read -r -t 2 reply <&3 || true
  case ${reply%$'\r'} in
    +PONG) exit 0 ;;
    -NOAUTH*) exit 2 ;;
    *) exit 1 ;;
  esac
)

responds() {
  local rc=0
  ping_redis 2>/dev/null || rc=$?
  if ((rc == 2)); then
    log "127.0.0.1:$PORT is a Redis that requires a password (the worker will need it)"
    rc=0
  fi
  return "$rc"
}

if responds; then
  log "Redis already answers on 127.0.0.1:$PORT"
  exit 0
fi

# Something that is not Redis may hold the port.
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "127.0.0.1:$PORT accepts connections but does not answer PING like Redis; pick another REDIS_PORT"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "redis-server is not installed and apt-get is not available; install Redis yourself"
  SUDO=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "redis-server is not installed and installing it needs root (no sudo)"
    SUDO=(sudo)
  fi
  log "installing redis-server with apt-get..."
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
    die "apt-get update failed"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2 ||
    die "apt-get install redis-server failed"
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get install"
  # The Debian package may start its own service on 6379; fine if that is
  # the port we want, and checked below either way.
  if responds; then
    log "Redis answers on 127.0.0.1:$PORT after installation"
    exit 0
  fi
fi

mkdir -p "$DIR"
log "starting redis-server on 127.0.0.1:$PORT (no persistence; log: $DIR/redis.log)"
redis-server --daemonize yes \
  --bind 127.0.0.1 \
  --port "$PORT" \
  --save "" \
  --appendonly no \
  --dir "$DIR" \
  --logfile "$DIR/redis.log" \
  --pidfile "$DIR/redis.pid" </dev/null >&2 ||
  die "redis-server failed to start (see $DIR/redis.log)"

for ((i = 0; i < WAIT * 10; i++)); do
  if responds; then
    log "Redis is up on 127.0.0.1:$PORT (pid $(cat "$DIR/redis.pid" 2>/dev/null || echo '?'))"
    exit 0
  fi
  sleep 0.1
done
tail -n 20 "$DIR/redis.log" >&2 2>/dev/null || true
die "redis-server did not answer PING on 127.0.0.1:$PORT within ${WAIT}s"
