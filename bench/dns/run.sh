#!/usr/bin/env bash
# GeoDNS side by side, in one run: gdnsd 3.8 (geoip plugin + tcp_connect health checks),
# `maildistiller --role dns` serving the same zone and sites, and a no-op UDP reflector
# (bench/dns/reflector.rs: echoes each query with QR set over the very same sockets and
# recvmmsg/sendmmsg loop, same thread count) as the floor, driven by dnsperf with the same query
# file (A, AAAA, MX, 10 % NXDOMAIN), without and with EDNS Client Subnet. Prints q/s, latency
# percentiles, server CPU per query, each server's CPU per query relative to the reflector's and
# our/gdnsd ratios. See README.md beside this file.
#
# Knobs (environment): DURATION (s per throughput run, 10), CLIENTS (dnsperf -c, 4),
# RATE (q/s of the latency runs, 20000), LATENCY_SECONDS (5), THREADS (UDP threads of each
# server, 2), ROUNDS (3; medians are printed), PIN (1: servers on CPU 0, dnsperf on CPU 1),
# BENCH_DIR (work files, target/bench-dns), GDNSD_PORT / OUR_PORT / REFLECTOR_PORT / OPS_PORT,
# MAILDISTILLER_BIN and REFLECTOR_BIN (given binaries, no build: A/B runs of two builds).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
HERE=$ROOT/bench/dns
W=${BENCH_DIR:-$ROOT/target/bench-dns}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-4}
RATE=${RATE:-20000}
LATENCY_SECONDS=${LATENCY_SECONDS:-5}
PIN=${PIN:-0}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
GDNSD_PORT=${GDNSD_PORT:-15353}
OUR_PORT=${OUR_PORT:-15354}
REFLECTOR_PORT=${REFLECTOR_PORT:-15355}
OPS_PORT=${OPS_PORT:-19153}
ZONE=mail.example.test
# ECS option (code 8): family 1, source /24, scope 0, 81.2.69.0 (GB in the shipped database).
ECS=8:00011800510245
EDGES="127.0.1.1 127.0.1.2 127.0.2.1 127.0.2.2 127.0.3.1 127.0.3.2"

mkdir -p "$W"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== tools"
missing=()
command -v gdnsd >/dev/null || missing+=(gdnsd)
command -v dnsperf >/dev/null || missing+=(dnsperf)
python3 -c 'import venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== building maildistiller and the reflector (release)"
if [ -z "${MAILDISTILLER_BIN:-}" ] || [ -z "${REFLECTOR_BIN:-}" ]; then
    cargo build --release --quiet --bin maildistiller --example dns-reflector
fi
BIN=${MAILDISTILLER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/maildistiller}
REFLECTOR=${REFLECTOR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/dns-reflector}

echo "== GeoIP2-shaped database for gdnsd (converted once from geo/, cached in $W)"
mkdir -p "$W/gdnsd/geoip" "$W/gdnsd/zones" "$W/gdnsd/run" "$W/gdnsd/state"
DB=$W/gdnsd/geoip/GeoIP2-Country-shaped.mmdb
if [ ! -s "$DB" ]; then
    [ -x "$W/venv/bin/python" ] || python3 -m venv "$W/venv"
    "$W/venv/bin/pip" install -q maxminddb mmdb-writer netaddr
    "$W/venv/bin/python" "$HERE/convert_mmdb.py" "$ROOT/geo/geo-whois-asn-country.mmdb" "$DB.tmp"
    mv "$DB.tmp" "$DB"
fi

