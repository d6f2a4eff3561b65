#!/usr/bin/env bash
# Durability benchmarks for the feedback log, on 127.0.0.1 only, bounded in
# time (every wrk run has -d, every wait has a deadline). Each measured
# server starts on a fresh storage dir and is stopped by its PID.
#
# 1. ingest: POST /v1/models/demo/feedback, batches of 1000 Elec2 rows,
#    wrk -c$FEEDBACK_CONNS; examples/s *accepted* (202s x 1000 / s, from
#    wrk's Requests/sec and its non-2xx count) and *trained* (from
#    examples_trained, as load.sh does) with `[storage] wal = false` and
#    with `fsync = "interval"` (the default), ROUNDS alternating rounds;
#    medians and the ratio interval / wal-off (target >= 0.85).
# 2. always: the same load with `fsync = "always"`, in the same alternation;
#    plus the fdatasync latency of the storage dir's file system (append
#    4 KiB + fdatasync, FSYNC_SAMPLES times; p50, p99). Target:
#    0.8 x min(interval rate, 4000 / fdatasync p50 in s).
# 3. single: one example per request from SINGLE_CONNS connections with
#    `always` and with `interval`; requests/s and p99 latency (wrk --latency).
# 4. recovery: RECOVERY_EXAMPLES examples (batches of 1000) into a fresh
#    server that writes no snapshot (periodic and promotion snapshot
#    intervals set to a day), wait until all are trained, SIGKILL, then
#    ROUNDS times: restart on the same dir, time process start -> /readyz
#    200 (polled every 10 ms) and read the replay's own time from the log
#    line "replayed the feedback log" (JSON logs); SIGKILL again. Each
#    restart replays the same log (checked by its `examples` field).
#    Target: replay < 2 s.
# 5. guard (not in the default PARTS): the ingest load of 1. with the
#    ingestion guard on (the default) and off, batches whose examples come
#    from four sources in turn; the ratio on / off of examples accepted and
#    trained per second (target >= 0.75, issue 12).
# 6. callgrind (not in the default PARTS; needs valgrind): the release
#    server under `valgrind --tool=callgrind` with `wal = false` and with
#    `fsync = "interval"`, snapshots off; counters zeroed after a warm-up,
#    CG_BATCHES batches of 1000 sent one at a time, dumped once all are
#    trained: instructions per 1000 examples (whole process, user space
#    only) and their ratio. Immune to other load on the host, unlike the
#    rates; the kernel's share (writing and syncing the log) is not in it.
#
# Each ingest/single line also gives the server's CPU time (user + system,
# from /proc) per 1000 examples or per request: steadier than rates on a
# shared host. PARTS may add `never` (a diagnostic, not in the default):
# `fsync = "never"` joins the ingest rotation, separating the cost of
# writing the log from that of syncing it.
#
# Usage: benches/durability.sh   (PARTS=ingest,always,single,recovery
#        ROUNDS=3 DURATION=10s FEEDBACK_CONNS=4 SINGLE_CONNS=16
#        RECOVERY_EXAMPLES=1000000 CG_BATCHES=20 PORT=18281 ADMIN_PORT=PORT+1;
#        TMPDIR picks the disk)
set -euo pipefail
cd "$(dirname "$0")/.."

