#!/usr/bin/env bash
# The engine benchmark of issue #3: maildistiller --role engine against Postfix 3.7, both relaying
# to an smtp-sink, loopback only, in one run. See README.md beside this file.
#
#   sudo bench/engine/run.sh                      # everything, two rounds (several minutes)
#   RUNS=1 N_4K=2000 N_100K=500 N_HELD=2000 PF_HELD_WAIT=20 bench/engine/run.sh   # quick look
#   REDUNDANCY=shadow bench/engine/run.sh         # also a second engine holding shadow copies
#
# Needs root (apt-get, and Postfix's master runs as root). Stops everything it started and
# removes its temp dir on exit (KEEP=1 keeps the dir with the logs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)

RUNS=${RUNS:-2}                     # rounds; each round measures every workload on both peers
SESSIONS=${SESSIONS:-20}            # smtp-source -s
N_4K=${N_4K:-10000}                 # 4 KiB, one connection per message
N_4K_PERSIST=${N_4K_PERSIST:-10000} # 4 KiB, persistent sessions (-d); 0 skips
N_100K=${N_100K:-5000}              # 100 KiB, one connection per message
N_HELD=${N_HELD:-10000}             # held-queue drain (4 KiB); 0 skips
PF_HELD_WAIT=${PF_HELD_WAIT:-120}   # how long Postfix gets to drain without a flush (s)
PROBE_INTERVAL=${PROBE_INTERVAL:-3s} # engine.delivery.probe_interval (the engine's default: 3s)
SCANNERS=${SCANNERS:-local}         # local: in-process scanners on (auth/dnsbl off: no DNS); off: none;
                                    # rspamd: both peers scan with one private rspamd (ours through
                                    # the adapter, Postfix through rspamd_proxy as its milter)
N_LATENCY=${N_LATENCY:-300}         # rspamd mode: sequential messages timed from the final dot to the 250
BASE_PORT=${BASE_PORT:-27900}       # uses BASE_PORT+1 .. +4 on 127.0.0.1
BENCH_TMP=${BENCH_TMP:-/tmp}        # the spool and Postfix's queue both live under here
WAIT_MAX=${WAIT_MAX:-300}           # cap (s) of every wait loop
REDUNDANCY=${REDUNDANCY:-none}      # shadow: also measure "shadow", the engine with a second engine holding copies
# sink: smtp-source straight to a plain smtp-sink that stores nothing (the ceiling of this box
# for a server that takes SMTP and does nothing with it); throughput workloads only.
if [ "$REDUNDANCY" = shadow ]; then
	PEERS=${PEERS:-ours shadow postfix sink}
else
	PEERS=${PEERS:-ours postfix sink} # "ours" alone: A/B runs of two engine builds
fi
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}

ENGINE_PORT=$((BASE_PORT + 1))
OPS_PORT=$((BASE_PORT + 2))
SINK_PORT=$((BASE_PORT + 3))
PF_PORT=$((BASE_PORT + 4))
B_PORT=$((BASE_PORT + 5))          # REDUNDANCY=shadow: the second engine's SMTP (unused by the load)
B_OPS_PORT=$((BASE_PORT + 6))
A_SHADOW_PORT=$((BASE_PORT + 7))   # the two engines' replication listeners
B_SHADOW_PORT=$((BASE_PORT + 8))
OPS="127.0.0.1:$OPS_PORT"
B_OPS="127.0.0.1:$B_OPS_PORT"
FROM=from@bench.example
TO=to@tenant.example
HZ=$(getconf CLK_TCK)

log() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }
# calc EXPR: floating-point arithmetic with awk (no bc needed)
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
fmt() { awk -v v="$1" -v d="${2:-0}" 'BEGIN { if (v == "" || v == "-") print "-"; else printf "%.*f", d, v }'; }

# wait_for SECONDS INTERVAL COMMAND...: polls until COMMAND succeeds; 1 on timeout.
wait_for() {
	local limit=$1 step=$2
	shift 2
	local end
	end=$(calc "$(now) + $limit")
	until "$@"; do
		if awk -v n="$(now)" -v e="$end" 'BEGIN { exit !(n > e) }'; then
			return 1
		fi
		sleep "$step"
	done
}

listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
closed() { ! listening "$1"; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# 1. Tools and build

[ "$SCANNERS" = rspamd ] && N_HELD=0 # the held-queue drain does not involve scanning
[ "$(id -u)" = 0 ] || die "run as root (apt-get, and Postfix's master must start as root)"
if ! command -v smtp-source >/dev/null || ! command -v smtp-sink >/dev/null || ! command -v postfix >/dev/null; then
	log "installing postfix (ships smtp-source and smtp-sink)"
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y postfix
fi
for t in smtp-source smtp-sink postfix postconf postqueue ss curl awk; do
	command -v "$t" >/dev/null || die "$t not found"
done
id nobody >/dev/null 2>&1 || die "user nobody is missing (smtp-sink drops privileges to it)"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${MAILDISTILLER_BIN:-$CARGO_TARGET_DIR/release/maildistiller} # MAILDISTILLER_BIN: A/B runs
if [ "$SKIP_BUILD" != 1 ] && [ -z "${MAILDISTILLER_BIN:-}" ]; then
	log "cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
	(cd "$ROOT" && cargo build --release --quiet)
fi
[ -x "$BIN" ] || die "$BIN not built"

for p in "$ENGINE_PORT" "$OPS_PORT" "$SINK_PORT" "$PF_PORT" "$B_PORT" "$B_OPS_PORT" "$A_SHADOW_PORT" "$B_SHADOW_PORT"; do
	listening "$p" && die "127.0.0.1:$p is in use (set BASE_PORT)"
done

# ---------------------------------------------------------------------------------------------
# 2. Work dir, cleanup

W=$(mktemp -d "$BENCH_TMP/md-engine-bench.XXXXXX")
chmod 755 "$W" # Postfix's daemons (user postfix) must reach their queue inside it
SINK_PID=
ENGINE_PID=
RSPAMD_DIR=
B_PID=
PF_ETC=$W/pf/etc
PF_Q=$W/pf/queue
PF_UP=0

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e # best effort from here: every step runs even when one fails
	[ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null
	[ -n "$ENGINE_PID" ] && engine_stop
	[ -n "$B_PID" ] && shadow_stop
	[ "$PF_UP" = 1 ] && pf_stop
	[ -n "$RSPAMD_DIR" ] && bash "$ROOT/tests/rspamd/stop.sh" "$RSPAMD_DIR"
	if [ "$KEEP" = 1 ]; then
		log "kept $W"
	else
		rm -rf "$W"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# smtp-sink: -c prints "sess=.. quit=.. mesg=N" after every message (CR-separated); mesg counts
# completed DATA transactions, for both peers alike.

sink_start() {
	: >"$W/sink.out"
	smtp-sink -c -u nobody "127.0.0.1:$SINK_PORT" 1024 >"$W/sink.out" 2>>"$W/sink.err" &
	SINK_PID=$!
	wait_for 10 0.05 listening "$SINK_PORT" || die "smtp-sink did not start"
}

sink_stop() {
	[ -n "$SINK_PID" ] || return 0
	kill "$SINK_PID" 2>/dev/null || true
	wait "$SINK_PID" 2>/dev/null || true
	SINK_PID=
	wait_for 10 0.05 closed "$SINK_PORT" || die "smtp-sink port still open"
}

sink_count() {
	local c
	c=$(tail -c 200 "$W/sink.out" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2)
	echo "${c:-0}"
}

sink_has() { [ "$(sink_count)" -ge "$1" ]; }
sink_cpu() { awk '{print $14 + $15}' "/proc/$SINK_PID/stat"; }

# ---------------------------------------------------------------------------------------------
# Our engine

engine_config() { # [MODE]: the scanners (default $SCANNERS)
	case ${1:-$SCANNERS} in
	local) SCANNER_LINES=$'auth = false   # SPF/DKIM/DMARC would query DNS\ndnsbl = false' ;;
	off) SCANNER_LINES=$'auth = false\ndnsbl = false\ncontent = false\nattachments = false\nantivirus = false' ;;
	rspamd) SCANNER_LINES=$'auth = false\ndnsbl = false\nrspamd = true\n[policy.default.rspamd]\n'"address = \"$RSPAMD_NORMAL\""$'\ntimeout = "60s"\non_failure = "tempfail"' ;;
	*) die "SCANNERS must be local, off or rspamd" ;;
	esac
	engine_toml none "$ENGINE_PORT" "$OPS" "$W/spool" "" >"$W/engine.toml"
	"$BIN" check --config "$W/engine.toml" >/dev/null || die "engine config does not validate"
	if [ "$REDUNDANCY" = shadow ]; then
		engine_toml shadow "$ENGINE_PORT" "$OPS" "$W/spool" "$A_SHADOW_PORT" >"$W/engine-a.toml"
		engine_toml shadow "$B_PORT" "$B_OPS" "$W/spool-b" "$B_SHADOW_PORT" >"$W/engine-b.toml"
		for f in engine-a engine-b; do
			"$BIN" check --config "$W/$f.toml" >/dev/null || die "$f config does not validate"
		done
	fi
}

# engine_toml REDUNDANCY SMTP-PORT OPS-ADDR SPOOL SHADOW-PORT: one engine's config. With shadow
# the cluster has two engines: A takes the load, B holds A's copies.
engine_toml() {
	local red=$1 port=$2 ops=$3 spool=$4 shadow=$5
	cat <<EOF
# Written by bench/engine/run.sh: one tenant delivered to smtp-sink; redundancy $red.
[ops]
listen = "$ops"
grace_period = "2s"
token_file = "$W/ops.token"
[regions.bench]
[[silo]]
name = "bench"
hostname = "bench.test"
lat = 0.0
lon = 0.0
  [[silo.cluster]]
  name = "c1"
  region = "bench"
    [[silo.cluster.engine]]
    address = "127.0.0.1:$ENGINE_PORT"
    proxy = "none"    # smtp-source sends straight to engine.listen
EOF
	if [ "$red" = shadow ]; then
		cat <<EOF
    shadow = "127.0.0.1:$A_SHADOW_PORT"
    [[silo.cluster.engine]]
    address = "127.0.0.1:$B_PORT"
    proxy = "none"
    shadow = "127.0.0.1:$B_SHADOW_PORT"
EOF
	fi
	cat <<EOF
[[tenant]]
id = "bench"
domains = ["tenant.example"]
regions = ["bench"]
delivery = ["127.0.0.1:$SINK_PORT"]
tls = "none"
[engine]
listen = ["127.0.0.1:$port"]
spool_dir = "$spool"
hostname = "engine-bench.local"
# -d sends 500 messages per session (~4 commands each); the default cap of 1000 commands per
# session would end it with 421. Postfix has no such cap for MAIL/RCPT/DATA.
max_commands = 100000
redundancy = "$red"
EOF
	if [ "$red" = shadow ]; then
		cat <<EOF
on_shadow_failure = "tempfail"
[engine.shadow]
listen = ["127.0.0.1:$shadow"]
secret = "bench-cluster-secret-0123456789abcdef"
EOF
	fi
	cat <<EOF
[engine.delivery]
probe_interval = "$PROBE_INTERVAL"
[policy.default.scanners]
$SCANNER_LINES
EOF
}

