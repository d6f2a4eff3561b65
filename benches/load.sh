#!/usr/bin/env bash
# Load test on 127.0.0.1 only, bounded in time (ROUNDS x DURATION per test).
#
# 1. predict throughput: eddy's POST /v1/models/demo/predict (one Elec2
#    row) against a no-op axum handler (examples/noop_server.rs), same wrk
#    threads and connections, alternating ROUNDS times; medians and ratio.
# 2. feedback ingest: POST /v1/models/demo/feedback with batches of 1000
#    Elec2 rows; the rate is examples *trained* during the run (read from
#    GET /v1/models/demo), not just accepted.
# 3. the monitor's cost: the same ingest against a second server whose
#    model has [models.monitor] enabled = false, alternating rounds with
#    the first (monitor on: shadow scoring, the gate); medians and ratio.
#
# SKIP_PREDICT=1 runs only the ingest parts.
# Usage: benches/load.sh            (DURATION=10s CONNS=64 ROUNDS=3)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
FEEDBACK_CONNS=${FEEDBACK_CONNS:-4}
EDDY_PORT=${EDDY_PORT:-18181}
NOOP_PORT=${NOOP_PORT:-18182}
OFF_PORT=${OFF_PORT:-18183}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin eddy --example noop_server

work=$(mktemp -d)
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
pids=()
trap cleanup EXIT

python3 - "$work" <<'PY'
import gzip, json, sys
rows = [json.loads(l) for l in gzip.open("tests/data/elec2.jsonl.gz", "rt")]
out = sys.argv[1]
json.dump({"features": rows[100]["features"]}, open(f"{out}/predict.json", "w"))
json.dump({"examples": rows[:1000]}, open(f"{out}/feedback.json", "w"))
PY

EDDY_SERVER__LISTEN=127.0.0.1:$EDDY_PORT EDDY_ADMIN__LISTEN=127.0.0.1:0 EDDY_STORAGE__DIR=$work/data EDDY_LOG__LEVEL=warn \
  ./target/release/eddy serve & pids+=($!)
./target/release/examples/noop_server 127.0.0.1:$NOOP_PORT 2>/dev/null & pids+=($!)
EDDY_SERVER__LISTEN=127.0.0.1:$OFF_PORT EDDY_ADMIN__LISTEN=127.0.0.1:0 EDDY_STORAGE__DIR=$work/data-off EDDY_LOG__LEVEL=warn \
  EDDY_MODELS__DEMO__MONITOR__ENABLED=false ./target/release/eddy serve & pids+=($!)
for port in $EDDY_PORT $NOOP_PORT $OFF_PORT; do
  for _ in $(seq 100); do curl -s -o /dev/null -X POST -d '{}' 127.0.0.1:$port/ && break; sleep 0.1; done
done

rps() { awk '/^Requests\/sec/ {print $2}'; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

if [ -z "${SKIP_PREDICT:-}" ]; then
echo "== predict vs no-op: wrk -t2 -c$CONNS -d$DURATION, $ROUNDS alternating rounds"
eddy_runs=(); noop_runs=(); ratios=()
for r in $(seq "$ROUNDS"); do
  e=$(BODY=$work/predict.json wrk -t2 -c"$CONNS" -d"$DURATION" -s benches/wrk/post.lua \
        http://127.0.0.1:$EDDY_PORT/v1/models/demo/predict | tee "$work/eddy.$r" | rps)
  n=$(BODY=$work/predict.json wrk -t2 -c"$CONNS" -d"$DURATION" -s benches/wrk/post.lua \
        http://127.0.0.1:$NOOP_PORT/noop | tee "$work/noop.$r" | rps)
  grep -q "Non-2xx" "$work/eddy.$r" && { echo "eddy answered errors:"; cat "$work/eddy.$r"; exit 1; }
  echo "round $r: eddy predict $e req/s, no-op $n req/s (eddy p99 $(awk '/latency_p99_us/ {print $2}' "$work/eddy.$r") us)"
  eddy_runs+=("$e"); noop_runs+=("$n")
  ratios+=("$(awk -v a="$e" -v b="$n" 'BEGIN {printf "%.3f", a/b}')")
done
em=$(printf '%s\n' "${eddy_runs[@]}" | median)
nm=$(printf '%s\n' "${noop_runs[@]}" | median)
echo "median: eddy predict $em req/s, no-op $nm req/s, ratio of medians $(awk -v a="$em" -v b="$nm" 'BEGIN {printf "%.2f", a/b}')"
# Each round's pair runs back to back, so its ratio sees the same machine
# load; the median of those ratios is the steadier figure on a noisy host.
echo "median of per-round ratios: $(printf '%s\n' "${ratios[@]}" | median)"
fi

echo "== feedback ingest: batches of 1000, wrk -t2 -c$FEEDBACK_CONNS -d$DURATION, $ROUNDS alternating rounds, monitor on vs off"
trained() { curl -s 127.0.0.1:$1/v1/models/demo | python3 -c 'import json,sys; print(json.load(sys.stdin)["examples_trained"])'; }
ingest() {
  local port=$1 tag=$2 r=$3 before after t0 t1 rate refused
  before=$(trained "$port"); t0=$(date +%s.%N)
  BODY=$work/feedback.json wrk -t2 -c"$FEEDBACK_CONNS" -d"$DURATION" -s benches/wrk/post.lua \
    http://127.0.0.1:$port/v1/models/demo/feedback > "$work/fb.$tag.$r"
  after=$(trained "$port"); t1=$(date +%s.%N)
  rate=$(awk -v a="$before" -v b="$after" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.0f", (b-a)/(e-s)}')
  refused=$(awk '/Non-2xx/ {print $5}' "$work/fb.$tag.$r"); refused=${refused:-0}
  echo "round $r, monitor $tag: $rate examples/s trained ($(rps < "$work/fb.$tag.$r") batches/s sent, $refused refused with 429)" >&2
  echo "$rate"
}
on_runs=(); off_runs=(); iratios=()
for r in $(seq "$ROUNDS"); do
  on=$(ingest $EDDY_PORT on "$r"); off=$(ingest $OFF_PORT off "$r")
  on_runs+=("$on"); off_runs+=("$off")
  iratios+=("$(awk -v a="$on" -v b="$off" 'BEGIN {printf "%.3f", a/b}')")
done
onm=$(printf '%s\n' "${on_runs[@]}" | median); offm=$(printf '%s\n' "${off_runs[@]}" | median)
echo "median: monitor on $onm examples/s trained, monitor off $offm, ratio of medians $(awk -v a="$onm" -v b="$offm" 'BEGIN {printf "%.2f", a/b}'), median of per-round ratios $(printf '%s\n' "${iratios[@]}" | median)"
