#!/usr/bin/env bash
# Progressive (test-then-train) quality, eddy and its peers side by side in
# one go: eddy's optimizer table and HTTP protocol run (cargo bench --bench
# progressive), then River and Vowpal Wabbit on the same four streams
# (benches/peers/progressive_peers.py). Installs the peers if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import river, vowpalwabbit" 2>/dev/null || pip install -q river vowpalwabbit
echo "== eddy"
cargo bench --quiet --bench progressive
echo
echo "== peers"
python3 benches/peers/progressive_peers.py
