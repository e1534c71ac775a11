#!/usr/bin/env bash
# Starts a throwaway rspamd for the scan tests and the detection bench: a private redis-server
# (Bayes, fuzzy hashes) and a private rspamd, both on 127.0.0.1, with Debian's stock rules
# (/etc/rspamd) and our overrides in a private LOCAL_CONFDIR. Nothing here looks anything up on
# the network: the modules that live on DNS (RBLs, SPF, DKIM, DMARC, ASN, phishtank) and the
# rspamd.com fuzzy servers are off, rspamd's resolver is a loopback stub that answers NXDOMAIN
# to everything (nxdomain.py), so maps on maps.rspamd.com are never fetched. Greylisting and
# rate limits are off (their answers depend on when a message comes, not on what it is; the
# engine has its own). Waits until rspamd answers /ping and its controller /stat, then prints
# the lines to eval:
#
#   eval "$(tests/rspamd/start.sh)"    # MAILDISTILLER_RSPAMD (normal worker HOST:PORT),
#                                      # MAILDISTILLER_RSPAMD_CONTROLLER, MAILDISTILLER_RSPAMD_FUZZY,
#                                      # MAILDISTILLER_RSPAMD_REDIS, MAILDISTILLER_RSPAMD_PASSWORD,
#                                      # MAILDISTILLER_RSPAMD_DIR
#   cargo test --test it scan::rspamd
#   tests/rspamd/stop.sh
#
# Installs rspamd and redis-server when missing (one apt-get update, then install; their Debian
# services are kept from starting). Progress goes to stderr; stdout carries only the export
# lines. Environment: MAILDISTILLER_RSPAMD_WAIT (seconds to wait, default 120);
# MAILDISTILLER_RSPAMD_LOG=debug (the fuzzy modules' debug lines in its log);
# MAILDISTILLER_RSPAMD_MILTER=1 also runs rspamd_proxy in milter mode, scanning itself (the way
# operators put rspamd behind Postfix), and prints MAILDISTILLER_RSPAMD_MILTER=HOST:PORT.
set -euo pipefail

log() { echo "rspamd: $*" >&2; }

need=()
command -v rspamd >/dev/null 2>&1 || need+=(rspamd)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    # Their own services are kept from starting: we run our own instances.
    bash "$(dirname "$0")/../install.sh" "${need[@]}"
    command -v rspamd >/dev/null && command -v redis-server >/dev/null \
        || { log "rspamd or redis-server still missing after installing"; exit 1; }
fi

DIR=$(mktemp -d /tmp/maildistiller-rspamd.XXXXXX)
chmod 755 "$DIR"
mkdir -p "$DIR/local.d" "$DIR/override.d" "$DIR/db" "$DIR/run" "$DIR/log" "$DIR/redis"
# Six distinct free ports: redis, normal worker, controller, fuzzy storage, the resolver (UDP),
# the milter.
read -r REDIS_PORT NORMAL_PORT CONTROLLER_PORT FUZZY_PORT DNS_PORT MILTER_PORT < <(python3 - <<'PY'
import socket
socks = []
for _ in range(6):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if len(socks) == 4 else socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*[s.getsockname()[1] for s in socks])
PY
)

# --- redis: in memory only, loopback only.
cat > "$DIR/redis/redis.conf" <<CONF
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $DIR/redis/redis.pid
logfile $DIR/redis/redis.log
dir $DIR/redis
save ""
appendonly no
CONF

# --- rspamd: stock rules, our workers and storage.
L="$DIR/local.d"
O="$DIR/override.d"
cat > "$L/worker-normal.inc" <<CONF
bind_socket = "127.0.0.1:$NORMAL_PORT";
count = 1;
CONF
# The controller wants its password from everyone (Debian's secure_ip would let loopback in
# without one, and the tests prove the adapter sends it): `rspamc -P maildistiller-test`.
cat > "$O/worker-controller.inc" <<CONF
bind_socket = "127.0.0.1:$CONTROLLER_PORT";
count = 1;
password = "maildistiller-test";
enable_password = "maildistiller-test";
secure_ip = "192.0.2.255/32";
static_dir = "\${WWWDIR}";
CONF
if [ "${MAILDISTILLER_RSPAMD_MILTER:-0}" = 1 ]; then
    # rspamd_proxy as Postfix's milter, scanning in-process (self_scan), as Debian ships it.
    cat > "$O/worker-proxy.inc" <<CONF
bind_socket = "127.0.0.1:$MILTER_PORT";
count = 1;
milter = yes;
timeout = 120s;
upstream "local" {
  default = yes;
  self_scan = yes;
}
CONF
else
    # The proxy (milter) worker is not used here.
    cat > "$O/worker-proxy.inc" <<CONF
