#!/usr/bin/env bash
# What fleet-wide outbreak detection costs a message (issue #18): an engine with the outbreak
# scanner and [shared] on a private redis-server vs the same engine local-only, on loopback;
# engine CPU per message (and redis-server's), p50/p99 of the reply to the end of DATA.
# See bench/scan/outbreak.rs.
#
#   bench/scan/outbreak.sh                                   # 3 rounds of 3 s per engine and corpus
#   SCAN_BENCH_SECONDS=1 SCAN_BENCH_ROUNDS=1 bench/scan/outbreak.sh   # quick look
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(bash tests/redis/start.sh)"
exec cargo test --release --test it -- --ignored --exact shared::bench_outbreak_cost --nocapture --test-threads 1
