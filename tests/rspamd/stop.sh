#!/usr/bin/env bash
# Stops the rspamd, redis-server and stub resolver that tests/rspamd/start.sh started (found through
# MAILDISTILLER_RSPAMD_DIR, or the directory given as the first argument) and removes the directory.
set -euo pipefail
DIR=${1:-${MAILDISTILLER_RSPAMD_DIR:-}}
if [ -z "$DIR" ] || [ ! -d "$DIR" ]; then
    echo "rspamd: nothing to stop (set MAILDISTILLER_RSPAMD_DIR or pass the directory)" >&2
    exit 0
fi
stop_pidfile() {
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}
# rspamd's fuzzy storage answers an add before it writes it to Redis, and drops what Redis
# refused 4 times; a check that timed out adds no symbol: say so, since a learnt hash that
# does not show is otherwise a mystery.
if grep -iE "fuzzy.*(cannot|discard|timeout)" "$DIR/log/rspamd.log" 2>/dev/null | tail -5 | sed 's/^/rspamd: log: /' >&2; then :; fi
stop_pidfile "$DIR/run/rspamd.pid"
stop_pidfile "$DIR/redis/redis.pid"
stop_pidfile "$DIR/run/nxdomain.pid"
case "$DIR" in
    /tmp/maildistiller-rspamd.*) rm -rf "$DIR" ;;
    *) echo "rspamd: left $DIR in place (not one of ours)" >&2 ;;
esac
