#!/usr/bin/env python3
"""One-pass progressive quality of River and Vowpal Wabbit on eddy's test streams.

What it measures
----------------
For each of the four streams in ``tests/data`` (elec2, phishing,
image_segments, trump_approval) the examples are replayed once, in file order,
in test-then-train fashion: each example is first predicted by the current
model, the prediction is scored, and only then is the example learned.  The
score is accuracy for the classification streams and mean absolute error (MAE)
for the regression stream.  This is the same protocol as eddy's own
progressive figures, so the numbers can be read side by side.

Learners (all at their default hyper-parameters, nothing tuned):

* River, one pass (minibatch 1):
    - binary:      StandardScaler() | LogisticRegression()
    - multiclass:  StandardScaler() | OneVsRestClassifier(LogisticRegression())
    - regression:  StandardScaler() | LinearRegression()
  driven by an explicit predict_one / learn_one loop, the same order as
  ``river.evaluate.progressive_val_score``.  One difference: a prediction of
  None (the multiclass model before it has seen any class) is counted here as
  a miss over all n examples, whereas progressive_val_score leaves it out
  (image_segments: 1838/2310 = 0.7957 here, 1838/2309 = 0.7960 there).  As in
  River's defaults, the scaler updates its statistics in learn_one, not in
  predict_one.
* River, minibatch 32: the same pipelines, but the prediction lags one
  minibatch behind: 32 examples are predicted with the current model, then
  those 32 are learned (learn_one each, in order), and so on.  eddy's server
  trains minibatches of 32 by default, so this is the closer comparison for a
  served model.
* Vowpal Wabbit (``vowpalwabbit.Workspace``, quiet), predict then learn each
  example:
    - binary:      --loss_function logistic, labels -1/+1, the predicted class
                   is the sign of the raw score
    - multiclass:  --oaa 7 (squared loss, VW's default), classes numbered
                   1..7 in sorted name order (brickface, cement, foliage,
                   grass, path, sky, window); ``--vw-multiclass-loss logistic``
                   runs --oaa 7 --loss_function logistic instead
    - regression:  default squared loss
  VW's default update is adaptive, normalized and importance-invariant SGD
  (the --adaptive --normalized --invariant trio), learning rate 0.5, 18-bit
  hashing, with a constant (bias) feature; no feature scaling is applied by
  this script because the normalized update handles feature scale itself.

Throughput is examples per second for the whole progressive pass (predict +
learn of every example) of each learner; the VW input lines are formatted
before the clock starts, so VW's figure includes its text parsing but not the
Python string formatting.

How to run
----------
    pip install river vowpalwabbit
    python3 benches/peers/progressive_peers.py            # table
    python3 benches/peers/progressive_peers.py --json     # one JSON object
    python3 benches/peers/progressive_peers.py --data-dir /path/to/data
    python3 benches/peers/progressive_peers.py --vw-multiclass-loss logistic
"""

import argparse
import gzip
import json
import os
import sys
import time

try:
    import river
    from river import linear_model, multiclass, preprocessing
    import vowpalwabbit
except ImportError as exc:  # pragma: no cover - depends on the environment
    sys.exit(
        f"missing dependency ({exc}).\n"
        "Install the reference learners with:  pip install river vowpalwabbit"
    )

MINIBATCH = 32

# (stream name, task)
STREAMS = [
    ("elec2", "binary"),
    ("phishing", "binary"),
    ("image_segments", "multiclass"),
    ("trump_approval", "regression"),
]


def default_data_dir():
    """The repository's tests/data, found relative to this script."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "tests", "data"))


def load_stream(path):
    """Read a gzip JSON Lines file into a list of (features dict, label)."""
    examples = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            features = {name: float(value) for name, value in row["features"].items()}
            examples.append((features, row["label"]))
    return examples


# ---------------------------------------------------------------------------
# Scoring


class Score:
    """Running accuracy (classification) or MAE (regression)."""

    def __init__(self, task):
        self.task = task
        self.total = 0.0
        self.n = 0

    def update(self, y_true, y_pred):
        if self.task == "regression":
            self.total += abs(y_true - (0.0 if y_pred is None else y_pred))
        else:
            self.total += 1.0 if y_pred == y_true else 0.0
        self.n += 1

    def get(self):
        return self.total / self.n if self.n else float("nan")


# ---------------------------------------------------------------------------
# River


def river_model(task):
    """The default River pipeline for a task."""
    if task == "binary":
        return preprocessing.StandardScaler() | linear_model.LogisticRegression()
    if task == "multiclass":
        return preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(
            linear_model.LogisticRegression()
        )
    if task == "regression":
        return preprocessing.StandardScaler() | linear_model.LinearRegression()
    raise ValueError(task)


def river_label(task, label):
    """River's binary classifiers predict booleans; give them boolean targets."""
    return bool(label) if task == "binary" else label


def run_river(task, examples, minibatch=1):
    """Progressive pass with prediction lagging `minibatch` examples behind.

    minibatch=1 is plain test-then-train. Returns (score, seconds).
    """
    model = river_model(task)
    score = Score(task)
    start = time.perf_counter()
    for i in range(0, len(examples), minibatch):
        batch = examples[i : i + minibatch]
        # Predict the whole batch with the model as it is now...
        preds = [model.predict_one(x) for x, _ in batch]
        for (x, y), y_pred in zip(batch, preds):
            y = river_label(task, y)
            score.update(y, y_pred)
            # ...then learn the batch, one example at a time, in order.
            model.learn_one(x, y)
    return score.get(), time.perf_counter() - start


