#!/usr/bin/env bash
# Makes redis-server available to the shared-store tests (tests/it/shared.rs), the way
# tests/rspamd/start.sh does for rspamd: installs it when missing (its Debian service kept from
# starting), checks it runs, and prints the line to eval. Each test then starts its own private
# instances from that binary on 127.0.0.1 (in memory, no persistence), so it can kill and restart
# them mid-run; they go when the test ends.
#
#   eval "$(bash tests/redis/start.sh)"     # MAILDISTILLER_REDIS_SERVER=/usr/bin/redis-server
#   cargo test --test it shared::
#
# Progress goes to stderr; stdout carries only the export line.
set -euo pipefail

log() { echo "redis: $*" >&2; }

if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    # Their own services are kept from starting: we run our own instances.
    bash "$(dirname "$0")/../install.sh" redis-server
fi
BIN=$(command -v redis-server)
version=$("$BIN" --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')
if [ "${version:-0}" -lt 7 ]; then
    log "redis-server $version is too old: the shared store needs Redis >= 7 (or Valkey)"
    exit 1
fi
log "using $BIN (Redis $version)"
echo "export MAILDISTILLER_REDIS_SERVER=$BIN"
