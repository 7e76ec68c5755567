#!/usr/bin/env bash
# The `echo` scenario (README "Benchmarks"): reseau's `echo` example server beside a tokio
# multi-thread echo server (bench/examples/tokio_echo.rs), both driven by the same client
# (the `echo` example's), 1 KiB messages, at 8 and 64 connections, alternating servers,
# RUNS times each (default 3). Prints the client's line for every run.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
secs=${SECONDS_PER_RUN:-3}
cargo build -q --release --locked -p reseau-linux --example echo
(cd bench && cargo build -q --release --locked --example tokio_echo)
echo_bin=target/release/examples/echo
tokio_bin=bench/target/release/examples/tokio_echo
"$echo_bin" server 127.0.0.1:7878 2>/dev/null & r=$!
"$tokio_bin" 127.0.0.1:7879 2>/dev/null & t=$!
trap 'kill $r $t 2>/dev/null || true' EXIT
# Wait until both accept (a failure guard of 10 s, not a timing assumption).
for port in 7878 7879; do
    for _ in $(seq 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
        sleep 0.1
    done
done
for conns in 8 64; do
    for i in $(seq "$runs"); do
        for server in reseau:7878 tokio:7879; do
            printf '%-6s %2d conns run %d: ' "${server%%:*}" "$conns" "$i"
            "$echo_bin" client "127.0.0.1:${server##*:}" --connections "$conns" --seconds "$secs" | tr '\n' ' '
            echo
        done
    done
done
