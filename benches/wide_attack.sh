#!/usr/bin/env bash
# Resident memory under wide-feature attacks, before and after, in one run.
# Loopback only, bounded in requests; every server runs the built-in
# default configuration on a fresh temporary storage dir and is stopped
# by its PID.
#
# Attacks (each on a fresh server; RSS read from /proc/PID/status once the
# server has been idle for SETTLE_S seconds: before the attack, after a
# warm-up of 300 small predicts and feedback examples (the first trained
# steps free ~60 MB of start-up memory, which would hide growth), and
# after the attack):
#   predict-100k   600 predicts of 100,000 features each (a ~900 KB body,
#                  under max_body_bytes)
#   predict-cap    400 predicts of CAP_WIDTH (10,000) features each
#   predict-mixed  400 of 100,000 then 400 of CAP_WIDTH
#   feedback-100k  183 feedback examples of 100,000 features each, then
#                  the queue drained (examples_trained = accepted)
#   feedback-cap   1,000 feedback examples of CAP_WIDTH features each,
#                  drained
#   worst-case     everything the configuration lets a client fill, at
#                  the widest allowed example: 400 predicts of CAP_WIDTH
#                  (join cache), 1,000 feedback of CAP_WIDTH drained
#                  (replay buffer, model versions), then training paused
#                  and the queue filled with dense batches of 45 examples
#                  of CAP_WIDTH until 429: RSS at the peak (the `peak`
#                  column), then resumed and drained
# Each line gives the answers by status, RSS before/after and the growth,
# and (where the binary has them) the bytes the join cache and the replay
# buffer account for: the growth against those shows the allocator's
# real overhead. ROUNDS rounds; the table shows medians.
#
# Usage: BEFORE=/path/to/main/eddy benches/wide_attack.sh
#        (AFTER defaults to this tree's release build; without BEFORE only
#        AFTER runs. ROUNDS=3 SETTLE_S=2 PORT=18471 ADMIN_PORT=PORT+1
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
PORT = int(os.environ.get("PORT", "18471"))
ADMIN_PORT = int(os.environ.get("ADMIN_PORT", str(PORT + 1)))
CAP_WIDTH = int(os.environ.get("CAP_WIDTH", "10000"))
ATTACKS = os.environ.get(
    "ATTACKS", "predict-100k,predict-cap,predict-mixed,feedback-100k,feedback-cap,worst-case"
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
DENSE = "[" + ",".join("1" for _ in range(CAP_WIDTH)) + "]"
BODIES["feedback-dense-batch"] = (
    '{"examples":[' + ",".join('{"features":' + DENSE + ',"label":1}' for _ in range(45)) + "]}"
).encode()
SMALL = {
    "predict": b'{"features":{"a":1,"b":"x"}}',
    "feedback": b'{"features":{"a":1,"b":"x"},"label":1}',
}
for k, v in BODIES.items():
    assert len(v) < 1 << 20, f"{k} is under max_body_bytes"

def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return kb / 1024

# A signal ends the run through the `finally` that stops the server.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))

import socket
for port in (PORT, ADMIN_PORT):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(f"something already listens on 127.0.0.1:{port}; set PORT / ADMIN_PORT")

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
            if self.proc.poll() is not None:
                self.log.close()
                sys.exit(f"eddy ({binary}) exited at start-up: " + open(self.log.name).read()[-2000:])
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

    def admin_post(self, path):
        c = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=30)
        try:
            c.request("POST", path, b"{}", {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    def drain(self):
        deadline = time.time() + DRAIN_S
        while True:
            i = self.info()
            if i["examples_trained"] >= i["feedback_accepted"]:
                return
            if time.time() > deadline:
                sys.exit("the queue did not drain")
            time.sleep(0.1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.dir.cleanup()

predict, feedback = "/v1/models/demo/predict", "/v1/models/demo/feedback"

def warm_up(server):
    for _ in range(300):
        assert server.post(predict, SMALL["predict"]) == 200
        assert server.post(feedback, SMALL["feedback"]) == 202
    server.drain()

def attack(server, name):
    """Runs one attack; returns the answers by status and the peak RSS
    (worst-case only)."""
    statuses = {}
    peak = None
    def send(path, body, n):
        for _ in range(n):
            s = server.post(path, body)
            statuses[s] = statuses.get(s, 0) + 1
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
        server.drain()
    elif name == "worst-case":
        send(predict, BODIES["predict-cap"], 400)
        send(feedback, BODIES["feedback-cap"], 1000)
        server.drain()
        assert server.admin_post("/admin/models/demo/training/pause") == 200
        for _ in range(1000):
            s = server.post(feedback, BODIES["feedback-dense-batch"])
            statuses[s] = statuses.get(s, 0) + 1
            if s == 429:
                break
        peak = server.rss()
        assert server.admin_post("/admin/models/demo/training/resume") == 200
        server.drain()
    return " ".join(f"{k}:{v}" for k, v in sorted(statuses.items())), peak

binaries = [("after", after)] + ([("before", before)] if before else [])
rows = {}
for r in range(ROUNDS):
    for name in ATTACKS:
        for label, binary in binaries:
            s = Server(binary)
            try:
                idle = s.rss()
                warm_up(s)
                start = s.rss()
                answers, peak = attack(s, name)
                end = s.rss()
                held = [s.metric("eddy_join_cache_bytes"), s.metric("eddy_replay_buffer_bytes")]
            finally:
                s.stop()
            rows.setdefault((name, label), []).append((start, end, end - start, answers, held, idle, peak))
            print(f"round {r + 1} {name:14} {label:6} {answers:18} RSS idle {idle:6.1f}, warm {start:6.1f} -> {end:7.1f} MB"
                  + ("" if peak is None else f" (peak {peak:.1f})"), file=sys.stderr)

def fmt(x):
    return "-" if x is None else f"{x:.1f}"

print(f"\nRSS in MB, medians of {ROUNDS} round(s): at start-up (idle), after the warm-up (before), after the attack;")
print("peak: worst-case only, with the queue full; join/replay: MB the join cache and the replay buffer account for")
print(f"| attack | binary | answers | idle | before | after | growth | peak | join | replay |")
print(f"|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for name in ATTACKS:
    for label, _ in binaries:
        v = rows[(name, label)]
        med = lambda i: statistics.median(x[i] for x in v)
        held = [None if v[0][4][k] is None else statistics.median(x[4][k] for x in v) for k in range(2)]
        peak = None if v[0][6] is None else statistics.median(x[6] for x in v)
        print(f"| {name} | {label} | {v[0][3]} | {med(5):.1f} | {med(0):.1f} | {med(1):.1f} | **{med(2):.1f}** | {fmt(peak)} | {fmt(held[0])} | {fmt(held[1])} |")
PY