engine_ready() { curl -sf "http://$OPS/readyz" >/dev/null; }
b_ready() { curl -sf "http://$B_OPS/readyz" >/dev/null; }

engine_start() {
	rm -rf "$W/spool"
	"$BIN" --role engine --config "$W/engine.toml" 2>>"$W/engine.log" &
	ENGINE_PID=$!
	wait_for 30 0.1 engine_ready || die "engine not ready (see $W/engine.log)"
}

# The pair: A takes the load and copies every message to B before its 250 (ready once linked).
shadow_start() {
	rm -rf "$W/spool" "$W/spool-b"
	"$BIN" --role engine --config "$W/engine-b.toml" 2>>"$W/engine-b.log" &
	B_PID=$!
	"$BIN" --role engine --config "$W/engine-a.toml" 2>>"$W/engine.log" &
	ENGINE_PID=$!
	wait_for 30 0.1 engine_ready || die "engine A not ready (see $W/engine.log)"
	wait_for 30 0.1 b_ready || die "engine B not ready (see $W/engine-b.log)"
}

shadow_stop() {
	engine_stop
	[ -n "$B_PID" ] || return 0
	kill -TERM "$B_PID" 2>/dev/null || true
	if ! wait_for 15 0.1 gone "$B_PID"; then
		kill -KILL "$B_PID" 2>/dev/null || true
	fi
	wait "$B_PID" 2>/dev/null || true
	B_PID=
}

engine_stop() {
	[ -n "$ENGINE_PID" ] || return 0
	kill -TERM "$ENGINE_PID" 2>/dev/null || true
	if ! wait_for 15 0.1 gone "$ENGINE_PID"; then
		kill -KILL "$ENGINE_PID" 2>/dev/null || true
	fi
	wait "$ENGINE_PID" 2>/dev/null || true
	ENGINE_PID=
}

# Messages in the engine's index (exact, unlike /readyz's queue_depth which is refreshed every 2 s).
engine_queued() {
	local state=${1:-}
	curl -sf -H "Authorization: Bearer $(cat "$W/ops.token")" "http://$OPS/queue${state:+?state=$state}" | tail -1 | awk '{print $2}'
}
engine_empty() { [ "$(engine_queued)" = 0 ]; }
engine_all_held() { [ "$(engine_queued held)" = "$1" ]; }
engine_cpu() { awk '{print $14 + $15}' "/proc/$ENGINE_PID/stat"; }
pair_cpu() { awk '{s += $14 + $15} END {print s}' "/proc/$ENGINE_PID/stat" "/proc/$B_PID/stat"; }

