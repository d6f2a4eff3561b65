#!/usr/bin/env bash
# Hostile connections against eddy on 127.0.0.1 only, bounded (about 30 s
# per server): 1,100 connections that send a predict's headers and one byte
# of body, then probes and another client's predicts while they are open;
# headers dripped at one byte a second; a 10 MB Content-Length declared.
# See benches/slowloris.py for the figures printed.
#
# The server runs the default configuration except the header timeout
# (HEADER_MS, 3 s by default, so the drip phase stays short).
# BASE_BIN=/path/to/other/eddy runs the same probe against that binary
# first (for a before/after comparison).
# Usage: benches/slowloris.sh        (CONNS=1100 DRIP=100 HEADER_MS=3000)
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-1100}
DRIP=${DRIP:-100}
HEADER_MS=${HEADER_MS:-3000}
PORT=${PORT:-18191}
ADMIN_PORT=${ADMIN_PORT:-18192}

cargo build --release --quiet --bin eddy
# The client holds CONNS sockets, the server as many.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

probe() {
  local bin=$1 tag=$2; shift 2
  echo "== $tag ($bin)"
  env EDDY_SERVER__LISTEN=127.0.0.1:$PORT EDDY_ADMIN__LISTEN=127.0.0.1:$ADMIN_PORT \
    EDDY_STORAGE__DIR=$work/$tag EDDY_LOG__LEVEL=warn "$@" "$bin" serve 2>"$work/$tag.log" &
  pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$PORT/readyz && break; sleep 0.1; done
  timeout 120 python3 benches/slowloris.py "$PORT" "$ADMIN_PORT" "$CONNS" "$DRIP" || echo "probe failed or timed out"
  echo "server log lines: $(wc -l <"$work/$tag.log") (refusals are logged at most once per 10 s)"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

# The base binary may not know the header timeout key: its defaults apply.
if [ -n "${BASE_BIN:-}" ]; then probe "$BASE_BIN" base; fi
probe ./target/release/eddy this EDDY_SERVER__HEADER_READ_TIMEOUT_MS="$HEADER_MS"
