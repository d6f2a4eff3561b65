#!/usr/bin/env bash
# Resident memory under wide-feature attacks, before and after, in one run.
# Loopback only, bounded in requests; every server runs the built-in
# default configuration on a fresh temporary storage dir and is stopped
# by its PID.
#
# Attacks (each on a fresh server, RSS read from /proc/PID/status before
# and after, once the server has been idle for SETTLE_S seconds):
#   predict-100k   600 predicts of 100,000 features each (a ~900 KB body,
#                  under max_body_bytes)
#   predict-cap    400 predicts of CAP_WIDTH (10,000) features each
#   predict-mixed  400 of 100,000 then 400 of CAP_WIDTH
#   feedback-100k  183 feedback examples of 100,000 features each, then
#                  the queue drained (examples_trained = accepted)
#   feedback-cap   1,000 feedback examples of CAP_WIDTH features each,
#                  drained
# Each line gives the answers by status, RSS before/after and the growth,
# and (where the binary has them) the bytes the join cache and the replay
# buffer account for: the growth against those shows the allocator's
# real overhead. ROUNDS rounds; the table shows medians.
#
# Usage: BEFORE=/path/to/main/eddy benches/wide_attack.sh
#        (AFTER defaults to this tree's release build; without BEFORE only
#        AFTER runs. ROUNDS=3 SETTLE_S=2 PORT=18381 ADMIN_PORT=PORT+1
#        ATTACKS=predict-100k,predict-cap,predict-mixed,feedback-100k,feedback-cap)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${AFTER:-}" ]; then
  cargo build --release --quiet --bin eddy
  target=${CARGO_TARGET_DIR:-target}; [[ $target == /* ]] || target=$PWD/$target
  AFTER=$target/release/eddy
fi

exec python3 - "$AFTER" "${BEFORE:-}" <<'PY'
import http.client, json, os, re, signal, statistics, subprocess, sys, tempfile, time

after, before = sys.argv[1], sys.argv[2]
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SETTLE_S = float(os.environ.get("SETTLE_S", "2"))
PORT = int(os.environ.get("PORT", "18381"))
ADMIN_PORT = int(os.environ.get("ADMIN_PORT", str(PORT + 1)))
CAP_WIDTH = int(os.environ.get("CAP_WIDTH", "10000"))
ATTACKS = os.environ.get(
    "ATTACKS", "predict-100k,predict-cap,predict-mixed,feedback-100k,feedback-cap"
).split(",")
READY_S, DRAIN_S = 60, 600

def names(n):
    """n short distinct feature names (base 36), so 100,000 fit in ~900 KB."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for i in range(n):
        s = ""
        while True:
            s = digits[i % 36] + s
            i //= 36
            if i == 0:
                break
        out.append(s)
    return out

def features(n):
    return "{" + ",".join(f'"{k}":1' for k in names(n)) + "}"

WIDE, CAP = features(100_000), features(CAP_WIDTH)
BODIES = {
    "predict-wide": ('{"features":' + WIDE + "}").encode(),
    "predict-cap": ('{"features":' + CAP + "}").encode(),
    "feedback-wide": ('{"features":' + WIDE + ',"label":1}').encode(),
    "feedback-cap": ('{"features":' + CAP + ',"label":1}').encode(),
}
assert len(BODIES["feedback-wide"]) < 1 << 20, "under max_body_bytes"

def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return kb / 1024

class Server:
    def __init__(self, binary):
        self.dir = tempfile.TemporaryDirectory()
        env = dict(os.environ,
                   EDDY_SERVER__LISTEN=f"127.0.0.1:{PORT}",
                   EDDY_ADMIN__LISTEN=f"127.0.0.1:{ADMIN_PORT}",
                   EDDY_STORAGE__DIR=self.dir.name,
                   EDDY_LOG__LEVEL="error")
        self.log = open(os.path.join(self.dir.name, "server.log"), "w")
        self.proc = subprocess.Popen([binary, "serve"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + READY_S
        while True:
            try:
                if self.get("/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                sys.exit(f"eddy ({binary}) did not become ready")
            time.sleep(0.02)
        self.conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)

    def get(self, path, port=PORT):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def post(self, path, body):
        self.conn.request("POST", path, body, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        r.read()
        return r.status

    def info(self):
        return json.loads(self.get("/v1/models/demo")[1])

    def metric(self, name):
        text = self.get("/metrics", ADMIN_PORT)[1].decode()
        m = re.search(r"^" + re.escape(name) + r'\{model="demo"\} (\S+)$', text, re.M)
        return float(m.group(1)) / 2**20 if m else None

    def rss(self):
        time.sleep(SETTLE_S)
        return rss_mb(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.dir.cleanup()

def attack(server, name):
    statuses = {}
    def send(path, body, n):
        for _ in range(n):
            s = server.post(path, body)
            statuses[s] = statuses.get(s, 0) + 1
    predict, feedback = "/v1/models/demo/predict", "/v1/models/demo/feedback"
    if name == "predict-100k":
        send(predict, BODIES["predict-wide"], 600)
    elif name == "predict-cap":
        send(predict, BODIES["predict-cap"], 400)
    elif name == "predict-mixed":
        send(predict, BODIES["predict-wide"], 400)
        send(predict, BODIES["predict-cap"], 400)
    elif name.startswith("feedback"):
        wide = name == "feedback-100k"
        send(feedback, BODIES["feedback-wide" if wide else "feedback-cap"], 183 if wide else 1000)
        deadline = time.time() + DRAIN_S
        while True:
            i = server.info()
            if i["examples_trained"] >= i["feedback_accepted"]:
                break
            if time.time() > deadline:
                sys.exit("the queue did not drain")
            time.sleep(0.1)
    return " ".join(f"{k}:{v}" for k, v in sorted(statuses.items()))

binaries = [("after", after)] + ([("before", before)] if before else [])
rows = {}
for r in range(ROUNDS):
    for name in ATTACKS:
        for label, binary in binaries:
            s = Server(binary)
            try:
                start = s.rss()
                answers = attack(s, name)
                end = s.rss()
                held = [s.metric("eddy_join_cache_bytes"), s.metric("eddy_replay_buffer_bytes")]
            finally:
                s.stop()
            rows.setdefault((name, label), []).append((start, end, end - start, answers, held))
            print(f"round {r + 1} {name:14} {label:6} {answers:18} RSS {start:7.1f} -> {end:7.1f} MB", file=sys.stderr)

def fmt(x):
    return "-" if x is None else f"{x:.1f}"

print(f"\nRSS in MB, medians of {ROUNDS} round(s); join/replay: MB the join cache and the replay buffer account for")
print(f"| attack | binary | answers | RSS before | RSS after | growth | join | replay |")
print(f"|---|---|---|---:|---:|---:|---:|---:|")
for name in ATTACKS:
    for label, _ in binaries:
        v = rows[(name, label)]
        med = lambda i: statistics.median(x[i] for x in v)
        held = [None if v[0][4][k] is None else statistics.median(x[4][k] for x in v) for k in range(2)]
        print(f"| {name} | {label} | {v[0][3]} | {med(0):.1f} | {med(1):.1f} | **{med(2):.1f}** | {fmt(held[0])} | {fmt(held[1])} |")
PY
