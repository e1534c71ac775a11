#!/usr/bin/env bash
# Edge tier benchmark: smtp-source -> proxy -> two smtp-sink backends, through HAProxy 2.6
# (mode tcp, leastconn, smtpchk) and through our edge in layer-4 (`tcp_listen`) and SMTP-aware
# mode, in one run, on loopback. Prints msg/s, proxy CPU per message (utime+stime of all the
# proxy's threads from /proc/PID/stat) and the ratios; then the edge's memory with 10,000 idle
# client connections, against HAProxy's with the same clients.
#
#   bash bench/edge/run.sh            # MESSAGES=10000 SESSIONS=20 ROUNDS=3 IDLE=10000
#   MAILDISTILLER_BIN=/path/to/maildistiller bash bench/edge/run.sh   # a given build (A/B runs)
#   PERF_DIR=/tmp/p bash bench/edge/run.sh   # also perf-record each proxy in round 1
#
# Each round runs the three proxies in a rotated order (the first of a round does not always
# meet the same background load); the summary gives per-round ratios and their medians.
# Idle memory: HAProxy in mode tcp holds a server connection per client, so it needs two
# descriptors per client; where the hard `ulimit -n` cannot hold 2 x IDLE (plus some), every
# proxy is measured with the same smaller number, printed.
#
# Installs haproxy and postfix (for smtp-source/smtp-sink) if missing. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/../.."
MESSAGES=${MESSAGES:-10000}
SESSIONS=${SESSIONS:-20}
IDLE=${IDLE:-10000}
ROUNDS=${ROUNDS:-3}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"   # 10k idle clients + the edge's 10k

