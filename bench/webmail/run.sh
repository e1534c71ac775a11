#!/usr/bin/env bash
# Webmail page loads with 10,000 held messages for one user (issue #7: under 100 ms on
# loopback). An engine in-process with its spool filled directly, pages fetched over real HTTPS
# with a new TLS connection per request; prints p50 / p95 / max per page
# (bench/webmail/page_load.rs says what is measured).
#
#   bench/webmail/run.sh                                          # 10 000 messages, 50 loads per page
#   WEBMAIL_BENCH_MESSAGES=50000 WEBMAIL_BENCH_ROUNDS=20 bench/webmail/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo test --release --test it -- --ignored --exact webmail::bench_webmail_page_load --nocapture --test-threads 1