# hist_q ADDR METRIC Q: the Q-quantile of a Prometheus histogram on ADDR's /metrics, in ms
# (linear within its bucket).
hist_q() {
	curl -sf "http://$1/metrics" | awk -v m="$2_bucket" -v q="$3" '
		index($0, m "{") == 1 {
			match($0, /[{,]le="[^"]*"/); le = substr($0, RSTART + 5, RLENGTH - 6) # not role="..."
			n++; les[n] = (le == "+Inf" ? 1e9 : le + 0); cs[n] = $NF + 0
		}
		END {
			if (n == 0 || cs[n] == 0) { print "-"; exit }
			want = q * cs[n]; prev_le = 0; prev_c = 0
			for (i = 1; i <= n; i++) {
				if (cs[i] >= want) {
					f = (cs[i] == prev_c) ? 0 : (want - prev_c) / (cs[i] - prev_c)
					printf "%.2f", (prev_le + f * (les[i] - prev_le)) * 1000; exit
				}
				prev_le = les[i]; prev_c = cs[i]
			}
		}'
}
# metric_sum ADDR NAME: the sum of a metric's samples on ADDR's /metrics.
metric_sum() { curl -sf "http://$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $NF} END {print s + 0}'; }
engine_hwm() { awk '/VmHWM/ {print $2}' "/proc/$ENGINE_PID/status"; }

# ---------------------------------------------------------------------------------------------
# Postfix: a private instance (config, queue, log under $W), as in /work/shared/peers/postfix/
# setup.sh: loopback listener, one relay domain to the sink, no chroot, no TLS, no DNS, default
# backoff. Postfix fsyncs every queue file before its 250.

pf_config() {
	mkdir -p "$PF_ETC" "$PF_Q" "$W/pf/data"
	chown postfix "$W/pf/data"
	cp /etc/postfix/master.cf "$PF_ETC/master.cf"
	: >"$PF_ETC/main.cf"
	postconf -c "$PF_ETC" -e \
		'compatibility_level = 3.6' \
		"queue_directory = $PF_Q" \
		"data_directory = $W/pf/data" \
		"maillog_file = $W/pf/maillog" \
		"maillog_file_prefixes = $W" \
		'myhostname = engine-bench.local' \
		'mydomain = engine-bench.local' \
		'inet_interfaces = loopback-only' \
		'inet_protocols = ipv4' \
		'mydestination =' \
		'relay_domains = tenant.example' \
		"transport_maps = inline:{tenant.example=smtp:[127.0.0.1]:$SINK_PORT}" \
		'mynetworks = 127.0.0.0/8' \
		'smtpd_relay_restrictions = permit_mynetworks reject_unauth_destination' \
		'smtpd_recipient_restrictions =' \
		'smtp_tls_security_level = none' \
		'smtpd_tls_security_level = none' \
		'smtp_host_lookup = native' \
		'smtp_dns_support_level = disabled' \
		'message_size_limit = 52428800' \
		'alias_maps =' 'alias_database =' \
		'notify_classes =' \
		'queue_run_delay = 300s' 'minimal_backoff_time = 300s' 'maximal_backoff_time = 4000s' \
		'maximal_queue_lifetime = 5d'
	postconf -c "$PF_ETC" -M# 'smtp/inet'
	postconf -c "$PF_ETC" -Me "127.0.0.1:$PF_PORT/inet = 127.0.0.1:$PF_PORT inet n - n - - smtpd"
	local s
	for s in pickup/unix cleanup/unix tlsmgr/unix rewrite/unix bounce/unix defer/unix trace/unix \
		verify/unix flush/unix smtp/unix relay/unix showq/unix error/unix retry/unix \
		discard/unix lmtp/unix anvil/unix scache/unix; do
		postconf -c "$PF_ETC" -Fe "$s/chroot = n"
	done
	if [ "$SCANNERS" = rspamd ]; then pf_milter on; fi
	postfix -c "$PF_ETC" check >>"$W/pf/setup.log" 2>&1 || die "postfix check failed (see $W/pf/maillog)"
}

# pf_milter on|off: rspamd_proxy as smtpd's milter, as rspamd's documentation sets Postfix up
# (milter_default_action = tempfail here, so a failing milter shows as errors, not as speed).
pf_milter() {
	if [ "$1" = on ]; then
		postconf -c "$PF_ETC" -e "smtpd_milters = inet:$RSPAMD_MILTER" 'non_smtpd_milters =' \
			'milter_protocol = 6' 'milter_default_action = tempfail' \
			'milter_mail_macros = i {mail_addr} {client_addr} {client_name} {auth_authen}' \
			'milter_command_timeout = 60s' 'milter_content_timeout = 60s'
	else
		postconf -c "$PF_ETC" -e 'smtpd_milters ='
	fi
}

pf_master() { tr -d ' ' <"$PF_Q/pid/master.pid" 2>/dev/null; }

pf_start() {
	postfix -c "$PF_ETC" start >>"$W/pf/setup.log" 2>&1 || die "postfix start failed (see $W/pf/maillog)"
	PF_UP=1
	wait_for 30 0.1 listening "$PF_PORT" || die "postfix is not listening on $PF_PORT"
}

pf_stop() {
	local m
	m=$(pf_master)
	postfix -c "$PF_ETC" stop >>"$W/pf/setup.log" 2>&1 || true
	if [ -n "$m" ] && ! wait_for 20 0.1 gone "$m"; then
		postfix -c "$PF_ETC" abort >>"$W/pf/setup.log" 2>&1 || true
		kill -KILL "$m" 2>/dev/null || true
	fi
	PF_UP=0
	wait_for 10 0.1 closed "$PF_PORT" || log "warning: postfix port still open"
}

# Queue files still in Postfix's queue (incoming, active, deferred, hold).
pf_queued() { find "$PF_Q/incoming" "$PF_Q/active" "$PF_Q/deferred" "$PF_Q/hold" -type f 2>/dev/null | wc -l; }
pf_empty() { [ "$(pf_queued)" = 0 ]; }
pf_all_deferred() { [ "$(find "$PF_Q/deferred" -type f | wc -l)" = "$1" ] && [ "$(pf_queued)" = "$1" ]; }
# CPU of the whole instance: master (its reaped children included) + live children.
pf_cpu() {
	local m
	m=$(pf_master)
	{
		awk '{print $14 + $15 + $16 + $17}' "/proc/$m/stat"
		for c in $(pgrep -P "$m"); do awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true; done
	} | awk '{s += $1} END {print s}'
}

# ---------------------------------------------------------------------------------------------
# Measurements. Results go into R[peer/round/workload/metric].

declare -A R

source_run() { # PORT N FLAGS... -> runs smtp-source, fails loudly when it reports errors
	local port=$1 n=$2
	shift 2
	if ! smtp-source -s "$SESSIONS" -m "$n" "$@" -f "$FROM" -t "$TO" "127.0.0.1:$port" >"$W/source.out" 2>&1; then
		log "smtp-source failed: $(head -3 "$W/source.out")"
		return 1
	fi
	if [ -s "$W/source.out" ]; then
		log "smtp-source said: $(head -3 "$W/source.out")"
	fi
}

# The sink peer is the delivery sink itself (started by every workload): nothing more to start.
peer_start() { case $1 in ours) engine_start ;; shadow) shadow_start ;; sink) ;; *) pf_start ;; esac; }
peer_stop() { case $1 in ours) engine_stop ;; shadow) shadow_stop ;; sink) ;; *) pf_stop ;; esac; }
peer_port() { case $1 in ours | shadow) echo "$ENGINE_PORT" ;; sink) echo "$SINK_PORT" ;; *) echo "$PF_PORT" ;; esac; }
# rspamd mode: + all of rspamd's processes.
peer_cpu() {
	local c
	case $1 in ours) c=$(engine_cpu) ;; shadow) c=$(pair_cpu) ;; sink) c=$(sink_cpu) ;; *) c=$(pf_cpu) ;; esac
	if [ "$SCANNERS" = rspamd ]; then calc "$c + $(rspamd_cpu)"; else echo "$c"; fi
}
# CPU of the whole rspamd: its main process (reaped children included) + every live worker.
rspamd_cpu() {
	local m
	m=$(cat "$RSPAMD_DIR/run/rspamd.pid")
	{
		awk '{print $14 + $15 + $16 + $17}' "/proc/$m/stat"
		for c in $(pgrep -P "$m"); do awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true; done
	} | awk '{s += $1} END {print s}'
}
peer_empty() { case $1 in ours | shadow) engine_empty ;; sink) true ;; *) pf_empty ;; esac; }
peer_ours() { [ "$1" = ours ] || [ "$1" = shadow ]; }

