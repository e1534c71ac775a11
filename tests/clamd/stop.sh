#!/usr/bin/env bash
# Stops the clamd that tests/clamd/start.sh started (found through MAILDISTILLER_CLAMD_DIR, or
# the directory given as the first argument) and removes its directory.
set -euo pipefail
DIR=${1:-${MAILDISTILLER_CLAMD_DIR:-}}
if [ -z "$DIR" ] || [ ! -d "$DIR" ]; then
    echo "clamd: nothing to stop (set MAILDISTILLER_CLAMD_DIR or pass the directory)" >&2
    exit 0
fi
if [ -f "$DIR/clamd.pid" ]; then
    PID=$(cat "$DIR/clamd.pid")
    kill "$PID" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
fi
case "$DIR" in
    /tmp/maildistiller-clamd.*) rm -rf "$DIR" ;;
    *) echo "clamd: left $DIR in place (not one of ours)" >&2 ;;
esac
