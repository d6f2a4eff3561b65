#!/usr/bin/env bash
# The mlp family against eddy's linear model and River, side by side, in one go.
#
# 1. quality: one prequential pass at default settings (`eddy eval
#    --prequential`, minibatch 1) of eddy linear and eddy mlp, and River's
#    LR (+StandardScaler), ARF and HAT (benches/peers/nonlinear_peers.py), on
#    the repo streams (tests/data) and River's synthetic streams at fixed
#    seeds, written to a temp dir (sizes in the python script's doc).
# 2. learning rate: `eddy train` on Elec2 four times over (181,248 rows, no
#    shuffle), its learning phase alone (apart from reading and the snapshot
#    write), ROUNDS runs each of linear and mlp, medians.
# 3. HTTP: one server with a linear and an mlp model on the same Elec2
#    features; predict p99 of each (wrk -t2 -c$CONNS -d$DURATION, one Elec2
#    row, alternating rounds), then feedback ingest into the mlp model with
#    the monitor on and, alternating, into a second mlp model with it off
#    (batches of 1000 Elec2 rows, wrk -c4): examples trained/s and their
#    ratio, the monitor's and gate's cost.
#
# Usage: benches/nonlinear.sh   (ROUNDS=3 DURATION=5s CONNS=16; PARTS=quality,train,http)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-16}
PARTS=${PARTS:-quality,train,http}
PORT=${PORT:-18191}

cargo build --release --quiet --bin eddy
eddy=./target/release/eddy
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

model_toml() { # name task family [classes]
  printf '[[models]]\nname = "%s"\ntask = "%s"\nfamily = "%s"\nclasses = [%s]\n' "$1" "$2" "$3" "${4:-}"
}

