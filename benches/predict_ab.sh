#!/usr/bin/env bash
# Predict latency and throughput of two eddy binaries on 127.0.0.1 only,
# alternating rounds so both see the same machine load (bounded: ROUNDS x
# 2 x DURATION). For changes on the request path: build the base binary
# from the other commit first and pass its path.
#
# Usage: benches/predict_ab.sh BASE_BIN [NEW_BIN]
#        (default NEW_BIN ./target/release/eddy; DURATION=10s CONNS=64 ROUNDS=5)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_BIN=$1
NEW_BIN=${2:-./target/release/eddy}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-5}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
python3 - "$work" <<'PY'
import gzip, json, sys
rows = [json.loads(l) for l in gzip.open("tests/data/elec2.jsonl.gz", "rt")]
json.dump({"features": rows[100]["features"]}, open(f"{sys.argv[1]}/predict.json", "w"))
PY
start() { # bin port dir
  EDDY_SERVER__LISTEN=127.0.0.1:$2 EDDY_ADMIN__LISTEN=127.0.0.1:0 EDDY_STORAGE__DIR=$3 EDDY_LOG__LEVEL=warn \
    "$1" serve & pids+=($!)
  for _ in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$2/readyz && return; sleep 0.1; done
}
start "$BASE_BIN" 18171 "$work/base"
start "$NEW_BIN" 18172 "$work/new"
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
run() { # port tag round
  BODY=$work/predict.json wrk -t2 -c"$CONNS" -d"$DURATION" -s benches/wrk/post.lua \
    http://127.0.0.1:$1/v1/models/demo/predict >"$work/$2.$3"
  grep -q "Non-2xx" "$work/$2.$3" && { echo "$2 answered errors"; cat "$work/$2.$3"; exit 1; }
  awk -v t="$2" '/^Requests\/sec/ {r=$2} /latency_p50_us/ {p50=$2} /latency_p99_us/ {p99=$2}
    END {printf "%s %s %s %s\n", t, r, p50, p99}' "$work/$2.$3"
}
echo "== predict: wrk -t2 -c$CONNS -d$DURATION, $ROUNDS alternating rounds (req/s, p50 us, p99 us)"
for r in $(seq "$ROUNDS"); do
  run 18171 base "$r"; run 18172 new "$r"
done | tee "$work/all"
for t in base new; do
  printf '%s: median %s req/s, p50 %s us, p99 %s us\n' "$t" \
    "$(awk -v t=$t '$1==t {print $2}' "$work/all" | median)" \
    "$(awk -v t=$t '$1==t {print $3}' "$work/all" | median)" \
    "$(awk -v t=$t '$1==t {print $4}' "$work/all" | median)"
done