PARTS=${PARTS:-ingest,always,single,recovery}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
FEEDBACK_CONNS=${FEEDBACK_CONNS:-4}
SINGLE_CONNS=${SINGLE_CONNS:-16}
RECOVERY_EXAMPLES=${RECOVERY_EXAMPLES:-1000000}
FSYNC_SAMPLES=${FSYNC_SAMPLES:-200}
PORT=${PORT:-18281}
ADMIN_PORT=${ADMIN_PORT:-$((PORT + 1))}   # /metrics: answers by status
READY_TIMEOUT_S=${READY_TIMEOUT_S:-60}   # start-up, replay included
LOAD_TIMEOUT_S=${LOAD_TIMEOUT_S:-240}    # writing the recovery log
want() { [[ ",${PARTS// /,}," == *",$1,"* ]]; }

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin eddy
target=${CARGO_TARGET_DIR:-target}; [[ $target == /* ]] || target=$PWD/$target
EDDY=$target/release/eddy

work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then disown "$server" 2>/dev/null || true; kill -KILL "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

base=http://127.0.0.1:$PORT
admin=http://127.0.0.1:$ADMIN_PORT
for url in "$base" "$admin"; do
  if curl -s -o /dev/null --max-time 1 "$url/"; then
    echo "something already listens on ${url#http://}; set PORT / ADMIN_PORT" >&2; exit 1
  fi
done

python3 - "$work" <<'PY'
import gzip, json, sys
rows = [json.loads(l) for l in gzip.open("tests/data/elec2.jsonl.gz", "rt")]
out = sys.argv[1]
json.dump({"examples": rows[:1000]}, open(f"{out}/batch.json", "w"))
four = [dict(r, source=f"honest-{i % 4}") for i, r in enumerate(rows[:1000])]
json.dump({"examples": four}, open(f"{out}/batch4.json", "w"))
json.dump({"features": rows[100]["features"], "label": rows[100]["label"]}, open(f"{out}/single.json", "w"))
# Distinct batches for the recovery log, cycled.
with open(f"{out}/batches.jsonl", "w") as f:
    for i in range(len(rows) // 1000):
        f.write(json.dumps({"examples": rows[i * 1000:(i + 1) * 1000]}) + "\n")
PY

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0 ? a/b : 0)}'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# ready DEADLINE_S: polls /readyz every 10 ms until 200; fails if the
# server exits or the deadline passes.
ready() {
  local end=$(($(now_ms) + $1 * 1000))
  while [ "$(now_ms)" -lt "$end" ]; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$base/readyz")" = 200 ] && return 0
    kill -0 "$server" 2>/dev/null || return 1
    sleep 0.01
  done
  return 1
}

# start DIR LOG [VAR=value ...]: starts eddy on DIR (later VARs override
# the defaults here), sets $server and $started_ms, waits for /readyz.
start() {
  local dir=$1 log=$2; shift 2
  started_ms=$(now_ms)
  env EDDY_SERVER__LISTEN=127.0.0.1:$PORT EDDY_ADMIN__LISTEN=127.0.0.1:$ADMIN_PORT EDDY_STORAGE__DIR="$dir" \
    EDDY_LOG__LEVEL=warn "$@" "$EDDY" serve >"$log" 2>&1 &
  server=$!
  if ! ready "$READY_TIMEOUT_S"; then
    echo "eddy did not become ready within ${READY_TIMEOUT_S}s; its log:" >&2; cat "$log" >&2; exit 1
  fi
}

# stop SIGNAL: signals $server and waits for it to exit (30 s, then KILL);
# reports a non-zero exit after SIGTERM.
stop() {
  local sig=$1 end code=0
  # A job killed by a signal gets a "Killed" notice from bash: disowned
  # first (bash still reaps it), its status is not needed then.
  if [ "$sig" = KILL ]; then disown "$server" 2>/dev/null || true; fi
  kill -"$sig" "$server" 2>/dev/null || true
  end=$(($(now_ms) + 30000))
  while kill -0 "$server" 2>/dev/null && [ "$(now_ms)" -lt "$end" ]; do sleep 0.05; done
  if kill -0 "$server" 2>/dev/null; then
    echo "  PROBLEM: eddy (pid $server) still running 30 s after SIG$sig; killing it"
    disown "$server" 2>/dev/null || true; kill -KILL "$server" 2>/dev/null || true
  fi
  wait "$server" 2>/dev/null || code=$?
  if [ "$sig" = TERM ] && [ "$code" -ne 0 ]; then echo "  PROBLEM: eddy exited with status $code after SIGTERM"; fi
  server=""
}

# Warnings and errors the server logged (the text format's level column).
problems() {
  local n; n=$(grep -cE ' (WARN|ERROR) |"level":"(WARN|ERROR)"' "$1" || true)
  if [ "$n" -gt 0 ]; then
    echo "  PROBLEM: the server logged $n warning/error lines, first ones:"
    grep -E ' (WARN|ERROR) |"level":"(WARN|ERROR)"' "$1" | head -5 | sed 's/^/    /'
  fi
}

HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14, $15}' "/proc/$server/stat"; }  # utime stime

stats() {  # prints: feedback_accepted feedback_processed examples_trained
  curl -s --max-time 5 "$base/v1/models/demo" | python3 -c \
    'import json,sys; m=json.load(sys.stdin); print(m["feedback_accepted"], m["feedback_processed"], m["examples_trained"])'
}

# The feedback route's answers by status since the server started, from
# the admin /metrics ("202:8303 429:495").
answers() {
  curl -s --max-time 5 "$admin/metrics" \
    | grep -F 'eddy_http_requests_total{route="/v1/models/{model}/feedback"' \
    | sed -E 's/.*status="([0-9]+)"\} ([0-9]+).*/\1:\2/' | sort | paste -sd' ' -
}

# wrk output fields.
wrk_rps() { awk '/^Requests\/sec/ {print $2}' "$1"; }
wrk_total() { awk '/requests in/ {print $1}' "$1"; }
wrk_non2xx() { awk '/Non-2xx/ {print $5}' "$1" | grep . || echo 0; }
wrk_sockerr() { awk '/Socket errors/ {print $0}' "$1"; }
wrk_p99_ms() {  # the 99% line of --latency, in ms
  awk '$1 == "99%" {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        f = (u == "us" ? 0.001 : u == "ms" ? 1 : u == "s" ? 1000 : u == "m" ? 60000 : -1);
        printf "%.2f", v * f}' "$1"
}