# After a workload on the pair: what the shadow added to the 250 and how copies shared fsyncs.
shadow_figures() {
	local k=$1 c r
	R[$k/added_p50]=$(hist_q "$OPS" maildistiller_engine_shadow_wait_seconds 0.5)
	R[$k/added_p99]=$(hist_q "$OPS" maildistiller_engine_shadow_wait_seconds 0.99)
	R[$k/copy_p99]=$(hist_q "$OPS" maildistiller_engine_shadow_copy_seconds 0.99)
	c=$(metric_sum "$B_OPS" maildistiller_engine_shadow_log_commits_total)
	r=$(metric_sum "$B_OPS" maildistiller_engine_shadow_log_records_total)
	R[$k/per_sync]=$(awk -v r="$r" -v c="$c" 'BEGIN { if (c > 0) printf "%.1f", r / c; else print "-" }')
	R[$k/refused]=$(metric_sum "$OPS" maildistiller_engine_messages_rejected_total)
	log "$k: the 250 waited for the shadow p50 ${R[$k/added_p50]} ms, p99 ${R[$k/added_p99]} ms beyond the local fsync; copy p99 ${R[$k/copy_p99]} ms; ${R[$k/per_sync]} records per fsync on B; ${R[$k/refused]} refused after DATA"
}

# throughput PEER ROUND WORKLOAD N SMTP-SOURCE-FLAGS...
throughput() {
	local peer=$1 round=$2 wl=$3 n=$4
	shift 4
	local k="$peer/$round/$wl"
	peer_start "$peer"
	sink_start
	local c0 t0 t1 t2 r0=0
	c0=$(peer_cpu "$peer")
	[ "$SCANNERS" = rspamd ] && r0=$(rspamd_cpu)
	t0=$(now)
	source_run "$(peer_port "$peer")" "$n" "$@" || die "$k: sending failed"
	t1=$(now)
	wait_for "$WAIT_MAX" 0.05 sink_has "$n" || die "$k: the sink got $(sink_count) of $n within ${WAIT_MAX}s"
	t2=$(now)
	wait_for 60 0.2 peer_empty "$peer" || log "warning: $k: queue not empty 60 s after the sink got everything"
	local c1
	c1=$(peer_cpu "$peer")
	R[$k/accepted]=$(calc "$n / ($t1 - $t0)")
	R[$k/e2e]=$(calc "$n / ($t2 - $t0)")
	R[$k/cpu]=$(calc "($c1 - $c0) * 1000000 / $HZ / $n")
	[ "$SCANNERS" = rspamd ] && R[$k/rspamd_cpu]=$(calc "($(rspamd_cpu) - $r0) * 1000000 / $HZ / $n")
	if peer_ours "$peer"; then R[$k/rss]=$(engine_hwm); fi
	if [ "$peer" = shadow ]; then
		sleep 2 # the counters on /metrics are refreshed every second
		shadow_figures "$k"
	fi
	log "$k: accepted $(fmt "${R[$k/accepted]}") msg/s, end-to-end $(fmt "${R[$k/e2e]}") msg/s, CPU $(fmt "${R[$k/cpu]}") µs/msg"
	sink_stop
	peer_stop "$peer"
}