bind_socket = "127.0.0.1:$NORMAL_PORT";
count = 0;
enabled = false;
CONF
fi
cat > "$O/worker-fuzzy.inc" <<CONF
bind_socket = "127.0.0.1:$FUZZY_PORT";
count = 1;
backend = "redis";
servers = "127.0.0.1:$REDIS_PORT";
allow_update = ["127.0.0.1"];
expire = 90d;
# Learnt hashes are written to Redis at this period (rspamd batches updates; default 60 s).
sync = 1s;
CONF
cat > "$L/redis.conf" <<CONF
servers = "127.0.0.1:$REDIS_PORT";
timeout = 1s;
CONF
cat > "$L/classifier-bayes.conf" <<CONF
backend = "redis";
servers = "127.0.0.1:$REDIS_PORT";
autolearn = false;
CONF
# The local fuzzy storage replaces rspamd.com's servers (learning writes to it: fuzzy_add).
cat > "$O/fuzzy_check.conf" <<CONF
min_bytes = 1k;
timeout = 2s;
retransmits = 1;
rule "local" {
  algorithm = "mumhash";
  servers = "127.0.0.1:$FUZZY_PORT";
  symbol = "LOCAL_FUZZY_UNKNOWN";
  mime_types = ["*"];
  max_score = 20.0;
  read_only = no;
  skip_unknown = yes;
  short_text_direct_hash = true;
  min_length = 64;
  fuzzy_map = {
    LOCAL_FUZZY_DENIED { max_score = 20.0; flag = 11; }
    LOCAL_FUZZY_PROB { max_score = 10.0; flag = 12; }
    LOCAL_FUZZY_WHITE { max_score = 2.0; flag = 13; }
  }
}
CONF
cat > "$L/groups.conf" <<CONF
group "fuzzy" {
  symbols {
    "LOCAL_FUZZY_UNKNOWN" { weight = 0.1; description = "Local fuzzy: unknown flag"; }
    "LOCAL_FUZZY_DENIED" { weight = 12.0; description = "Local fuzzy: learnt as spam"; }
    "LOCAL_FUZZY_PROB" { weight = 5.0; description = "Local fuzzy: probably spam"; }
    "LOCAL_FUZZY_WHITE" { weight = -2.1; description = "Local fuzzy: learnt as ham"; }
  }
}
CONF
# No network: rspamd's resolver is nxdomain.py (every name unknown, at once), and every module
# that exists to ask the network is off.
cat > "$L/options.inc" <<CONF
dns {
  nameserver = ["127.0.0.1:$DNS_PORT"];
  timeout = 1s;
  retransmits = 0;
}
task_timeout = 8s;
CONF
for m in rbl surbl emails spf dkim dmarc asn greylist ratelimit url_redirector reputation \
         mx_check rspamd_update dcc p0f bimi replies neural history_redis whitelist; do
    echo "enabled = false;" > "$L/$m.conf"
done
# hfilter's HELO and sender-domain checks resolve names (A/MX); offline they would only add
# "does not resolve" penalties to every message. Its hostname and URL checks stay.
cat > "$L/hfilter.conf" <<CONF
helo_enabled = false;
from_enabled = false;
CONF
cat > "$L/phishing.conf" <<CONF
phishtank_enabled = false;
openphish_enabled = false;
CONF
# MAILDISTILLER_RSPAMD_LOG=debug logs the fuzzy modules' debug lines too (what was hashed,
# asked and stored), for a learnt hash that does not show.
if [ "${MAILDISTILLER_RSPAMD_LOG:-}" = debug ]; then
    cat > "$L/logging.inc" <<CONF
level = "info";
debug_modules = ["fuzzy_check", "fuzzy_storage", "fuzzy_redis"];
CONF
else
    cat > "$L/logging.inc" <<CONF
level = "notice";
CONF
fi

if [ "$(id -u)" = 0 ] && id _rspamd >/dev/null 2>&1; then
    chown -R _rspamd:_rspamd "$DIR/db" "$DIR/run" "$DIR/log"
    RUN_AS=(-u _rspamd -g _rspamd)
else
    RUN_AS=()
fi

python3 "$(dirname "$0")/nxdomain.py" "$DNS_PORT" "$DIR/run/nxdomain.pid"
log "starting redis-server on 127.0.0.1:$REDIS_PORT"
redis-server "$DIR/redis/redis.conf" >&2
log "starting rspamd (LOCAL_CONFDIR $DIR)"
rspamd -c /etc/rspamd/rspamd.conf "${RUN_AS[@]}" \
    --var=LOCAL_CONFDIR="$DIR" --var=DBDIR="$DIR/db" --var=RUNDIR="$DIR/run" \
    --var=LOGDIR="$DIR/log" >&2

http_ok() { # HOST:PORT PATH -> true when the answer is 200
    python3 - "$1" "$2" <<'PY' 2>/dev/null
import sys, http.client
h, p = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(h, int(p), timeout=3)
c.request("GET", sys.argv[2], headers={"Password": "maildistiller-test"})
sys.exit(0 if c.getresponse().status == 200 else 1)
PY
}

WAIT=${MAILDISTILLER_RSPAMD_WAIT:-120}
for _ in $(seq $((WAIT * 4))); do
    if http_ok "127.0.0.1:$NORMAL_PORT" /ping && http_ok "127.0.0.1:$CONTROLLER_PORT" /stat; then
        log "ready: normal 127.0.0.1:$NORMAL_PORT, controller 127.0.0.1:$CONTROLLER_PORT, fuzzy 127.0.0.1:$FUZZY_PORT, redis 127.0.0.1:$REDIS_PORT"
        echo "export MAILDISTILLER_RSPAMD=127.0.0.1:$NORMAL_PORT"
        echo "export MAILDISTILLER_RSPAMD_CONTROLLER=127.0.0.1:$CONTROLLER_PORT"
        echo "export MAILDISTILLER_RSPAMD_FUZZY=127.0.0.1:$FUZZY_PORT"
        echo "export MAILDISTILLER_RSPAMD_REDIS=127.0.0.1:$REDIS_PORT"
        echo "export MAILDISTILLER_RSPAMD_PASSWORD=maildistiller-test"
        echo "export MAILDISTILLER_RSPAMD_DIR=$DIR"
        if [ "${MAILDISTILLER_RSPAMD_MILTER:-0}" = 1 ]; then
            echo "export MAILDISTILLER_RSPAMD_MILTER=127.0.0.1:$MILTER_PORT"
        fi
        exit 0
    fi
    sleep 0.25
done
log "not ready within ${WAIT}s; log follows"
tail -50 "$DIR/log/rspamd.log" >&2 || true
bash "$(dirname "$0")/stop.sh" "$DIR" >&2 || true
exit 1