need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v smtp-source >/dev/null || need+=(postfix)
if [ ${#need[@]} -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v smtp-source >/dev/null || export PATH="$PATH:/usr/sbin"
BIN=${MAILDISTILLER_BIN:-${CARGO_TARGET_DIR:-target}/release/maildistiller}
[ -n "${MAILDISTILLER_BIN:-}" ] || cargo build --release -q

W=$(mktemp -d /tmp/md-bench-edge.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

SINK1=27601; SINK2=27602; HAP=27525; EDGE_SMTP=27526; EDGE_TCP=27527; EDGE_OPS=27528
SINK_USER=(); [ "$(id -u)" = 0 ] && SINK_USER=(-u nobody)   # smtp-sink refuses to run as root
smtp-sink "${SINK_USER[@]}" -m 30000 -c 127.0.0.1:$SINK1 2000 >/dev/null 2>"$W/sink1.log" & pids+=($!)
smtp-sink "${SINK_USER[@]}" -m 30000 -c 127.0.0.1:$SINK2 2000 >/dev/null 2>"$W/sink2.log" & pids+=($!)

cat > "$W/haproxy.cfg" <<CFG
global
    # no maxconn: HAProxy derives it from the descriptor limit (the idle test needs ~2 x IDLE)
defaults
    mode tcp
    timeout connect 5s
    timeout client  60s
    timeout server  60s
    option  dontlognull
frontend smtp_in
    bind 127.0.0.1:$HAP
    default_backend sinks
backend sinks
    balance leastconn
    option smtpchk EHLO edge-hc.local
    default-server check inter 2s fall 3 rise 2 maxconn 10000
    server sink1 127.0.0.1:$SINK1
    server sink2 127.0.0.1:$SINK2
CFG

cat > "$W/edge.toml" <<CFG
[node]
silo = "lon1"
[ops]
listen = "127.0.0.1:$EDGE_OPS"
[regions.uk]
[[silo]]
name = "lon1"
hostname = "lon1.bench"
lat = 51.5
lon = -0.12
  [[silo.cluster]]
  name = "uk"
  region = "uk"
    [[silo.cluster.engine]]
    address = "127.0.0.1:$SINK1"
    proxy = "none"
    max_connections = 10000
    [[silo.cluster.engine]]
    address = "127.0.0.1:$SINK2"
    proxy = "none"
    max_connections = 10000
[[tenant]]
id = "bench"
domains = ["bench.example"]
regions = ["uk"]
delivery = ["127.0.0.1:9"]
[edge]
listen = ["127.0.0.1:$EDGE_SMTP"]
tcp_listen = ["127.0.0.1:$EDGE_TCP"]
hostname = "edge.bench"
backlog = 4096
max_connections = 20000
max_connections_per_ip = 20000
max_connections_per_prefix = 20000
connect_rate_per_ip = 1000000
connect_rate_per_prefix = 1000000
  [edge.health]
  interval = "2s"
  timeout = "1s"
  rise = 2
  fall = 3
CFG

cpu_ticks() { # all threads: utime+stime in clock ticks
    awk '{print $14+$15}' "/proc/$1/stat"
}
wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; tail -n 5 "$W"/*.log >&2; return 1; }
HZ=$(getconf CLK_TCK)

# run LABEL PID PORT FLAGS...: prints "msg/s cpu_us_per_msg". With PERF_DIR set, round 1 is
# also recorded (perf record -g on the proxy; that round's figures carry perf's cost).
run() {
    local who=$1 pid=$2 port=$3; shift 3
    local c0 t0 t1 c1 perf=
    if [ -n "${PERF_DIR:-}" ] && [ "$round" = 1 ]; then
        perf record -q -F 999 -g -p "$pid" -o "$PERF_DIR/$who-$wl.data" 2>/dev/null & perf=$!
        sleep 0.5
    fi
    c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
    timeout 600 smtp-source -s "$SESSIONS" -m "$MESSAGES" -l 4096 -f from@sender.example -t to@bench.example "$@" 127.0.0.1:"$port" >/dev/null
    t1=$(date +%s.%N); c1=$(cpu_ticks "$pid")
    if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" 2>/dev/null || true; fi
    awk -v m="$MESSAGES" -v t0="$t0" -v t1="$t1" -v c0="$c0" -v c1="$c1" -v hz="$HZ" \
        'BEGIN { printf "%.0f %.1f\n", m/(t1-t0), (c1-c0)/hz*1e6/m }'
}

haproxy -db -f "$W/haproxy.cfg" >"$W/haproxy.log" 2>&1 & HPID=$!; pids+=($HPID)
"$BIN" --role edge --config "$W/edge.toml" --log-level warn >"$W/edge.log" 2>&1 & EPID=$!; pids+=($EPID)
wait_port $HAP; wait_port $EDGE_SMTP; wait_port $EDGE_TCP
sleep 2   # first health checks

printf "\n%-44s %10s %10s   %s\n" "workload (smtp-source -s $SESSIONS -m $MESSAGES -l 4096)" "msg/s" "CPU µs/msg" "proxy"
declare -A R
for round in $(seq 1 "$ROUNDS"); do
  for wl in conn persist; do
    flags=(); [ "$wl" = persist ] && flags=(-d)
    order=(haproxy edge-tcp edge-smtp)
    for i in 0 1 2; do
        who=${order[$(( (i + round - 1) % 3 ))]}
        case $who in
            haproxy) out=$(run "$who" $HPID $HAP "${flags[@]}");;
            edge-tcp) out=$(run "$who" $EPID $EDGE_TCP "${flags[@]}");;
            edge-smtp) out=$(run "$who" $EPID $EDGE_SMTP "${flags[@]}");;
        esac
        R[$round,$wl,$who]=$out
        printf "%-44s %10s %10s   %s (round %s)\n" "$wl" ${out} "$who" "$round"
    done
  done
done

echo
echo "ratios (ours / HAProxy in the same round; msg/s higher is better, CPU/msg lower is better)"
for wl in conn persist; do
  for who in edge-tcp edge-smtp; do
    ms=(); cs=()
    for round in $(seq 1 "$ROUNDS"); do
        read -r hm hc <<<"${R[$round,$wl,haproxy]}"
        read -r m c <<<"${R[$round,$wl,$who]}"
        ms+=("$(awk -v a="$m" -v b="$hm" 'BEGIN { printf "%.2f", a/b }')")
        cs+=("$(awk -v a="$c" -v b="$hc" 'BEGIN { printf "%.2f", a/b }')")
    done
    med() { printf "%s\n" "$@" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    printf "  %-8s %-10s msg/s %sx (rounds: %s)   CPU/msg %sx (rounds: %s)\n" "$wl" "$who" \
        "$(med "${ms[@]}")" "${ms[*]}" "$(med "${cs[@]}")" "${cs[*]}"
  done
done

# Idle clients: the same number for every proxy (see the header).
hard=$(ulimit -Hn)
n=$IDLE
if [ "$hard" != unlimited ] && [ $((2 * IDLE + 200)) -gt "$hard" ]; then n=$(((hard - 200) / 2)); fi
echo
echo "memory with $n idle client connections (each greeted with its banner, then silent)"
[ "$n" = "$IDLE" ] || echo "  (IDLE=$IDLE asked; ulimit -Hn $hard holds $n for a proxy that needs two descriptors per client)"
declare -A M
for who in haproxy edge-smtp edge-tcp; do
    case $who in
        haproxy) pid=$HPID port=$HAP;;
        edge-smtp) pid=$EPID port=$EDGE_SMTP;;
        edge-tcp) pid=$EPID port=$EDGE_TCP;;
    esac
    M[$who]=$(python3 bench/edge/idle.py 127.0.0.1 "$port" "$n" "$pid" "$who")
    echo "${M[$who]}" | sed 's/^/  /'
    sleep 2   # let the closes settle before the next proxy's clients
done
hr=$(echo "${M[haproxy]}" | awk '{print $NF}')
for who in edge-smtp edge-tcp; do
    r=$(echo "${M[$who]}" | awk '{print $NF}')
    awk -v who="$who" -v r="$r" -v h="$hr" 'BEGIN { printf "  %-10s RSS with idle clients %.2fx HAProxy'"'"'s\n", who, r/h }'
done