echo "== stand-in SMTP edges on $EDGES port 2525"
python3 "$HERE/edges.py" 2525 $EDGES &
PIDS+=($!)
python3 - $EDGES <<'PY' || { echo "stand-in edges did not start"; exit 1; }
import socket, sys, time
for a in sys.argv[1:]:
    for _ in range(100):
        try:
            socket.create_connection((a, 2525), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        sys.exit(1)
PY

sed -e "s|@WORK@|$W|g; s|@PORT@|$GDNSD_PORT|g; s|@THREADS@|$THREADS|g" "$HERE/gdnsd/config.in" >"$W/gdnsd/config"
cp "$HERE/gdnsd/$ZONE" "$W/gdnsd/zones/$ZONE"
mkdir -p "$W/md"
sed -e "s|@ROOT@|$ROOT|g; s|@PORT@|$OUR_PORT|g; s|@OPS@|$OPS_PORT|g; s|@THREADS@|$THREADS|g" \
    "$HERE/maildistiller.toml.in" >"$W/md/maildistiller.toml"
"$BIN" check --role dns --config "$W/md/maildistiller.toml" >/dev/null
gdnsd -c "$W/gdnsd" checkconf >/dev/null 2>&1 || { gdnsd -c "$W/gdnsd" checkconf; exit 1; }

server_cpu=()
dnsperf_cpu=()
if [ "$PIN" = 1 ]; then
    server_cpu=(taskset -c 0)
    dnsperf_cpu=(taskset -c 1)
fi

echo "== starting gdnsd on :$GDNSD_PORT, maildistiller on :$OUR_PORT, the reflector on :$REFLECTOR_PORT"
"${server_cpu[@]}" gdnsd -c "$W/gdnsd" start >"$W/gdnsd.log" 2>&1 &
GDNSD_PID=$!
PIDS+=($GDNSD_PID)
"${server_cpu[@]}" "$BIN" --role dns --config "$W/md/maildistiller.toml" --log-level warn >"$W/maildistiller.log" 2>&1 &
OUR_PID=$!
PIDS+=($OUR_PID)
"${server_cpu[@]}" "$REFLECTOR" "127.0.0.1:$REFLECTOR_PORT" "$THREADS" >"$W/reflector.log" 2>&1 &
REFLECTOR_PID=$!
PIDS+=($REFLECTOR_PID)
python3 "$HERE/ready.py" "$GDNSD_PORT" "$ZONE" || { cat "$W/gdnsd.log"; exit 1; }
python3 "$HERE/ready.py" "$REFLECTOR_PORT" "$ZONE" || { cat "$W/reflector.log"; exit 1; }
python3 "$HERE/ready.py" "$OUR_PORT" "$ZONE" || { cat "$W/maildistiller.log"; exit 1; }
# Both health-check every 2 s and need 2 results: let every site settle up.
sleep 6

TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# throughput NAME PID PORT LABEL [dnsperf options...] -> one result line
throughput() {
    local name=$1 pid=$2 port=$3 label=$4
    shift 4
    local before after out qps avg completed
    before=$(cpu_ticks "$pid")
    out=$("${dnsperf_cpu[@]}" dnsperf -s 127.0.0.1 -p "$port" -d "$HERE/queries.txt" \
        -c "$CLIENTS" -l "$DURATION" "$@" 2>&1)
    after=$(cpu_ticks "$pid")
    completed=$(awk '/Queries completed:/ {print $3}' <<<"$out")
    qps=$(awk '/Queries per second:/ {printf "%.0f", $4}' <<<"$out")
    avg=$(awk '/Average Latency/ {printf "%.0f", $4 * 1e6}' <<<"$out")
    local cpu_us
    cpu_us=$(awk -v d=$((after - before)) -v t="$TICK" -v n="$completed" \
        'BEGIN { printf "%.2f", (n > 0 ? d * 1e6 / t / n : 0) }')
    echo "$name $label $qps $avg $cpu_us" >>"$W/results"
}

# latency NAME PORT LABEL [dnsperf options...] -> percentiles at a fixed rate
latency() {
    local name=$1 port=$2 label=$3
    shift 3
    local p
    p=$("${dnsperf_cpu[@]}" dnsperf -s 127.0.0.1 -p "$port" -d "$HERE/queries.txt" \
        -c "$CLIENTS" -l "$LATENCY_SECONDS" -Q "$RATE" -v "$@" 2>/dev/null | python3 "$HERE/latency.py")
    echo "$name $label $p" >>"$W/latency"
}

: >"$W/results"
: >"$W/latency"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# Rounds rotate which server goes first, so drift in the machine's load hits all alike.
for round in $(seq 1 "$ROUNDS"); do
    for mode in plain ecs; do
        opts=()
        [ "$mode" = ecs ] && opts=(-e -E "$ECS")
        case $((round % 3)) in
            1) order=(gdnsd maildistiller reflector) ;;
            2) order=(maildistiller reflector gdnsd) ;;
            0) order=(reflector gdnsd maildistiller) ;;
        esac
        echo "== round $round/$ROUNDS, $mode: throughput (${DURATION}s, -c $CLIENTS) and latency at $RATE q/s"
        for name in "${order[@]}"; do
            case $name in
                gdnsd) pid=$GDNSD_PID port=$GDNSD_PORT ;;
                maildistiller) pid=$OUR_PID port=$OUR_PORT ;;
                reflector) pid=$REFLECTOR_PID port=$REFLECTOR_PORT ;;
            esac
            throughput "$name" "$pid" "$port" "$mode" "${opts[@]}"
            latency "$name" "$port" "$mode" "${opts[@]}"
        done
    done