# ---------------------------------------------------------------------------
# Vowpal Wabbit


def vw_feature_name(name):
    """VW's text format reserves ':', '|' and whitespace in feature names."""
    return "".join("_" if c in ":| \t" else c for c in name)


def vw_args(task, classes, multiclass_loss):
    base = "--quiet"
    if task == "binary":
        return base + " --loss_function logistic"
    if task == "multiclass":
        args = base + f" --oaa {len(classes)}"
        if multiclass_loss != "squared":
            args += f" --loss_function {multiclass_loss}"
        return args
    if task == "regression":
        return base  # squared loss is VW's default
    raise ValueError(task)


def vw_label(task, label, classes):
    if task == "binary":
        return "1" if label else "-1"
    if task == "multiclass":
        return str(classes.index(label) + 1)
    return repr(float(label))


def vw_lines(task, examples, classes):
    """Format examples as VW text lines (done before timing)."""
    lines = []
    for x, y in examples:
        feats = " ".join(f"{vw_feature_name(k)}:{v!r}" for k, v in x.items())
        lines.append(f"{vw_label(task, y, classes)} |f {feats}")
    return lines


def vw_decode(task, raw, classes):
    """Turn VW's prediction into a label comparable with the stream's label."""
    if task == "binary":
        return 1 if raw > 0 else 0
    if task == "multiclass":
        return classes[int(raw) - 1]
    return float(raw)


def run_vw(task, examples, multiclass_loss="squared"):
    """Predict then learn each example with VW. Returns (score, seconds)."""
    # VW's --oaa wants classes 1..K; number them in sorted name order.
    classes = sorted({y for _, y in examples}) if task == "multiclass" else None
    lines = vw_lines(task, examples, classes)
    vw = vowpalwabbit.Workspace(vw_args(task, classes, multiclass_loss))
    score = Score(task)
    start = time.perf_counter()
    for line, (_, y) in zip(lines, examples):
        score.update(y, vw_decode(task, vw.predict(line), classes))
        vw.learn(line)
    elapsed = time.perf_counter() - start
    vw.finish()
    return score.get(), elapsed


# ---------------------------------------------------------------------------
# Driver


def measure(data_dir, vw_multiclass_loss="squared"):
    results = {
        "versions": {
            "python": sys.version.split()[0],
            "river": river.__version__,
            "vowpalwabbit": vowpalwabbit.__version__,
        },
        "protocol": "one pass, stream order, predict then learn",
        "river_multiclass": "StandardScaler | OneVsRestClassifier(LogisticRegression)",
        "vw_multiclass": "--oaa 7"
        + ("" if vw_multiclass_loss == "squared" else f" --loss_function {vw_multiclass_loss}"),
        "minibatch": MINIBATCH,
        "streams": {},
    }
    for name, task in STREAMS:
        examples = load_stream(os.path.join(data_dir, f"{name}.jsonl.gz"))
        n = len(examples)
        r1, r1_s = run_river(task, examples, minibatch=1)
        rb, rb_s = run_river(task, examples, minibatch=MINIBATCH)
        vw, vw_s = run_vw(task, examples, vw_multiclass_loss)
        results["streams"][name] = {
            "task": task,
            "metric": "mae" if task == "regression" else "accuracy",
            "examples": n,
            "river": r1,
            f"river_minibatch{MINIBATCH}": rb,
            "vw": vw,
            "river_examples_per_sec": n / r1_s,
            f"river_minibatch{MINIBATCH}_examples_per_sec": n / rb_s,
            "vw_examples_per_sec": n / vw_s,
        }
    return results


def print_table(results):
    mb = results["minibatch"]
    v = results["versions"]
    print(
        f"progressive (test-then-train) one pass; river {v['river']}, "
        f"vowpalwabbit {v['vowpalwabbit']}, python {v['python']}"
    )
    header = (
        f"{'stream':<16}{'metric':<10}{'n':>7}"
        f"{'river':>10}{f'river mb{mb}':>12}{'vw':>10}"
        f"{'river ex/s':>13}{f'mb{mb} ex/s':>12}{'vw ex/s':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, s in results["streams"].items():
        print(
            f"{name:<16}{s['metric']:<10}{s['examples']:>7}"
            f"{s['river']:>10.4f}{s[f'river_minibatch{mb}']:>12.4f}{s['vw']:>10.4f}"
            f"{s['river_examples_per_sec']:>13,.0f}"
            f"{s[f'river_minibatch{mb}_examples_per_sec']:>12,.0f}"
            f"{s['vw_examples_per_sec']:>12,.0f}"
        )
    print()
    print("river multiclass: " + results["river_multiclass"])
    print(
        "accuracy: higher is better; mae: lower is better. VW: default adaptive, "
        "normalized, invariant SGD; binary = logistic loss, sign of raw score; "
        f"multiclass = {results['vw_multiclass']}."
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default_data_dir(), help="folder with the *.jsonl.gz streams")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--vw-multiclass-loss",
        choices=["squared", "logistic", "hinge"],
        default="squared",
        help="loss for VW's --oaa (default: squared, VW's own default)",
    )
    args = parser.parse_args(argv)

    results = measure(args.data_dir, args.vw_multiclass_loss)
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=False))
    else:
        print_table(results)


if __name__ == "__main__":
    main()
