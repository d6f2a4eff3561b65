#!/usr/bin/env bash
# Predict latency under feedback overload, on 127.0.0.1 only, bounded in
# time (every wrk run has -d, every wait a deadline); servers are stopped by
# their PIDs.
#
# Per round and per server, back to back:
#   idle:     predict alone: wrk -t1 -c$CONNS -d$DURATION, one Elec2 row;
#   overload: the same predict load while a separate process (a second
#             wrk, -t$FEEDBACK_THREADS -c$FEEDBACK_CONNS) posts batches of
#             1,000 Elec2 rows as fast as it can, ignoring Retry-After.
# Reports predict p50/p99 for both, side by side, and the feedback answers
# during the overload phase (202s as examples accepted/s, 429s, and how
# many 429s carried Retry-After). ROUNDS rounds, the servers alternating;
# medians at the end, with the target
#   overload p99 <= max(2 x idle p99, idle p99 + 2 ms).
#
# BASE_BIN=path/to/eddy adds a second server (e.g. main's release build) to
# the same run, so "before" and "after" share the machine's state. Each
# server gets its own fresh storage directory.
#
# Usage: benches/overload.sh   (ROUNDS=5 DURATION=10s CONNS=4
#        FEEDBACK_CONNS=8 FEEDBACK_THREADS=2 PORT=18381 BASE_PORT=18383
#        BASE_BIN=; extra EDDY_* variables reach both servers)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
DURATION=${DURATION%s}
CONNS=${CONNS:-4}
FEEDBACK_CONNS=${FEEDBACK_CONNS:-8}
FEEDBACK_THREADS=${FEEDBACK_THREADS:-2}
PORT=${PORT:-18381}
BASE_PORT=${BASE_PORT:-18383}
BASE_BIN=${BASE_BIN:-}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-60}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin eddy
target=${CARGO_TARGET_DIR:-target}; [[ $target == /* ]] || target=$PWD/$target
EDDY=$target/release/eddy

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 - "$work" <<'PY'
import gzip, json, sys
rows = [json.loads(l) for l in gzip.open("tests/data/elec2.jsonl.gz", "rt")]
out = sys.argv[1]
json.dump({"features": rows[100]["features"]}, open(f"{out}/predict.json", "w"))
json.dump({"examples": rows[:1000]}, open(f"{out}/feedback.json", "w"))
PY

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# start NAME BIN PORT: starts a server on a fresh directory, waits for /readyz.
start() {
  local name=$1 bin=$2 port=$3 end
  for url in "127.0.0.1:$port" "127.0.0.1:$((port + 1))"; do
    if curl -s -o /dev/null --max-time 1 "http://$url/"; then
      echo "something already listens on $url; set PORT / BASE_PORT" >&2; exit 1
    fi
  done
  EDDY_SERVER__LISTEN=127.0.0.1:$port EDDY_ADMIN__LISTEN=127.0.0.1:$((port + 1)) \
    EDDY_STORAGE__DIR="$work/data-$name" EDDY_LOG__LEVEL=warn \
    "$bin" serve >"$work/$name.log" 2>&1 &
  pids+=($!)
  end=$(($(now_ms) + READY_TIMEOUT_S * 1000))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/readyz")" = 200 ]; do
    if [ "$(now_ms)" -gt "$end" ]; then echo "$name did not become ready; its log:" >&2; cat "$work/$name.log" >&2; exit 1; fi
    sleep 0.05
  done
}

names=(after); bins=("$EDDY"); ports=("$PORT")
if [ -n "$BASE_BIN" ]; then names+=(before); bins+=("$BASE_BIN"); ports+=("$BASE_PORT"); fi
for i in "${!names[@]}"; do start "${names[$i]}" "${bins[$i]}" "${ports[$i]}"; done

field() { awk -v k="$1" '$1 == k {print $2}' "$2"; }
# predict PORT OUT: one predict run; fails on any non-2xx answer.
predict() {
  BODY=$work/predict.json wrk -t1 -c"$CONNS" -d"${DURATION}s" -s benches/wrk/post.lua \
    "http://127.0.0.1:$1/v1/models/demo/predict" >"$2"
  if grep -q "Non-2xx" "$2"; then echo "predict answered errors:" >&2; cat "$2" >&2; exit 1; fi
}

echo "== predict p50/p99 idle vs under feedback overload: predict wrk -t1 -c$CONNS -d${DURATION}s;"
echo "   feedback (separate process) wrk -t$FEEDBACK_THREADS -c$FEEDBACK_CONNS, batches of 1000, ignoring Retry-After; $ROUNDS rounds"
printf '%-7s %-6s %10s %10s %12s %12s %14s %8s %8s\n' round server idle_p50 idle_p99 overload_p50 overload_p99 accepted_ex/s 429s retry_after
for r in $(seq "$ROUNDS"); do
  for i in "${!names[@]}"; do
    name=${names[$i]} port=${ports[$i]}
    predict "$port" "$work/idle.$name.$r"
    # The feedback load starts first and outlasts the predict run.
    BODY=$work/feedback.json wrk -t"$FEEDBACK_THREADS" -c"$FEEDBACK_CONNS" -d"$((DURATION + 2))s" \
      -s benches/wrk/statuses.lua "http://127.0.0.1:$port/v1/models/demo/feedback" >"$work/fb.$name.$r" &
    fb=$!; pids+=("$fb")
    sleep 1
    predict "$port" "$work/load.$name.$r"
    wait "$fb"
    f=$work/fb.$name.$r
    ok=$(awk '$1 == "status" && $2 == 202 {print $3}' "$f"); ok=${ok:-0}
    refused=$(awk '$1 == "status" && $2 == 429 {print $3}' "$f"); refused=${refused:-0}
    other=$(awk '$1 == "status" && $2 != 202 && $2 != 429 {n += $3} END {print n + 0}' "$f")
    if [ "$other" -gt 0 ]; then echo "feedback got $other answers other than 202/429:" >&2; cat "$f" >&2; fi
    rate=$(awk -v n="$ok" -v d="$((DURATION + 2))" 'BEGIN {printf "%.0f", n * 1000 / d}')
    ip50=$(field latency_p50_us "$work/idle.$name.$r"); ip99=$(field latency_p99_us "$work/idle.$name.$r")
    lp50=$(field latency_p50_us "$work/load.$name.$r"); lp99=$(field latency_p99_us "$work/load.$name.$r")
    printf '%-7s %-6s %8dus %8dus %10dus %10dus %14s %8s %8s\n' "$r" "$name" "$ip50" "$ip99" "$lp50" "$lp99" "$rate" "$refused" "$(field retry_after_429 "$f")"
    echo "$name $ip50 $ip99 $lp50 $lp99 $rate $refused" >>"$work/rows"
  done
done

echo "== medians of $ROUNDS rounds"
for name in "${names[@]}"; do
  col() { awk -v n="$name" -v c="$1" '$1 == n {print $c}' "$work/rows" | median; }
  ip50=$(col 2) ip99=$(col 3) lp50=$(col 4) lp99=$(col 5) rate=$(col 6) refused=$(col 7)
  bound=$(awk -v p="$ip99" 'BEGIN {b = 2 * p; if (p + 2000 > b) b = p + 2000; print b}')
  verdict=$(awk -v l="$lp99" -v b="$bound" 'BEGIN {print (l <= b ? "within" : "OVER")}')
  echo "$name: predict idle p50 ${ip50} us, p99 ${ip99} us | under overload p50 ${lp50} us, p99 ${lp99} us ($verdict the bound of ${bound} us) | feedback ${rate} examples/s accepted, ${refused} refused (429) per run"
done
for i in "${!names[@]}"; do
  if grep -qE ' (WARN|ERROR) ' "$work/${names[$i]}.log"; then
    echo "note: ${names[$i]} logged warnings/errors, first ones:"; grep -E ' (WARN|ERROR) ' "$work/${names[$i]}.log" | head -3
  fi
done
