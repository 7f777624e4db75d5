"""Beam-search cost as T_max grows: time per call, first call and memory, per checkout.

Runs, for each T_max of ``--max_steps`` and each of ``--checkouts`` (this repository, or
another commit's tree), a child process that builds the main job's model with random
weights (the same seed in every checkout) for ``--num_classes`` classes and decodes a
batch of random maps of the main job's shape with `beam_search`: in a loop (what
evaluation and `Predictor` run) and with the steps written out (what the export runs).
It prints the seconds of the first call (tracing included) and of later calls, the
child's peak RSS, and a digest of the labels and log-probabilities, which a change of
how the decoder keeps its paths must leave as they were. The checkouts alternate.

    python benchmarks/bench_decoding_steps.py --checkouts=.,../before
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import (  # noqa: E402
    check_checkouts, check_int_list, checkout_label, child_result, measured_alternately,
    publish)
from benchmarks import _stops as stops  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("checkouts", ["."], "Repository trees whose decoder is measured.")
flags.DEFINE_list("max_steps", ["4", "20", "80"], "T_max values to time (each at most C).")
flags.DEFINE_integer("num_classes", 80, "C (80: MS-COCO's).", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Images per call.", lower_bound=1)
flags.DEFINE_integer("beam_size", 3, "K.", lower_bound=1)
flags.DEFINE_integer("calls", 3, "Timed calls after the first.", lower_bound=1)
flags.DEFINE_bool("append", True, "Append the numbers to benchmarks/RESULTS.md.")
check_int_list("max_steps")
check_checkouts()

_CHILD = r"""
import hashlib, json, resource, sys, time
sys.path.insert(0, ".")
import ofrnn_tf  # before TensorFlow: its oneDNN default
import numpy as np
import tensorflow as tf
from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.decoding.beam_search import beam_search
from ofrnn_tf.modeling.model import build_model

C, T, K, B, calls, unroll = (int(v) for v in sys.argv[1:7])
m, k = 196, 112  # the main job's stage-5 maps
tf.keras.utils.set_random_seed(0)
model = build_model(ExperimentConfig().model, C, (m, k))
kernel = model.cell.fc2.kernel  # a fresh residual decoder repeats M_map: give it weights
kernel.assign(tf.random.normal(kernel.shape, stddev=0.5, seed=1))
features = tf.random.normal([B, m, k], seed=2)
decode = tf.function(lambda f: beam_search(model, f, beam_size=K, max_steps=T,
                                           unroll=bool(unroll)),
                     input_signature=[tf.TensorSpec([None, m, k], tf.float32)])
start = time.perf_counter()
out = {key: value.numpy() for key, value in decode(features).items()}
first = time.perf_counter() - start
start = time.perf_counter()
for _ in range(calls):
    {key: value.numpy() for key, value in decode(features).items()}
seconds = (time.perf_counter() - start) / calls
digest = hashlib.sha256(out["labels"].tobytes()).hexdigest()[:10]
print(json.dumps({"first": first, "seconds": seconds, "digest": digest,
                  "log_prob": float(np.sum(out["log_prob"])),
                  "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(checkout: str, max_steps: int, unroll: bool) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return child_result(
        _CHILD, [str(FLAGS.num_classes), str(max_steps), str(FLAGS.beam_size),
                 str(FLAGS.batch_size), str(FLAGS.calls), str(int(unroll))],
        checkout, f"T_max={max_steps}", env=env)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    checkouts = list(FLAGS.checkouts)
    for steps in FLAGS.max_steps:
        if int(steps) > FLAGS.num_classes:
            raise app.UsageError(f"--max_steps: {steps} is above --num_classes, "
                                 f"{FLAGS.num_classes}")
    lines = [f"The main job's model with random weights, C={FLAGS.num_classes}, "
             f"K={FLAGS.beam_size}, a batch of {FLAGS.batch_size} random 196×112 maps, τ=0 "
             f"(every path runs T_max steps); seconds per call (mean of {FLAGS.calls} after "
             f"the first), the first call (tracing included), peak RSS of the process.",
             "", "| T_max | steps | checkout | s / call | first call s | peak RSS MiB | "
                 "labels digest, Σ log_prob |", "|---:|---|---|---:|---:|---:|---|"]
    turn = 0
    for steps in (int(t) for t in FLAGS.max_steps):
        for unroll in (False, True):
            results = measured_alternately(checkouts, turn,
                                           lambda path: measure(path, steps, unroll))
            turn += 1
            for path in checkouts:
                r = results[path]
                lines.append(f"| {steps} | {'unrolled' if unroll else 'loop'} | "
                             f"{checkout_label(path)} | {r['seconds']:.3f} | {r['first']:.2f} "
                             f"| {r['rss']:.0f} | {r['digest']}, {r['log_prob']:.4f} |")
                print(lines[-1], flush=True)
    publish("Decoding cost by T_max", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