done

# median FILE NAME MODE COLUMN
median() {
    awk -v n="$2" -v m="$3" -v c="$4" '$1 == n && $2 == m {print $c}' "$1" | sort -g |
        awk '{v[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

echo
echo "GeoDNS benchmark: $(nproc) CPUs, $THREADS UDP threads each, dnsperf -c $CLIENTS, ${DURATION}s runs,"
echo "pinned=$PIN, medians of $ROUNDS rotating rounds (every run: $W/results, $W/latency)"
echo "reflector = no-op echo over our sockets and batch loop: the floor of CPU per query"
echo "load average (1/5/15 min) before the runs: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(other work on the machine shows in q/s and the percentiles; CPU per query is the server's own)"
printf '%-14s %-6s %10s %14s %14s %8s %8s %8s %8s\n' server ECS "q/s" "avg lat (us)" "CPU us/query" \
    "p50 us" "p90 us" "p99 us" "p99.9 us"
for mode in plain ecs; do
    for name in gdnsd maildistiller reflector; do
        printf '%-14s %-6s %10.0f %14.0f %14.2f %8s %8s %8s %8s\n' "$name" "$mode" \
            "$(median "$W/results" $name $mode 3)" "$(median "$W/results" $name $mode 4)" \
            "$(median "$W/results" $name $mode 5)" "$(median "$W/latency" $name $mode 3)" \
            "$(median "$W/latency" $name $mode 4)" "$(median "$W/latency" $name $mode 5)" \
            "$(median "$W/latency" $name $mode 6)"
    done
done
echo
for mode in plain ecs; do
    awk -v gq="$(median "$W/results" gdnsd $mode 3)" -v mq="$(median "$W/results" maildistiller $mode 3)" \
        -v gc="$(median "$W/results" gdnsd $mode 5)" -v mc="$(median "$W/results" maildistiller $mode 5)" \
        -v rc="$(median "$W/results" reflector $mode 5)" \
        -v gp="$(median "$W/latency" gdnsd $mode 5)" -v mp="$(median "$W/latency" maildistiller $mode 5)" \
        -v gpp="$(median "$W/latency" gdnsd $mode 6)" -v mpp="$(median "$W/latency" maildistiller $mode 6)" \
        -v m=$mode 'BEGIN {
        r = (rc > 0 ? rc : 1)
        printf "ratio %-6s CPU per query / reflector: ours %.2fx gdnsd %.2fx   q/s ours/gdnsd %.2f   p99 ours/gdnsd %.2f   p99.9 ours/gdnsd %.2f\n",
            m, mc / r, gc / r, mq / gq, mp / (gp > 0 ? gp : 1), mpp / (gpp > 0 ? gpp : 1) }'
done
