#!/usr/bin/env bash
# Batch training benchmarks, all local files under a temp dir:
#
# 1. Throughput: `eddy train` on Elec2 repeated 20 times (~906k rows, CSV)
#    against the Vowpal Wabbit command-line learner on the same rows
#    (`python -m vowpalwabbit`, logistic loss), ROUNDS alternating runs;
#    medians, then both models' accuracy and log loss on the original
#    Elec2 rows (eddy's as a median over SEEDS shuffle seeds), beside the
#    full-batch optimum (scipy L-BFGS).
# 2. Memory: peak RSS of `eddy train` on generated CSVs of two sizes
#    (SMALL_MB and LARGE_MB, Elec2 rows repeated), from /usr/bin/time.
# 3. Quality: several epochs on the first half of Elec2, evaluated on the
#    second half, beside one-pass prequential figures over the stream.
#
# Usage: benches/batch.sh   (ROUNDS=3 SEEDS=15 SMALL_MB=200 LARGE_MB=2048
#                            PARTS="throughput memory quality")
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SEEDS=${SEEDS:-15}
SMALL_MB=${SMALL_MB:-200}
LARGE_MB=${LARGE_MB:-2048}
PARTS=${PARTS:-throughput memory quality}
want() { [[ " $PARTS " == *" $1 "* ]]; }

python3 -c 'import vowpalwabbit' 2>/dev/null || pip install -q vowpalwabbit
python3 -c 'import scipy' 2>/dev/null || pip install -q scipy
cargo build --release --quiet --bin eddy
EDDY=$PWD/target/release/eddy
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export EDDY_STORAGE__DIR=$work/data EDDY_LOG__LEVEL=warn

python3 - "$work" <<'PY'
import gzip, json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in gzip.open("tests/data/elec2.jsonl.gz", "rt")]
names = list(rows[0]["features"])
def csv_line(r):
    return ",".join(str(r["features"][n]) for n in names) + f",{r['label']}\n"
def vw_line(r):
    feats = " ".join(f"{n}:{r['features'][n]}" for n in names)
    return f"{1 if r['label'] else -1} |f {feats}\n"
header = ",".join(names) + ",label\n"
half = len(rows) // 2
for name, part, times in [("elec2", rows, 1), ("elec2x20", rows, 20), ("first", rows[:half], 1), ("second", rows[half:], 1)]:
    with open(f"{out}/{name}.csv", "w") as f:
        f.write(header)
        for _ in range(times):
            f.writelines(csv_line(r) for r in part)
    with open(f"{out}/{name}.vw", "w") as f:
        for _ in range(times):
            f.writelines(vw_line(r) for r in part)
with open(f"{out}/elec2.labels", "w") as f:
    f.writelines(f"{r['label']}\n" for r in rows)
PY
rows=$(($(wc -l < "$work/elec2x20.csv") - 1))
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

if want throughput; then
echo "== throughput: $rows rows (Elec2 x 20), $ROUNDS alternating runs"
# Each eddy run uses its own shuffle seed; VW is deterministic.
eddy_runs=(); vw_runs=()
fig() { "$EDDY" eval --model demo --snapshot "$1" --data "$2" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["accuracy"],4), round(d["log_loss"],4))'; }
for r in $(seq "$ROUNDS"); do
  rm -rf "$work/eddy-model"
  t0=$(date +%s.%N)
  "$EDDY" train --model demo --data "$work/elec2x20.csv" --seed "$r" --out "$work/eddy-model" > /dev/null
  t1=$(date +%s.%N)
  python3 -m vowpalwabbit -d "$work/elec2x20.vw" --loss_function logistic -f "$work/vw.model" --quiet
  t2=$(date +%s.%N)
  e=$(awk -v a="$t0" -v b="$t1" -v n="$rows" 'BEGIN {printf "%.0f", n/(b-a)}')
  v=$(awk -v a="$t1" -v b="$t2" -v n="$rows" 'BEGIN {printf "%.0f", n/(b-a)}')
  echo "run $r: eddy train $e rows/s, vw $v rows/s (wall clock, process start included)"
  eddy_runs+=("$e"); vw_runs+=("$v")