# held PEER ROUND: N_HELD messages while the sink is down; then the sink comes back.
held() {
	local peer=$1 round=$2
	local k="$peer/$round/held" n=$N_HELD
	listening "$SINK_PORT" && die "the sink port is open before the held test"
	peer_start "$peer"
	local t0 t1 c0
	c0=$(peer_cpu "$peer")
	t0=$(now)
	source_run "$(peer_port "$peer")" "$n" -l 4096 || die "$k: sending failed"
	t1=$(now)
	R[$k/accepted]=$(calc "$n / ($t1 - $t0)")
	if peer_ours "$peer"; then
		wait_for 60 0.5 engine_all_held "$n" || die "$k: $(engine_queued held) of $n held after 60 s"
	else
		wait_for 120 0.5 pf_all_deferred "$n" || die "$k: $(pf_queued) queued, not all deferred after 120 s"
	fi
	log "$k: $n accepted at $(fmt "${R[$k/accepted]}") msg/s and held; destination back now"
	local up tdone
	sink_start
	up=$(now)
	if peer_ours "$peer"; then
		wait_for "$WAIT_MAX" 0.05 sink_has "$n" || die "$k: the sink got $(sink_count) of $n within ${WAIT_MAX}s"
		tdone=$(now)
		R[$k/drain]=$(calc "$tdone - $up")
		wait_for 30 0.1 engine_empty || log "warning: $k: queue not empty after the sink got everything"
		R[$k/empty]=$(calc "$(now) - $up")
		R[$k/cpu]=$(calc "($(peer_cpu "$peer") - $c0) * 1000000 / $HZ / $n")
		R[$k/rss]=$(engine_hwm)
		log "$k: all $n in the sink $(fmt "${R[$k/drain]}" 2) s after it came back (queue empty after $(fmt "${R[$k/empty]}" 2) s)"
	else
		if wait_for "$PF_HELD_WAIT" 0.5 sink_has "$n"; then
			R[$k/drain]=$(calc "$(now) - $up")
		else
			R[$k/drain]=">$PF_HELD_WAIT"
		fi
		R[$k/nowait]=$(sink_count)
		log "$k: without a flush, $(sink_count) of $n delivered within ${PF_HELD_WAIT}s"
		local tf
		tf=$(now)
		postqueue -c "$PF_ETC" -f
		wait_for "$WAIT_MAX" 0.05 sink_has "$n" || die "$k: after postqueue -f the sink got $(sink_count) of $n"
		R[$k/flush]=$(calc "$(now) - $tf")
		R[$k/flushrate]=$(calc "($n - ${R[$k/nowait]}) / ${R[$k/flush]}")
		wait_for 30 0.2 pf_empty || log "warning: $k: queue not empty after the flush"
		R[$k/cpu]=$(calc "($(pf_cpu) - $c0) * 1000000 / $HZ / $n")
		log "$k: postqueue -f delivered the rest in $(fmt "${R[$k/flush]}" 2) s ($(fmt "${R[$k/flushrate]}") msg/s)"
	fi
	sink_stop
	peer_stop "$peer"
}

# ---------------------------------------------------------------------------------------------
# 3. Run

if [ "$SCANNERS" = rspamd ]; then
	log "starting a private rspamd with its milter (tests/rspamd/start.sh)"
	RSPAMD_ENV=$(MAILDISTILLER_RSPAMD_MILTER=1 bash "$ROOT/tests/rspamd/start.sh")
	RSPAMD_DIR=$(sed -n 's/^export MAILDISTILLER_RSPAMD_DIR=//p' <<<"$RSPAMD_ENV")
	RSPAMD_NORMAL=$(sed -n 's/^export MAILDISTILLER_RSPAMD=//p' <<<"$RSPAMD_ENV")
	RSPAMD_MILTER=$(sed -n 's/^export MAILDISTILLER_RSPAMD_MILTER=//p' <<<"$RSPAMD_ENV")
	[ -n "$RSPAMD_MILTER" ] || die "rspamd did not start its milter"
fi
engine_config
pf_config
log "work dir $W; engine 127.0.0.1:$ENGINE_PORT (ops $OPS), postfix 127.0.0.1:$PF_PORT, sink 127.0.0.1:$SINK_PORT"
log "load: smtp-source -s $SESSIONS; one peer at a time; $RUNS round(s)"
LOAD_BEFORE=$(cut -d" " -f1-3 /proc/loadavg)

WORKLOADS=()
[ "$N_4K" -gt 0 ] && WORKLOADS+=("4k")
[ "$N_4K_PERSIST" -gt 0 ] && WORKLOADS+=("4k-d")
[ "$N_100K" -gt 0 ] && WORKLOADS+=("100k")
wl_n() { case $1 in 4k) echo "$N_4K" ;; 4k-d) echo "$N_4K_PERSIST" ;; 100k) echo "$N_100K" ;; esac; }
wl_flags() { case $1 in 4k) echo "-l 4096" ;; 4k-d) echo "-l 4096 -d" ;; 100k) echo "-l 102400" ;; esac; }
wl_name() {
	case $1 in
	4k) echo "4 KiB x $N_4K, conn/msg" ;;
	4k-d) echo "4 KiB x $N_4K_PERSIST, -d" ;;
	100k) echo "100 KiB x $N_100K, conn/msg" ;;
	esac
}

