#!/usr/bin/env bash
# Starts a throwaway clamd for the scan tests: a signature database holding only the EICAR test
# signature (written here; no freshclam, no network), listening on a Unix socket and on
# 127.0.0.1:PORT. Waits until it answers PING, then prints the lines to eval:
#
#   eval "$(tests/clamd/start.sh)"     # sets MAILDISTILLER_CLAMD and MAILDISTILLER_CLAMD_DIR
#   cargo test scan::external::real_clamd
#   tests/clamd/stop.sh
#
# Installs clamav-daemon when clamd is missing (one apt-get update, then install). Progress goes
# to stderr; stdout carries only the export lines. Environment: MAILDISTILLER_CLAMD_PORT
# (default: a free port), MAILDISTILLER_CLAMD_WAIT (seconds to wait for PING, default 120).
set -euo pipefail

log() { echo "clamd: $*" >&2; }

find_clamd() {
    command -v clamd 2>/dev/null || { [ -x /usr/sbin/clamd ] && echo /usr/sbin/clamd; } || true
}

CLAMD=$(find_clamd)
if [ -z "$CLAMD" ]; then
    log "installing clamav-daemon"
    # Their own services are kept from starting: we run our own instances.
    bash "$(dirname "$0")/../install.sh" clamav-daemon
    CLAMD=$(find_clamd)
    [ -n "$CLAMD" ] || { log "clamd not found after installing clamav-daemon"; exit 1; }
fi

DIR=$(mktemp -d /tmp/maildistiller-clamd.XXXXXX)
chmod 755 "$DIR"
mkdir -p "$DIR/db"
PORT=${MAILDISTILLER_CLAMD_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

# The EICAR test file as a body signature (type 0 = any file, offset * = anywhere).
EICAR_HEX=$(printf '%s' 'X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*' | od -An -v -tx1 | tr -d ' \n')
echo "Eicar-Test-Signature:0:*:${EICAR_HEX}" > "$DIR/db/maildistiller-test.ndb"

cat > "$DIR/clamd.conf" <<CONF
Foreground no
PidFile $DIR/clamd.pid
LogFile $DIR/clamd.log
DatabaseDirectory $DIR/db
LocalSocket $DIR/clamd.sock
LocalSocketMode 666
TCPSocket $PORT
TCPAddr 127.0.0.1
StreamMaxLength 30M
MaxThreads 4
ScanMail yes
ScanArchive yes
Bytecode no
CONF
if [ "$(id -u)" = 0 ] && id clamav >/dev/null 2>&1; then
    chown -R clamav "$DIR"
    echo "User clamav" >> "$DIR/clamd.conf"
fi

log "starting $CLAMD (config $DIR/clamd.conf)"
"$CLAMD" --config-file="$DIR/clamd.conf" >&2

ping_clamd() {
    exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
    printf 'zPING\0' >&3
    local reply=""
    IFS= read -r -d '' -t 5 reply <&3 || true
    exec 3>&- 3<&-
    [ "$reply" = "PONG" ]
}

WAIT=${MAILDISTILLER_CLAMD_WAIT:-120}
for _ in $(seq "$WAIT"); do
    if ping_clamd 2>/dev/null; then
        log "ready on tcp:127.0.0.1:$PORT and unix:$DIR/clamd.sock"
        echo "export MAILDISTILLER_CLAMD=tcp:127.0.0.1:$PORT,unix:$DIR/clamd.sock"
        echo "export MAILDISTILLER_CLAMD_DIR=$DIR"
        exit 0
    fi
    sleep 1
done
log "no PONG within ${WAIT}s; log follows"
cat "$DIR/clamd.log" >&2 || true
exit 1