if [[ $PARTS == *quality* ]]; then
  python3 benches/peers/nonlinear_peers.py streams "$work"
  python3 benches/peers/nonlinear_peers.py peers "$work" 2>"$work/peers.log"
  classes='"brickface","cement","foliage","grass","path","sky","window"'
  echo "{" > "$work/eddy.json"; first=1
  for path in tests/data/{elec2,phishing,image_segments,trump_approval}.jsonl.gz "$work"/*.jsonl; do
    name=$(basename "$path"); name=${name%.jsonl.gz}; name=${name%.jsonl}
    case $name in image_segments) task=multiclass; cls=$classes; metric=accuracy ;;
                  trump_approval) task=regression; cls=""; metric=mae ;;
                  *) task=binary; cls=""; metric=accuracy ;; esac
    line="\"$name\": {"
    for family in linear mlp; do
      model_toml m "$task" "$family" "$cls" > "$work/$family.toml"
      v=$("$eddy" eval -c "$work/$family.toml" --model m --data "$path" --prequential --json 2>/dev/null \
          | python3 -c "import json,sys; print(json.load(sys.stdin)['$metric'])")
      line="$line\"$family\": $v,"
    done
    [[ $first == 1 ]] || echo "," >> "$work/eddy.json"; first=0
    echo -n "${line%,}}" >> "$work/eddy.json"
  done
  echo "}" >> "$work/eddy.json"
  echo "== quality: one prequential pass, default settings"
  python3 benches/peers/nonlinear_peers.py table "$work"
fi

if [[ $PARTS == *train* ]]; then
  echo "== eddy train: Elec2 x4 (181,248 rows), --shuffle-buffer 0, learning phase alone, $ROUNDS rounds"
  gzip -dc tests/data/elec2.jsonl.gz > "$work/e1.jsonl"
  cat "$work/e1.jsonl" "$work/e1.jsonl" "$work/e1.jsonl" "$work/e1.jsonl" > "$work/elec2x4.jsonl"
  declare -A rates
  for r in $(seq "$ROUNDS"); do
    for family in linear mlp; do
      { printf '[storage]\ndir = "%s/train-%s-%s"\n' "$work" "$family" "$r"; model_toml m binary "$family"; } > "$work/t.toml"
      out=$("$eddy" train -c "$work/t.toml" --model m --data "$work/elec2x4.jsonl" --shuffle-buffer 0 --json 2>/dev/null)
      rate=$(echo "$out" | python3 -c "import json,sys; print(round(json.load(sys.stdin)['trained']['learning_rows_per_second']))")
      write=$(echo "$out" | python3 -c "import json,sys; print(round(json.load(sys.stdin)['snapshot_write_seconds'], 3))")
      bytes=$(stat -c %s "$work/train-$family-$r"/m/*.eddy)
      echo "round $r, $family: learning $rate rows/s; snapshot write $write s, $bytes bytes"
      rates[$family]+="$rate "
    done
  done
  for family in linear mlp; do
    echo "median $family: $(printf '%s\n' ${rates[$family]} | median) rows/s learning"
  done
fi

if [[ $PARTS == *http* ]]; then
  command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
  python3 - "$work" <<'PY'
import gzip, json, sys
rows = [json.loads(l) for l in gzip.open("tests/data/elec2.jsonl.gz", "rt")]
json.dump({"features": rows[100]["features"]}, open(f"{sys.argv[1]}/predict.json", "w"))
json.dump({"examples": rows[:1000]}, open(f"{sys.argv[1]}/feedback.json", "w"))
PY
  { model_toml lin binary linear; model_toml net binary mlp;
    model_toml netoff binary mlp; printf '[models.monitor]\nenabled = false\n'; } > "$work/serve.toml"
  EDDY_SERVER__LISTEN=127.0.0.1:$PORT EDDY_ADMIN__LISTEN=127.0.0.1:0 EDDY_STORAGE__DIR=$work/data EDDY_LOG__LEVEL=warn \
    "$eddy" serve -c "$work/serve.toml" & pids+=($!)
  for _ in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$PORT/healthz && break; sleep 0.1; done
  # Both models learn the same 10,000 rows first, so predict reads trained weights.
  for i in $(seq 10); do curl -s -o /dev/null -X POST -H 'Content-Type: application/json' --data-binary @"$work/feedback.json" 127.0.0.1:$PORT/v1/models/lin/feedback; \
                         curl -s -o /dev/null -X POST -H 'Content-Type: application/json' --data-binary @"$work/feedback.json" 127.0.0.1:$PORT/v1/models/net/feedback; done
  echo "== predict p99: wrk -t2 -c$CONNS -d$DURATION, $ROUNDS alternating rounds"
  lin_p=(); net_p=(); ratios=()
  for r in $(seq "$ROUNDS"); do
    for m in lin net; do
      BODY=$work/predict.json wrk -t2 -c"$CONNS" -d"$DURATION" -s benches/wrk/post.lua \
        http://127.0.0.1:$PORT/v1/models/$m/predict > "$work/$m.$r"
      grep -q "Non-2xx" "$work/$m.$r" && { echo "errors:"; cat "$work/$m.$r"; exit 1; }
    done
    l=$(awk '/latency_p99_us/ {print $2}' "$work/lin.$r"); n=$(awk '/latency_p99_us/ {print $2}' "$work/net.$r")
    echo "round $r: p99 linear $l us, mlp $n us ($(awk '/^Requests\/sec/ {print $2}' "$work/lin.$r") and $(awk '/^Requests\/sec/ {print $2}' "$work/net.$r") req/s)"
    lin_p+=("$l"); net_p+=("$n"); ratios+=("$(awk -v a="$n" -v b="$l" 'BEGIN {printf "%.3f", a/b}')")
  done
  echo "median p99: linear $(printf '%s\n' "${lin_p[@]}" | median) us, mlp $(printf '%s\n' "${net_p[@]}" | median) us, median of per-round ratios (mlp/linear) $(printf '%s\n' "${ratios[@]}" | median)"
  echo "== feedback ingest into the mlp model, monitor on (net) and off (netoff): batches of 1000, wrk -t2 -c4 -d$DURATION, $ROUNDS alternating rounds"
  trained() { curl -s 127.0.0.1:$PORT/v1/models/$1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["examples_trained"])'; }
  runs=(); offs=(); costs=()
  for r in $(seq "$ROUNDS"); do
    for m in net netoff; do
      before=$(trained $m); t0=$(date +%s.%N)
      BODY=$work/feedback.json wrk -t2 -c4 -d"$DURATION" -s benches/wrk/post.lua http://127.0.0.1:$PORT/v1/models/$m/feedback > "$work/fb.$m.$r"
      # Drain: wait until the trainer has caught up with what was accepted.
      for _ in $(seq 200); do a=$(trained $m); sleep 0.05; [[ $(trained $m) == "$a" ]] && break; done
      after=$(trained $m); t1=$(date +%s.%N)
      rate=$(awk -v a="$before" -v b="$after" -v s="$t0" -v e="$t1" 'BEGIN {printf "%.0f", (b-a)/(e-s)}')
      echo "round $r, $m: $rate examples/s trained ($(awk '/Non-2xx/ {print $5}' "$work/fb.$m.$r") refused)"
      if [[ $m == net ]]; then on=$rate; runs+=("$rate"); else offs+=("$rate"); costs+=("$(awk -v a="$on" -v b="$rate" 'BEGIN {printf "%.3f", a/b}')"); fi
    done
  done
  echo "median off: $(printf '%s\n' "${offs[@]}" | median) examples/s; median of per-round ratios on/off (the monitor's and gate's cost) $(printf '%s\n' "${costs[@]}" | median)"
  echo "median: $(printf '%s\n' "${runs[@]}" | median) examples/s trained into the mlp model, monitor on"
fi
