#!/usr/bin/env python3
"""The benchmark set of eddy's mlp family and River's figures on it.

``streams OUT``  writes the synthetic streams as JSON Lines into OUT (River's
                 generators at fixed seeds, sizes below) and copies nothing
                 else: the repo streams are read from tests/data.
``peers OUT``    runs River's learners one prequential pass (predict, score,
                 learn, in order, minibatch 1, default settings) on every
                 stream and writes OUT/peers.json:
                   LR:  StandardScaler | LogisticRegression (OneVsRest for
                        multiclass; LinearRegression for regression)
                   ARF: forest.ARFClassifier(seed=42) (ARFRegressor)
                   HAT: tree.HoeffdingAdaptiveTreeClassifier(seed=42)
                        (HoeffdingAdaptiveTreeRegressor)
``table OUT``    prints one table from OUT/peers.json and OUT/eddy.json.

Synthetic streams (sizes capped so ARF, ~1,500 examples/s, finishes):
  sea_abrupt     SEA, function 0 -> 1 -> 2 -> 3 every 5,000 rows, 10% noise, 20,000 rows
  hyperplane     Hyperplane, 10 features, 2 drifting (mag_change 0.001), 5% noise, 20,000 rows
  agrawal_f2..6  Agrawal classification functions 2..6 (conjunctions of thresholds), 10,000 rows each
  checkerboard   4 x 4 checkerboard on [0,1]^2, uniform points, 4,000 rows
  ball           inside a disc of radius 0.2 around (0.3, 0.6) in [0,1]^2, 4,000 rows
"""

import gzip
import json
import math
import os
import random
import sys
import time

from river import forest, linear_model, multiclass, preprocessing, tree
from river.datasets import synth

REPO = ["elec2", "phishing", "image_segments", "trump_approval"]
TASKS = {"image_segments": "multiclass", "trump_approval": "regression"}


def synthetic():
    def sea():
        rows = []
        for k, variant in enumerate([0, 1, 2, 3]):
            gen = synth.SEA(variant=variant, noise=0.1, seed=10 + k)
            rows += list(gen.take(5000))
        return rows

    out = {
        "sea_abrupt": sea(),
        "hyperplane": list(
            synth.Hyperplane(seed=3, n_features=10, n_drift_features=2, mag_change=0.001,
                             noise_percentage=0.05, sigma=0.1).take(20000)),
    }
    for f in range(2, 7):
        out[f"agrawal_f{f}"] = list(synth.Agrawal(classification_function=f, seed=20 + f).take(10000))
    rng = random.Random(7)
    board, ball = [], []
    for _ in range(4000):
        a, b = rng.random(), rng.random()
        board.append(({"a": a, "b": b}, (int(a * 4) + int(b * 4)) % 2 == 1))
    for _ in range(4000):
        a, b = rng.random(), rng.random()
        ball.append(({"a": a, "b": b}, math.hypot(a - 0.3, b - 0.6) < 0.2))
    out["checkerboard"] = board
    out["ball"] = ball
    return out


def write_streams(out):
    os.makedirs(out, exist_ok=True)
    for name, rows in synthetic().items():
        with open(f"{out}/{name}.jsonl", "w") as f:
            for x, y in rows:
                feats = {str(k): float(v) for k, v in x.items()}
                f.write(json.dumps({"features": feats, "label": int(bool(y))}) + "\n")


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            yield r["features"], r["label"]


def stream_paths(out):
    here = os.path.dirname(os.path.abspath(__file__))
    data = os.path.join(here, "..", "..", "tests", "data")
    paths = {n: os.path.join(data, f"{n}.jsonl.gz") for n in REPO}
    for f in sorted(os.listdir(out)):
        if f.endswith(".jsonl"):
            paths[f[:-6]] = os.path.join(out, f)
    return paths


def learners(task):
    if task == "regression":
        return {
            "LR": lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
            "ARF": lambda: forest.ARFRegressor(seed=42),
            "HAT": lambda: tree.HoeffdingAdaptiveTreeRegressor(seed=42),
        }
    lr = (lambda: preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(linear_model.LogisticRegression())) \
        if task == "multiclass" else (lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression())
    return {
        "LR": lr,
        "ARF": lambda: forest.ARFClassifier(seed=42),
        "HAT": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=42),
    }


def prequential(model, rows, task):
    score, n, t0 = 0.0, 0, time.perf_counter()
    for x, y in rows:
        p = model.predict_one(x)
        if task == "regression":
            score += abs((p or 0.0) - y)
        else:
            score += p == y
        model.learn_one(x, y)
        n += 1
    return score / n, n / (time.perf_counter() - t0)


def run_peers(out):
    res = {}
    for name, path in stream_paths(out).items():
        task = TASKS.get(name, "binary")
        rows = list(read(path))
        res[name] = {"task": task, "rows": len(rows)}
        for lname, make in learners(task).items():
            s, rate = prequential(make(), rows, task)
            res[name][lname] = s
            res[name][lname + "_rate"] = rate
            print(f"{name:16s} {lname:4s} {s:.4f} ({rate:,.0f} ex/s)", file=sys.stderr)
    json.dump(res, open(f"{out}/peers.json", "w"), indent=1)


def table(out):
    peers = json.load(open(f"{out}/peers.json"))
    eddy = json.load(open(f"{out}/eddy.json"))
    cols = ["eddy linear", "eddy mlp", "River LR", "ARF", "HAT", "mlp - ARF"]
    print(f"| stream | rows | metric | " + " | ".join(cols) + " |")
    print("| --- | ---: | --- | " + " | ".join(["---:"] * len(cols)) + " |")
    for name, p in peers.items():
        e = eddy.get(name, {})
        reg = p["task"] == "regression"
        metric = "MAE" if reg else "accuracy"
        gap = (p["ARF"] - e["mlp"]) if reg else (e["mlp"] - p["ARF"])
        vals = [e.get("linear"), e.get("mlp"), p["LR"], p["ARF"], p["HAT"]]
        cells = [f"{v:.4f}" for v in vals] + [f"{gap * (1 if reg else 100):+.2f}{'' if reg else ' pt'}"]
        print(f"| {name} | {p['rows']:,} | {metric} | " + " | ".join(cells) + " |")
    rates = [p["ARF_rate"] for p in peers.values()]
    print(f"\nARF learning rate here: median {sorted(rates)[len(rates) // 2]:,.0f} examples/s (predict + learn)")


if __name__ == "__main__":
    cmd, out = sys.argv[1], sys.argv[2]
    {"streams": write_streams, "peers": run_peers, "table": table}[cmd](out)