for round in $(seq 1 "$RUNS"); do
	for wl in "${WORKLOADS[@]}"; do
		for peer in $PEERS; do
			# shellcheck disable=SC2046
			throughput "$peer" "$round" "$wl" "$(wl_n "$wl")" $(wl_flags "$wl")
		done
	done
	if [ "$N_HELD" -gt 0 ]; then
		for peer in $PEERS; do [ "$peer" = sink ] || held "$peer" "$round"; done
	fi
done

# rspamd mode: the 250's latency on each peer with rspamd, then without it (ours: the in-process
# scanners alone; Postfix: no milter).
latency() { # PEER MODE(with|without)
	local peer=$1 mode=$2
	peer_start "$peer"
	sink_start
	R[$peer/lat/$mode]=$(python3 "$ROOT/bench/engine/latency.py" "$(peer_port "$peer")" "$N_LATENCY") ||
		die "$peer: latency probe failed"
	log "$peer $mode rspamd: 250 after (p50 p90 p99 mean ms) ${R[$peer/lat/$mode]}"
	sink_stop
	peer_stop "$peer"
}
if [ "$SCANNERS" = rspamd ] && [ "$N_LATENCY" -gt 0 ]; then
	for peer in ${PEERS/sink/}; do latency "$peer" with; done
	engine_config local
	pf_milter off
	for peer in ${PEERS/sink/}; do latency "$peer" without; done
	engine_config
	pf_milter on
fi

# ---------------------------------------------------------------------------------------------
# 4. Report

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }

echo
echo "maildistiller engine vs Postfix $(postconf -d -h mail_version), smtp-source -s $SESSIONS, loopback, $(nproc) cores"
echo "(spool and Postfix queue on $(df -P "$W" | awk 'NR == 2 {print $1}'); engine scanners: $SCANNERS; probe_interval $PROBE_INTERVAL)"
echo "(load average 1/5/15 min before the runs: $LOAD_BEFORE, after: $(cut -d" " -f1-3 /proc/loadavg); other work on the machine shows in msg/s, the ratios much less)"
echo
printf '%-5s %-28s %-10s %10s %10s %8s %10s %9s\n' round workload metric ours postfix ratio sink ours/sink
for round in $(seq 1 "$RUNS"); do
	for wl in "${WORKLOADS[@]}"; do
		for m in accepted e2e; do
			o=${R[ours/$round/$wl/$m]:-}
			p=${R[postfix/$round/$wl/$m]:-}
			k=${R[sink/$round/$wl/$m]:-}
			printf '%-5s %-28s %-10s %10s %10s %8s %10s %9s\n' "$round" "$(wl_name "$wl")" "${m/e2e/end-to-end} msg/s" \
				"$(fmt "$o")" "$(fmt "$p")" "$(ratio "$o" "$p")" "$(fmt "$k")" "$(ratio "$o" "$k")"
		done
	done
	if [ "$N_HELD" -gt 0 ]; then
		o=${R[ours/$round/held/accepted]:-}
		p=${R[postfix/$round/held/accepted]:-}
		printf '%-5s %-28s %-10s %10s %10s %8s\n' "$round" "4 KiB x $N_HELD, dest. down" "accepted msg/s" "$(fmt "$o")" "$(fmt "$p")" "$(ratio "$o" "$p")"
	fi
done

echo
echo "CPU per message (µs; ours: engine process; postfix: master + all its daemons; sink: the smtp-sink target;"
echo "rspamd mode: + all of rspamd's processes) and engine peak RSS"
printf '%-5s %-28s %10s %10s %10s %12s\n' round workload ours postfix sink "ours VmHWM"
for round in $(seq 1 "$RUNS"); do
	for wl in "${WORKLOADS[@]}" ${N_HELD:+held}; do
		[ "$wl" = held ] && [ "$N_HELD" -le 0 ] && continue
		if [ "$wl" = held ]; then name="held $N_HELD: accept + drain"; else name=$(wl_name "$wl"); fi
		printf '%-5s %-28s %10s %10s %10s %9s KiB\n' "$round" "$name" \
			"$(fmt "${R[ours/$round/$wl/cpu]:-}")" "$(fmt "${R[postfix/$round/$wl/cpu]:-}")" \
			"$(fmt "${R[sink/$round/$wl/cpu]:-}")" "${R[ours/$round/$wl/rss]:--}"
	done
done

