"""Calibration cost at the size of large validation splits, per checkout.

Runs, for each size of ``--sizes`` (N images × C classes × T_max steps) and each of
``--checkouts`` (this repository, or another commit's tree), a child process that makes
the same made-up `decode_all_steps` outputs (seeded: labels of about 3 in C per image,
best paths of decreasing probability, random M_map and path scores) and times the two
parts of `calibrate_outputs`: the τ search over the default grid
(`calibrate_from_outputs`) and the score-mix search (`choose_score_mix`, 11 mAPs). It
prints the seconds of each (the least of ``--repeats``) and a digest of both tables,
which a faster search must leave as they were. The checkouts alternate.

    python benchmarks/bench_calibration.py --checkouts=.,../before
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import (  # noqa: E402
    check_checkouts, checkout_label, child_result, measured_alternately, publish)
from benchmarks import _stops as stops  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("checkouts", ["."], "Repository trees whose calibration is measured.")
flags.DEFINE_list("sizes", ["40000x80x5", "50000x300x5"],
                  "N×C×T_max of the validation outputs (40,000 × 80: MS-COCO's validation "
                  "split and classes).")
flags.DEFINE_integer("repeats", 3, "Timed repeats of each part (the least counts).",
                     lower_bound=1)
flags.DEFINE_bool("append", True, "Append the numbers to benchmarks/RESULTS.md.")
check_checkouts()


def _size(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(text)
    return tuple(int(p) for p in parts)


def _valid_sizes(values) -> bool:
    try:
        return all(_size(v)[2] <= _size(v)[1] for v in values)
    except ValueError:
        return False


flags.register_validator("sizes", _valid_sizes, message=(
    "--sizes takes comma-separated NxCxT (whole numbers, T at most C)"))

_CHILD = r"""
import hashlib, json, sys, time
sys.path.insert(0, ".")
import numpy as np
from ofrnn_tf.decoding.calibration import calibrate_from_outputs, choose_score_mix

n, c, t, repeats = (int(v) for v in sys.argv[1:5])
rng = np.random.default_rng(0)
y_true = (rng.random((n, c)) < 3 / c).astype(np.float32)
order = np.argsort(rng.random((n, c)), axis=1)[:, :t].astype(np.int32)
labels = np.where(np.arange(t)[None, None, :] <= np.arange(t)[None, :, None],
                  order[:, None, :], -1).astype(np.int32)
log_prob = np.cumsum(np.log(rng.uniform(0.3, 1.0, (n, t))), axis=1).astype(np.float32)
outputs = {"y_true": y_true, "step_labels": labels, "step_log_prob": log_prob,
           "v_prob": rng.random((n, c)).astype(np.float32),
           "path_scores": rng.random((n, c)).astype(np.float32)}
times = {}
for name, part in (("tau", calibrate_from_outputs), ("mix", choose_score_mix)):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = part(outputs)
        best = min(best, time.perf_counter() - start)
    times[name] = best
    times[name + "_digest"] = hashlib.sha256(repr(result).encode()).hexdigest()[:10]
print(json.dumps(times))
"""


def measure(checkout: str, size: tuple[int, int, int]) -> dict:
    return child_result(_CHILD, [*map(str, size), str(FLAGS.repeats)], checkout,
                        "x".join(map(str, size)))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    checkouts = list(FLAGS.checkouts)
    lines = [f"Made-up validation outputs (seeded; about 3 true labels in C per image); the "
             f"least seconds of {FLAGS.repeats} repeats of each part of `calibrate_outputs`: "
             f"the τ search over the default grid and the score-mix search; digests of "
             f"their results.", "",
             "| N × C × T_max | checkout | τ search s | score-mix search s | total s | "
             "digests (τ, mix) |", "|---|---|---:|---:|---:|---|"]
    for turn, text in enumerate(FLAGS.sizes):
        size = _size(text)
        results = measured_alternately(checkouts, turn, lambda path: measure(path, size))
        for path in checkouts:
            r = results[path]
            lines.append(f"| {size[0]:,} × {size[1]} × {size[2]} | {checkout_label(path)} | "
                         f"{r['tau']:.2f} | {r['mix']:.2f} | {r['tau'] + r['mix']:.2f} | "
                         f"{r['tau_digest']}, {r['mix_digest']} |")
            print(lines[-1], flush=True)
    publish("Calibration cost at scale", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
