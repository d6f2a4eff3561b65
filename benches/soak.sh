#!/usr/bin/env bash
# A bounded soak (not in CI): mixed predict and feedback at half of the
# maximum rate for SOAK_S seconds (600 by default), on 127.0.0.1 only.
#
# 1. Calibrate: predict (wrk, 16 connections) and feedback batches of 100
#    Elec2 rows (wrk, 4 connections) run together, closed loop, for
#    CAL_DURATION; their rates are the maximum of this mix.
# 2. Soak: a fresh server gets half of each rate, open loop
#    (examples/soak_client.rs: requests leave on a timer, so a slow server
#    shows as latency), for SOAK_S seconds. Every 10 s the script samples
#    the server's RSS (/proc/PID/status) next to the window's predict
#    p50/p99 and feedback outcomes.
# 3. Summary: RSS and predict p99 in the first and last minute, and the
#    largest; "flat" means the last minute is within 10% (RSS) and 2x
#    (p99) of the first.
#
# Usage: benches/soak.sh              (SOAK_S=600 CAL_DURATION=10s)
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_S=${SOAK_S:-600}
CAL_DURATION=${CAL_DURATION:-10s}
PORT=${PORT:-18191}
BATCH=${BATCH:-100}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin eddy --example soak_client

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

python3 - "$work" "$BATCH" <<'PY'
import gzip, json, sys
rows = [json.loads(l) for l in gzip.open("tests/data/elec2.jsonl.gz", "rt")]
out, batch = sys.argv[1], int(sys.argv[2])
json.dump({"features": rows[100]["features"]}, open(f"{out}/predict.json", "w"))
json.dump({"examples": rows[:batch]}, open(f"{out}/feedback.json", "w"))
PY

start_server() {
  EDDY_SERVER__LISTEN=127.0.0.1:$PORT EDDY_ADMIN__LISTEN=127.0.0.1:0 EDDY_STORAGE__DIR=$1 \
    EDDY_LOG__LEVEL=warn ./target/release/eddy serve >"$work/server.log" 2>&1 &
  server=$!; pids+=("$server")
  for _ in $(seq 300); do
    curl -sf -o /dev/null 127.0.0.1:$PORT/readyz && return
    sleep 0.1
  done
  echo "server did not become ready"; cat "$work/server.log"; exit 1
}
stop_server() { kill "$server"; wait "$server" || true; }
rps() { awk '/^Requests\/sec/ {print $2}'; }

echo "== calibrate: predict (16 conns) and feedback batches of $BATCH (4 conns) together, closed loop, $CAL_DURATION"
start_server "$work/cal"
BODY=$work/feedback.json wrk -t1 -c4 -d"$CAL_DURATION" -s benches/wrk/post.lua \
  http://127.0.0.1:$PORT/v1/models/demo/feedback > "$work/cal.feedback" &
fb=$!
BODY=$work/predict.json wrk -t1 -c16 -d"$CAL_DURATION" -s benches/wrk/post.lua \
  http://127.0.0.1:$PORT/v1/models/demo/predict > "$work/cal.predict"
wait "$fb"
stop_server
max_predict=$(rps < "$work/cal.predict"); max_batches=$(rps < "$work/cal.feedback")
half_predict=$(awk -v r="$max_predict" 'BEGIN {printf "%.0f", r/2}')
half_batches=$(awk -v r="$max_batches" 'BEGIN {printf "%.1f", r/2}')
echo "maximum of the mix: $max_predict predicts/s and $max_batches batches/s ($(awk -v r="$max_batches" -v b="$BATCH" 'BEGIN {printf "%.0f", r*b}') examples/s)"
echo "soak at half: $half_predict predicts/s, $half_batches batches/s, for ${SOAK_S}s"

start_server "$work/soak"
./target/release/examples/soak_client 127.0.0.1:$PORT "$SOAK_S" "$half_predict" "$half_batches" \
  "$work/predict.json" "$work/feedback.json" 10 > "$work/windows" &
client=$!; pids+=("$client")
: > "$work/rss"
while kill -0 "$client" 2>/dev/null; do
  awk '/^VmRSS/ {print $2}' "/proc/$server/status" >> "$work/rss"
  sleep 10
done
wait "$client"
stop_server

echo "== every 10 s: window, RSS (MB), predicts, p50 (us), p99 (us), predict errors, batches, 202, 429, other"
tail -n +2 "$work/windows" | paste - <(awk '{printf "%.1f\n", $1/1024}' "$work/rss" | head -n "$(($(wc -l < "$work/windows") - 1))") \
  | awk -F'\t' '{printf "%5ss  rss %7s  n %6s  p50 %6s  p99 %7s  perr %s  batches %s  202 %s  429 %s  err %s  missed %s\n", $1, $11, $2, $3, $4, $5, $6, $7, $8, $9, $10}'
python3 - "$work/windows" "$work/rss" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
rss = [int(x) / 1024 for x in open(sys.argv[2]).read().split()]
p99 = [int(r[3]) for r in rows if int(r[1]) > 0]
errors = sum(int(r[4]) + int(r[8]) for r in rows)
first, last = slice(0, 6), slice(-6, None)
r0, r1 = statistics.median(rss[first]), statistics.median(rss[last])
p0, p1 = statistics.median(p99[first]), statistics.median(p99[last])
print(f"RSS: first minute median {r0:.0f} MB, last minute {r1:.0f} MB, max {max(rss):.0f} MB ({'flat' if r1 <= r0 * 1.1 else 'GROWING'})")
print(f"predict p99: first minute median {p0/1000:.2f} ms, last minute {p1/1000:.2f} ms, max {max(p99)/1000:.2f} ms ({'flat' if p1 <= 2 * p0 else 'RISING'})")
print(f"errors (non-2xx other than 429): {errors}")
PY