# median VALUES...: the median of the numbers given ("-" when none).
median() { printf '%s\n' "$@" | awk '$1 != "" && $1 != "-"' | sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# per-round ratios of two peers' figures for one workload and metric
ratios() { # A B WL METRIC
	for round in $(seq 1 "$RUNS"); do
		awk -v a="${R[$1/$round/$3/$4]:-}" -v b="${R[$2/$round/$3/$4]:-}" 'BEGIN { if (a != "" && b > 0) printf "%.4f\n", a / b }'
	done
}
if [[ " $PEERS " == *" ours "* ]] && [[ " $PEERS " == *" postfix "* || " $PEERS " == *" sink "* ]]; then
	echo
	echo "Medians over $RUNS round(s) (ratios: the median of each round's ratio). Goals (issue 19): ours >= 3x Postfix"
	echo "accepted and end to end in every round, ours >= 0.4x the store-nothing sink"
	printf '%-28s %-10s %10s %10s %10s %8s %8s %9s %10s\n' workload metric ours postfix sink ratio "min pf" ours/sink "min sink"
	for wl in "${WORKLOADS[@]}"; do
		for m in accepted e2e; do
			vals() { for round in $(seq 1 "$RUNS"); do echo "${R[$1/$round/$wl/$m]:-}"; done; }
			# shellcheck disable=SC2046
			printf '%-28s %-10s %10s %10s %10s %8s %8s %9s %10s\n' "$(wl_name "$wl")" "${m/e2e/end-to-end}" \
				"$(fmt "$(median $(vals ours))")" "$(fmt "$(median $(vals postfix))")" "$(fmt "$(median $(vals sink))")" \
				"$(fmt "$(median $(ratios ours postfix "$wl" "$m"))" 2)x" "$(fmt "$(ratios ours postfix "$wl" "$m" | sort -g | head -1)" 2)x" \
				"$(fmt "$(median $(ratios ours sink "$wl" "$m"))" 2)x" "$(fmt "$(ratios ours sink "$wl" "$m" | sort -g | head -1)" 2)x"
		done
	done
fi

if [ "$SCANNERS" = rspamd ]; then
	echo
	echo "rspamd's own CPU per message (µs), included in the CPU figures above"
	printf '%-5s %-28s %10s %10s\n' round workload ours postfix
	for round in $(seq 1 "$RUNS"); do
		for wl in "${WORKLOADS[@]}"; do
			printf '%-5s %-28s %10s %10s\n' "$round" "$(wl_name "$wl")" \
				"$(fmt "${R[ours/$round/$wl/rspamd_cpu]:-}")" "$(fmt "${R[postfix/$round/$wl/rspamd_cpu]:-}")"
		done
	done
	if [ "$N_LATENCY" -gt 0 ]; then
		echo
		echo "The 250 after the final dot, $N_LATENCY x 4 KiB one after another (ms: p50 p90 p99 mean)"
		printf '%-8s %-26s %-26s %s\n' peer "with rspamd" "without" "added (p50, p99)"
		for peer in $PEERS; do
			read -r w50 w90 w99 wm <<<"${R[$peer/lat/with]:-- - - -}"
			read -r o50 o90 o99 om <<<"${R[$peer/lat/without]:-- - - -}"
			printf '%-8s %-26s %-26s %s\n' "$peer" "$w50 $w90 $w99 $wm" "$o50 $o90 $o99 $om" \
				"$(calc "$w50 - $o50") $(calc "$w99 - $o99")"
		done
	fi
fi

if [ "$N_HELD" -gt 0 ]; then
	echo
	echo "Held queue of $N_HELD x 4 KiB, destination back (seconds until the sink has all of them)"
	printf '%-5s %14s %18s %26s\n' round ours "postfix, no flush" "postfix after postqueue -f"
	for round in $(seq 1 "$RUNS"); do
		pd=${R[postfix/$round/held/drain]:-}
		case $pd in ">"*) pd="$pd s ($(fmt "${R[postfix/$round/held/nowait]}") dlv.)" ;; *) pd="$(fmt "$pd" 2) s" ;; esac
		printf '%-5s %12s s %18s %14s s (%s msg/s)\n' "$round" "$(fmt "${R[ours/$round/held/drain]:-}" 2)" "$pd" \
			"$(fmt "${R[postfix/$round/held/flush]:-}" 2)" "$(fmt "${R[postfix/$round/held/flushrate]:-}")"
	done
fi

if [[ " $PEERS " == *" shadow "* ]]; then
	echo
	echo "Shadow redundancy: the same engine, each 250 after a second engine of the cluster has also fsynced the"
	echo "message (REDUNDANCY=shadow). Target: shadow >= 0.7x ours and >= 1.5x Postfix (accepted msg/s)."
	echo "+p50/+p99: how much longer the 250 waited for the shadow than for the local fsync;"
	echo "rec/fsync: records (copies and discards) per group commit on the shadow; CPU: both engines."
	printf '%-5s %-28s %9s %9s %9s %11s %10s %8s %8s %9s %9s\n' round workload shadow ours postfix shadow/ours shadow/pf "+p50 ms" "+p99 ms" rec/fsync "CPU µs"
	for round in $(seq 1 "$RUNS"); do
		for wl in "${WORKLOADS[@]}" ${N_HELD:+held}; do
			[ "$wl" = held ] && [ "$N_HELD" -le 0 ] && continue
			if [ "$wl" = held ]; then name="4 KiB x $N_HELD, dest. down"; else name=$(wl_name "$wl"); fi
			sh=${R[shadow/$round/$wl/accepted]:-}
			o=${R[ours/$round/$wl/accepted]:-}
			p=${R[postfix/$round/$wl/accepted]:-}
			printf '%-5s %-28s %9s %9s %9s %11s %10s %8s %8s %9s %9s\n' "$round" "$name" "$(fmt "$sh")" "$(fmt "$o")" "$(fmt "$p")" \
				"$(ratio "$sh" "$o")" "$(ratio "$sh" "$p")" "${R[shadow/$round/$wl/added_p50]:--}" "${R[shadow/$round/$wl/added_p99]:--}" \
				"${R[shadow/$round/$wl/per_sync]:--}" "$(fmt "${R[shadow/$round/$wl/cpu]:-}")"
		done
	done
fi
