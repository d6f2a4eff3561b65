#!/usr/bin/env bash
# Progressive (test-then-train) quality, eddy and its peers side by side in
# one go: the generated streams are written (SEA, sparse multiclass), River
# and Vowpal Wabbit run on all six streams (benches/peers/progressive_peers.py,
# figures kept in target/bench-streams/peers.json), then eddy's table (cargo
# bench --bench progressive): `auto` against every rate of the AdaGrad grid
# and River, auto's cost against AdaGrad, and the HTTP protocol run.
# Installs the peers if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import river, vowpalwabbit" 2>/dev/null || pip install -q river vowpalwabbit
cargo bench --quiet --bench progressive -- --write-streams
echo "== peers"
python3 benches/peers/progressive_peers.py --json-out target/bench-streams/peers.json
echo
echo "== eddy"
cargo bench --quiet --bench progressive
