#!/usr/bin/env bash
# Size and time of GET /admin/status answers with many models, on
# 127.0.0.1 only. Starts eddy with MODELS binary models of hash_bits = 10
# (small weights, so 1,000 fit in memory whatever the default size),
# status_sample_ms = 10; gives each model ROUNDS feedback batches of 10
# Elec2 rows (a history point each, up to the 512 kept) and a pause and a
# resume (two events, more if the monitor acts); then times REPEATS
# requests per answer with curl (median bytes, and milliseconds to the
# last byte over loopback). The server is stopped by its PID.
#
# With BASE_BIN (a binary built from before the status page was paged,
# e.g. dcaf80a) the same is done to it first: its every answer holds every
# model in full, what the page used to fetch (`?since=NOW` as it polled).
# A build that runs each trainer on a tokio blocking thread (512 at most)
# never gets ready with more than about 500 models: MODELS=500 there.
#
# Usage: benches/status_size.sh [BASE_BIN] [NEW_BIN]
#        (default NEW_BIN ./target/release/eddy; MODELS=1000 ROUNDS=20 REPEATS=9)
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_BIN=${1:-}
NEW_BIN=${2:-./target/release/eddy}
MODELS=${MODELS:-1000}
ROUNDS=${ROUNDS:-20}
REPEATS=${REPEATS:-9}
PORT=${PORT:-18191}
ADMIN_PORT=${ADMIN_PORT:-18192}
# The model shown alone: one in the middle.
ONE=m$(printf %04d $((MODELS / 2)))

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

python3 - "$work" "$MODELS" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])
with open(f"{work}/eddy.toml", "w") as f:
    f.write("[admin]\nstatus_sample_ms = 10\n")
    for i in range(n):
        f.write(f'[[models]]\nname = "m{i:04}"\ntask = "binary"\nhash_bits = 10\n')
PY

# Feedback rounds over every model, then a pause and a resume each, on
# keep-alive connections.
feed() {
  python3 - "$PORT" "$ADMIN_PORT" "$MODELS" "$ROUNDS" <<'PY'
import gzip, http.client, json, sys, time
port, admin, n, rounds = (int(a) for a in sys.argv[1:])
rows = [json.loads(l) for l in gzip.open("tests/data/elec2.jsonl.gz", "rt")]
api = http.client.HTTPConnection("127.0.0.1", port)
ops = http.client.HTTPConnection("127.0.0.1", admin)
def call(conn, path, body, want):
    conn.request("POST", path, body, {"content-type": "application/json"})
    r = conn.getresponse()
    text = r.read()
    if r.status != want:
        sys.exit(f"{path}: {r.status} {text[:200]}")
for r in range(rounds):
    body = json.dumps({"examples": rows[r * 10:(r + 1) * 10]})
    for i in range(n):
        call(api, f"/v1/models/m{i:04}/feedback", body, 202)
    # Let the sampler see this round's change before the next.
    time.sleep(0.05)
for i in range(n):
    for step in ("pause", "resume"):
        call(ops, f"/admin/models/m{i:04}/training/{step}", "", 200)
time.sleep(0.5)
PY
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# bin tag query...
measure() {
  local bin=$1 tag=$2; shift 2
  EDDY_SERVER__LISTEN=127.0.0.1:$PORT EDDY_ADMIN__LISTEN=127.0.0.1:$ADMIN_PORT \
    EDDY_STORAGE__DIR=$work/data-$tag EDDY_LOG__LEVEL=warn \
    "$bin" serve --config "$work/eddy.toml" & pid=$!
  for _ in $(seq 600); do curl -sf -o /dev/null 127.0.0.1:$PORT/readyz && break; sleep 0.2; done
  curl -sf -o /dev/null 127.0.0.1:$PORT/readyz || { echo "$tag never ready"; exit 1; }
  feed
  # Idle a few seconds: a page's steady poll (since=NOW) then finds no
  # new points, as between changes.
  sleep 4
  local points
  # The base answers every model in full whatever the query.
  points=$(curl -s "127.0.0.1:$ADMIN_PORT/admin/status?model=$ONE" | python3 -c '
import json, sys
m = [m for m in json.load(sys.stdin)["models"] if m["name"] == sys.argv[1]][0]
print(len(m["history"]), "history points,", len(m["events"]), "events")' "$ONE")
  echo "== $tag: $MODELS models; $ONE has $points"
  for query in "$@"; do
    # since=NOW: what a page polling every 2 s asks (the last 3 s).
    local url="127.0.0.1:$ADMIN_PORT/admin/status${query/NOW/$(($(date +%s%3N) - 3000))}"
    for _ in $(seq "$REPEATS"); do
      curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "$url"
    done >"$work/runs"
    grep -qv '^200 ' "$work/runs" && { echo "$tag $query answered errors"; cat "$work/runs"; exit 1; }
    printf '%-22s median %10s bytes, %8.1f ms\n' "${query:-(unpaged)}" \
      "$(awk '{print $2}' "$work/runs" | median)" \
      "$(awk '{print $3 * 1000}' "$work/runs" | median)"
  done
  kill "$pid"; wait "$pid" || true; pid=
}

if [ -n "$BASE_BIN" ]; then
  measure "$BASE_BIN" base "" "?since=NOW"
fi
measure "$NEW_BIN" new "" "?limit=100" "?limit=1000" "?model=$ONE" "?model=$ONE&since=NOW"