# env for each configuration
cfg_env() {
  case $1 in
    wal-off) echo EDDY_STORAGE__WAL=false ;;
    interval) echo EDDY_STORAGE__FSYNC=interval ;;
    always) echo EDDY_STORAGE__FSYNC=always ;;
    never) echo EDDY_STORAGE__FSYNC=never ;;
    guard-on) echo EDDY_MODELS__DEMO__GUARD__ENABLED=true ;;
    guard-off) echo EDDY_MODELS__DEMO__GUARD__ENABLED=false ;;
  esac
}

# measure KIND TAG ROUND: one round on a fresh server; KIND batch or single.
# Appends "rate trained_per_s p99_ms cpu" to res[TAG] (rate: examples/s
# accepted for batches, requests/s for single examples). Not run in a
# subshell, so the EXIT trap always knows $server.
measure() {
  local kind=$1 tag=$2 r=$3 dir=$work/data.$kind.$tag.$r log=$work/log.$kind.$tag.$r out=$work/wrk.$kind.$tag.$r
  local a0 p0 t0 a1 p1 t1 s0 s1 u0 k0 u1 k1 cpu sys codes body conns per rps total non2xx ok acc trained srv p99
  # shellcheck disable=SC2046
  start "$dir" "$log" $(cfg_env "$tag")
  if [ "$kind" = batch ]; then body=$work/batch.json conns=$FEEDBACK_CONNS per=1000
  elif [ "$kind" = batch4 ]; then body=$work/batch4.json conns=$FEEDBACK_CONNS per=1000
  else body=$work/single.json conns=$SINGLE_CONNS per=1; fi
  read -r a0 p0 t0 < <(stats); read -r u0 k0 < <(cpu_ticks); s0=$(now_ms)
  BODY=$body wrk -t2 -c"$conns" -d"$DURATION" --latency -s benches/wrk/post.lua \
    "$base/v1/models/demo/feedback" > "$out"
  read -r a1 p1 t1 < <(stats); read -r u1 k1 < <(cpu_ticks); s1=$(now_ms)
  codes=$(answers)
  stop TERM
  problems "$log"
  rm -rf "$dir"
  rps=$(wrk_rps "$out"); total=$(wrk_total "$out"); non2xx=$(wrk_non2xx "$out")
  ok=$((total - non2xx))
  acc=$(awk -v r="$rps" -v t="$total" -v ok="$ok" -v k="$per" 'BEGIN {printf "%.0f", (t > 0 ? r * ok / t * k : 0)}')
  trained=$(awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" 'BEGIN {printf "%.0f", (b - a) * 1000 / (e - s)}')
  srv=$(awk -v a="$a0" -v b="$a1" -v s="$s0" -v e="$s1" 'BEGIN {printf "%.0f", (b - a) * 1000 / (e - s)}')
  p99=$(wrk_p99_ms "$out")
  # server CPU ms per 1000 examples accepted (batches) or us per request
  per_unit() {  # ticks -> ms per 1000 examples (batches) or us per request
    awk -v d="$1" -v hz="$HZ" -v n=$((a1 - a0)) -v k="$per" \
      'BEGIN {printf "%.2f", (n > 0 ? (k == 1 ? d / hz * 1e6 / n : d / hz * 1e3 / (n / 1000)) : 0)}'
  }
  cpu=$(per_unit $((u1 - u0 + k1 - k0))); sys=$(per_unit $((k1 - k0)))
  if [ "$kind" != single ]; then
    echo "  round $r, $tag: $acc examples/s accepted ($rps req/s; answers $codes), $trained/s trained, server's accepted count $srv/s, p99 $p99 ms, server CPU $cpu ms per 1000 accepted ($sys system)"
  else
    echo "  round $r, $tag: $rps req/s (answers $codes), p99 $p99 ms, $trained/s trained, server CPU $cpu us per request ($sys system)"
  fi
  # 429 is backpressure (the training queue is full), not a failure.
  if [ -n "$(tr ' ' '\n' <<<"$codes" | grep -vE '^(202|429):')" ]; then
    echo "  PROBLEM: answers other than 202 and 429: $codes"
  fi
  # wrk does not count answers still in flight when -d ends: up to one
  # per connection may differ.
  if ! tr ' ' '\n' <<<"$codes" | awk -F: -v w="$non2xx" -v c="$conns" \
        '$1 != 202 {n += $2} END {d = n - w; if (d < 0) d = -d; exit (d > c ? 1 : 0)}'; then
    echo "  PROBLEM: wrk saw $non2xx non-2xx answers, the server counts otherwise: $codes"
  fi
  if grep -q "Socket errors" "$out"; then echo "  PROBLEM: wrk $(wrk_sockerr "$out")"; fi
  if [ "$kind" != single ]; then res[$tag]+="$acc $trained $p99 $cpu"$'\n'; else res[$tag]+="$rps $trained $p99 $cpu"$'\n'; fi
}

# rounds KIND TAG...: ROUNDS rounds over the TAGs, the order rotated each
# round; fills res[TAG] (see measure).
declare -A res
rounds() {
  local kind=$1; shift
  local tags=("$@") n=$# r i tag
  for tag in "${tags[@]}"; do res[$tag]=""; done
  for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
      tag=${tags[$(((i + r - 1) % n))]}
      measure "$kind" "$tag" "$r"
    done
  done
}
col() { printf '%s' "${res[$1]}" | awk -v c="$2" 'NF {print $c}'; }

# fdatasync latency where the storage dirs live.
fsync_probe() {
  python3 - "$work" "$FSYNC_SAMPLES" <<'PY'
import os, sys, time
path, n = os.path.join(sys.argv[1], "fsync.probe"), int(sys.argv[2])
buf = os.urandom(4096)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
lat = []
for _ in range(n):
    t = time.perf_counter()
    os.write(fd, buf)
    os.fdatasync(fd)
    lat.append((time.perf_counter() - t) * 1000)
os.close(fd); os.unlink(path)
lat.sort()
pct = lambda p: lat[min(n - 1, int(round(p / 100 * (n - 1))))]
print(f"{pct(50):.3f} {pct(99):.3f} {lat[-1]:.3f}")
PY
}

loadavg() { echo "(load average $(cut -d' ' -f1-3 /proc/loadavg); other work on the host skews rates)"; }
echo "eddy $("$EDDY" --version 2>/dev/null || true), storage under $work ($(df -P "$work" | awk 'NR==2 {print $1}')), $(nproc) cores, ROUNDS=$ROUNDS DURATION=$DURATION $(loadavg)"

if want ingest || want always || want never; then
  tags=()
  if want ingest; then tags+=(wal-off); fi
  tags+=(interval)
  if want always; then tags+=(always); fi
  if want never; then tags+=(never); fi
  if want always; then
    read -r fs50 fs99 fsmax < <(fsync_probe)
    echo "== fdatasync (append 4 KiB + fdatasync, $FSYNC_SAMPLES times): p50 $fs50 ms, p99 $fs99 ms, max $fsmax ms"
  fi
  echo "== ingest: batches of 1000, wrk -t2 -c$FEEDBACK_CONNS -d$DURATION, $ROUNDS rounds over: ${tags[*]} (order rotated) $(loadavg)"
  rounds batch "${tags[@]}"
  for tag in "${tags[@]}"; do
    echo "median: $tag $(col "$tag" 1 | median) examples/s accepted ($(col "$tag" 2 | median) trained/s), p99 $(col "$tag" 3 | median) ms, server CPU $(col "$tag" 4 | median) ms per 1000"
  done
  im=$(col interval 1 | median); itm=$(col interval 2 | median)
  if want ingest; then
    om=$(col wal-off 1 | median); otm=$(col wal-off 2 | median)
    # per-round ratio: the same round's pair saw similar machine load
    rr=$(paste <(col interval 1) <(col wal-off 1) | awk '{printf "%.3f\n", ($2 > 0 ? $1/$2 : 0)}' | median)
    r1=$(ratio "$im" "$om")
    echo "ratio interval / wal-off: $r1 of medians, $rr median of per-round ratios (trained: $(ratio "$itm" "$otm")); target >= 0.85: $(awk -v a="$r1" 'BEGIN {print (a >= 0.85 ? "met" : "NOT met")}')"
  fi
  if want always; then
    am=$(col always 1 | median); atm=$(col always 2 | median)
    target=$(awk -v i="$im" -v p="$fs50" 'BEGIN {d = 4000 / (p / 1000); printf "%.0f", 0.8 * (i < d ? i : d)}')
    echo "always / interval: $(ratio "$am" "$im") accepted, $(ratio "$atm" "$itm") trained"
    echo "target 0.8 x min(interval $im, 4000 / fdatasync p50 = $(awk -v p="$fs50" 'BEGIN {printf "%.0f", 4000 / (p / 1000)}')) = $target: $(awk -v a="$am" -v t="$target" 'BEGIN {print (a >= t ? "met" : "NOT met")}')"
  fi
fi

if want guard; then
  echo "== guard: batches of 1000 from 4 sources in turn, wrk -t2 -c$FEEDBACK_CONNS -d$DURATION, $ROUNDS rounds over: guard-off guard-on (order rotated) $(loadavg)"
  rounds batch4 guard-off guard-on
  for tag in guard-off guard-on; do
    echo "median: $tag $(col "$tag" 1 | median) examples/s accepted ($(col "$tag" 2 | median) trained/s), p99 $(col "$tag" 3 | median) ms, server CPU $(col "$tag" 4 | median) ms per 1000"
  done
  ga=$(ratio "$(col guard-on 1 | median)" "$(col guard-off 1 | median)")
  gt=$(ratio "$(col guard-on 2 | median)" "$(col guard-off 2 | median)")
  echo "ratio guard on / off: $ga accepted, $gt trained (medians); target >= 0.75: $(awk -v a="$ga" -v t="$gt" 'BEGIN {print (a >= 0.75 && t >= 0.75 ? "met" : "NOT met")}')"
fi

if want single; then
  echo "== single examples: wrk -t2 -c$SINGLE_CONNS -d$DURATION --latency, $ROUNDS rounds over: always interval (order rotated) $(loadavg)"
  rounds single always interval
  for tag in always interval; do
    echo "median: $tag $(col "$tag" 1 | median) req/s, p99 $(col "$tag" 3 | median) ms, server CPU $(col "$tag" 4 | median) us per request"
  done
  echo "always / interval: $(ratio "$(col always 1 | median)" "$(col interval 1 | median)") req/s"
fi

if want callgrind; then
  CG_BATCHES=${CG_BATCHES:-20}
  command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
  echo "== callgrind: $CG_BATCHES batches of 1000, one at a time, snapshots off (instruction counts do not depend on the host's load)"
  declare -A ir
  for tag in wal-off interval; do
    dir=$work/cg.$tag out=$work/cg.$tag.out log=$work/log.cg.$tag
    started_ms=$(now_ms)
    # shellcheck disable=SC2046
    env EDDY_SERVER__LISTEN=127.0.0.1:$PORT EDDY_ADMIN__LISTEN=127.0.0.1:$ADMIN_PORT EDDY_STORAGE__DIR="$dir" \
      EDDY_LOG__LEVEL=warn EDDY_STORAGE__SNAPSHOT_INTERVAL_S=86400 \
      EDDY_MODELS__DEMO__MONITOR__PROMOTION_SNAPSHOT_INTERVAL_MS=86400000 $(cfg_env "$tag") \
      valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$EDDY" serve >"$log" 2>&1 &
    server=$!
    if ! ready "$READY_TIMEOUT_S"; then echo "eddy under valgrind did not become ready; its log:" >&2; cat "$log" >&2; exit 1; fi
    post_batch() { curl -s -o /dev/null -w '%{http_code}' --max-time 60 -X POST -H 'Content-Type: application/json' \
      --data-binary @"$work/batch.json" "$base/v1/models/demo/feedback"; }
    for _ in 1 2 3; do post_batch >/dev/null; done
    callgrind_control -z "$server" >/dev/null 2>&1
    codes=""
    for _ in $(seq "$CG_BATCHES"); do codes+="$(post_batch) "; done
    end=$(($(now_ms) + 120000))
    while :; do
      read -r a p t < <(stats)
      [ "$a" = "$p" ] && break
      [ "$(now_ms)" -ge "$end" ] && { echo "  PROBLEM: not all trained within 120 s"; break; }
      sleep 0.2
    done
    callgrind_control -d "$server" >/dev/null 2>&1
    stop TERM
    if [ -n "$(tr ' ' '\n' <<<"$codes" | grep -v '^202$' | grep .)" ]; then echo "  PROBLEM: answers other than 202: $codes"; fi
    # The dump taken on request (`.1`) holds the counted part; the file
    # written at exit holds the shutdown.
    total=$(callgrind_annotate "$out".*.1 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    ir[$tag]=$(awk -v t="$total" -v n="$CG_BATCHES" 'BEGIN {printf "%.0f", t / n}')
    echo "  $tag: $(awk -v v="${ir[$tag]}" 'BEGIN {printf "%.2f", v / 1e6}')M instructions per 1000 examples"
    rm -rf "$dir" "$out".*
  done
  echo "instructions interval / wal-off: $(ratio "${ir[interval]}" "${ir[wal-off]}") (the log's user-space cost per example: $(awk -v a="${ir[interval]}" -v b="${ir[wal-off]}" 'BEGIN {printf "%.0f", (a - b) / 1000}') instructions)"
fi

if want recovery; then
  dir=$work/recovery
  norecap=(EDDY_STORAGE__SNAPSHOT_INTERVAL_S=86400 EDDY_MODELS__DEMO__MONITOR__PROMOTION_SNAPSHOT_INTERVAL_MS=86400000
           EDDY_LOG__LEVEL=info EDDY_LOG__FORMAT=json)
  # Snapshots by count (default every 1,000,000 examples) would cut the
  # replay short; older builds do not know the key (unknown keys are refused).
  if grep -q snapshot_every_examples src/config.rs; then norecap+=(EDDY_STORAGE__SNAPSHOT_EVERY_EXAMPLES=0); fi
  echo "== recovery: $RECOVERY_EXAMPLES examples in batches of 1000, SIGKILL, $ROUNDS restarts on the same log $(loadavg)"
  start "$dir" "$work/log.recovery.load" "${norecap[@]}"
  python3 - "$base" "$work/batches.jsonl" "$RECOVERY_EXAMPLES" "$FEEDBACK_CONNS" "$LOAD_TIMEOUT_S" <<'PY'
import http.client, sys, threading, time
from urllib.parse import urlparse
base, path, total, conns, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
bodies = [l.strip().encode() for l in open(path)]
u = urlparse(base)
lock = threading.Lock()
state = {"next": 0, "ok": 0, "busy": 0, "err": None}
batches = total // 1000
deadline = time.monotonic() + timeout
def worker():
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    while True:
        with lock:
            if state["err"] or state["next"] >= batches:
                return
            i = state["next"]; state["next"] += 1
        body = bodies[i % len(bodies)]
        while True:
            if time.monotonic() > deadline:
                with lock: state["err"] = state["err"] or f"not done within {timeout:.0f} s"
                return
            c.request("POST", "/v1/models/demo/feedback", body, {"Content-Type": "application/json"})
            r = c.getresponse(); data = r.read()
            if r.status == 202:
                with lock: state["ok"] += 1
                break
            if r.status == 429:
                with lock: state["busy"] += 1
                time.sleep(0.005)
                continue
            with lock: state["err"] = state["err"] or f"HTTP {r.status}: {data[:200]!r}"
            return
t = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(conns)]
for th in threads: th.start()
for th in threads: th.join()
s = time.monotonic() - t
print(f"loaded {state['ok'] * 1000} examples in {s:.1f} s ({state['ok'] * 1000 / s:.0f}/s accepted, {state['busy']} answers 429 retried)")
if state["err"]:
    print("PROBLEM while loading:", state["err"]); sys.exit(1)
PY
  end=$(($(now_ms) + 120000))
  while :; do
    read -r a p t < <(stats)
    [ "$a" = "$p" ] && [ "$a" -ge "$RECOVERY_EXAMPLES" ] && break
    [ "$(now_ms)" -ge "$end" ] && { echo "PROBLEM: not all trained within 120 s (accepted $a, processed $p)"; exit 1; }
    sleep 0.1
  done
  echo "all processed: feedback_accepted $a, feedback_processed $p, examples_trained $t; snapshots on disk: $(find "$dir/demo" -maxdepth 1 -name 'snapshot-*' | wc -l); log $(du -sm "$dir/demo/wal" | cut -f1) MiB in $(find "$dir/demo/wal" -name '*.wal' | wc -l) segment(s)"
  stop KILL
  problems "$work/log.recovery.load"
  ready_runs=(); replay_runs=()
  for r in $(seq "$ROUNDS"); do
    log=$work/log.recovery.$r
    start "$dir" "$log" "${norecap[@]}"
    ready_ms=$(($(now_ms) - started_ms))
    read -r n ms < <(python3 - "$log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try: f = json.loads(line).get("fields", {})
    except ValueError: continue
    if f.get("message") == "replayed the feedback log":
        print(f["examples"], f["ms"]); break
else:
    print("none none")
PY
)
    read -r a p t < <(stats)
    snaps=$(find "$dir/demo" -maxdepth 1 -name 'snapshot-*' | wc -l)
    stop KILL
    problems "$log"
    echo "  restart $r: /readyz 200 after $ready_ms ms; replayed $n examples in $ms ms; then examples_trained $t (feedback_accepted $a and processed $p count this process's requests); snapshots on disk $snaps"
    if [ "$n" != "$RECOVERY_EXAMPLES" ]; then echo "  PROBLEM: replayed $n examples, expected $RECOVERY_EXAMPLES"; fi
    if [ "$t" != "$RECOVERY_EXAMPLES" ]; then echo "  PROBLEM: examples_trained $t after the replay, expected $RECOVERY_EXAMPLES"; fi
    ready_runs+=("$ready_ms")
    if [ "$ms" != none ]; then replay_runs+=("$ms"); fi
  done
  rm -rf "$dir"
  rm_=$(printf '%s\n' "${replay_runs[@]}" | median)
  echo "median: start -> ready $(printf '%s\n' "${ready_runs[@]}" | median) ms, replay alone $rm_ ms ($(awk -v m="$rm_" -v n="$RECOVERY_EXAMPLES" 'BEGIN {printf "%.0f", (m > 0 ? n * 1000 / m : 0)}') examples/s); target replay < 2000 ms: $(awk -v m="$rm_" 'BEGIN {print (m < 2000 ? "met" : "NOT met")}')"
fi
echo "done $(loadavg)"