done
em=$(printf '%s\n' "${eddy_runs[@]}" | median); vm=$(printf '%s\n' "${vw_runs[@]}" | median)
per_round=$(for i in "${!eddy_runs[@]}"; do awk -v a="${eddy_runs[$i]}" -v b="${vw_runs[$i]}" 'BEGIN {printf "%.2f\n", a/b}'; done | median)
echo "median: eddy $em rows/s, vw $vm rows/s, ratio $(awk -v a="$em" -v b="$vm" 'BEGIN {printf "%.2f", a/b}') (median of per-round ratios $per_round)"
rm -rf "$work/eddy-file-order"
"$EDDY" train --model demo --data "$work/elec2x20.csv" --shuffle-buffer 0 --out "$work/eddy-file-order" > /dev/null
python3 -m vowpalwabbit -t -i "$work/vw.model" -d "$work/elec2.vw" -p "$work/vw.preds" --quiet
vw_fig=$(python3 - "$work" <<'PY2'
import math, sys
w = sys.argv[1]
preds = [float(l.split()[0]) for l in open(f"{w}/vw.preds")]
labels = [int(l) for l in open(f"{w}/elec2.labels")]
acc = sum((p > 0) == (y == 1) for p, y in zip(preds, labels)) / len(labels)
# VW's raw score is the logit: log loss = log(1 + e^z) - y z, computed stably.
loss = sum(max(p, 0) + math.log1p(math.exp(-abs(p))) - y * p for p, y in zip(preds, labels)) / len(labels)
print(round(acc, 4), round(loss, 4))
PY2
)
# The full-batch optimum of the same model (logistic regression on the
# standardised features, with an intercept): what both learners approach.
optimum=$(python3 - "$work" <<'PY2'
import sys
import numpy as np
from scipy.optimize import minimize
d = np.loadtxt(f"{sys.argv[1]}/elec2.csv", delimiter=",", skiprows=1)
X, y = d[:, :-1], d[:, -1]
X = np.hstack([(X - X.mean(0)) / X.std(0), np.ones((len(X), 1))])
def f(w):
    z = X @ w
    return np.mean(np.logaddexp(0, z) - y * z), X.T @ (1 / (1 + np.exp(-z)) - y) / len(y)
r = minimize(f, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B")
print(round(float(((X @ r.x > 0) == y).mean()), 4), round(float(r.fun), 4))
PY2
)
# eddy's figures depend on the shuffle seed: a median over SEEDS of them,
# and how many seeds reach VW's accuracy.
eddy_acc=(); eddy_loss=()
for seed in $(seq 0 $((SEEDS - 1))); do
  rm -rf "$work/eddy-seed"
  "$EDDY" train --model demo --data "$work/elec2x20.csv" --seed "$seed" --out "$work/eddy-seed" > /dev/null
  read -r acc loss < <(fig "$work/eddy-seed" "$work/elec2.csv")
  eddy_acc+=("$acc"); eddy_loss+=("$loss")
done
vw_acc=${vw_fig%% *}
reach=$(printf '%s\n' "${eddy_acc[@]}" | awk -v v="$vw_acc" '$1 >= v {n++} END {print n + 0}')
echo "on the 45,312 Elec2 rows after one pass over Elec2 x 20 (accuracy, log loss):"
echo "  eddy, default shuffle buffer, median over $SEEDS seeds: $(printf '%s\n' "${eddy_acc[@]}" | median) $(printf '%s\n' "${eddy_loss[@]}" | median) (accuracy $(printf '%s\n' "${eddy_acc[@]}" | sort -g | head -1)-$(printf '%s\n' "${eddy_acc[@]}" | sort -g | tail -1); $reach of $SEEDS seeds at or above VW's)"
echo "  eddy, file order (--shuffle-buffer 0): $(fig "$work/eddy-file-order" "$work/elec2.csv")"
echo "  vw: $vw_fig"
echo "  full-batch optimum of logistic regression: $optimum"

fi

if want memory; then
echo "== memory: peak RSS of eddy train by file size"
for mb in "$SMALL_MB" "$LARGE_MB"; do
  f=$work/gen-$mb.csv
  head -1 "$work/elec2.csv" > "$f"
  body=$work/elec2.body; tail -n +2 "$work/elec2.csv" > "$body"
  while [ "$(stat -c %s "$f")" -lt $((mb * 1024 * 1024)) ]; do cat "$body" >> "$f"; done
  n=$(($(wc -l < "$f") - 1))
  rss=$( { /usr/bin/time -f "%M" "$EDDY" train --model demo --data "$f" --out "$work/mem-$mb" > /dev/null; } 2>&1 | tail -1)
  echo "$(du -m "$f" | cut -f1) MB CSV, $n rows: peak RSS $((rss / 1024)) MB"
  rm -f "$f"
done

fi

if want quality; then
echo "== quality: batch on the first half of Elec2, evaluated on the second half"
for epochs in 1 3 10; do
  "$EDDY" train --model demo --data "$work/first.csv" --epochs "$epochs" --shuffle-buffer 0 --out "$work/q-$epochs" > /dev/null
  a=$("$EDDY" eval --model demo --snapshot "$work/q-$epochs" --data "$work/second.csv" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["accuracy"],4), round(d["log_loss"],4))')
  s=$("$EDDY" train --model demo --data "$work/first.csv" --epochs "$epochs" --out "$work/qs-$epochs" > /dev/null; \
      "$EDDY" eval --model demo --snapshot "$work/qs-$epochs" --data "$work/second.csv" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["accuracy"],4), round(d["log_loss"],4))')
  echo "epochs $epochs: second-half accuracy, log loss $a (file order), $s (the default shuffle buffer)"
done
p=$(EDDY_STORAGE__DIR=$work/empty "$EDDY" eval --model demo --data "$work/second.csv" --prequential --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["accuracy"],4), round(d["log_loss"],4))')
pa=$("$EDDY" eval --model demo --snapshot "$work/q-1" --data "$work/second.csv" --prequential --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["accuracy"],4), round(d["log_loss"],4))')
full=$(EDDY_STORAGE__DIR=$work/empty "$EDDY" eval --model demo --data "$work/elec2.csv" --prequential --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["accuracy"],4), round(d["log_loss"],4))')
echo "prequential on the second half from a fresh model: $p; from the 1-epoch batch model: $pa; over the whole stream: $full"
fi
