"""Beam-search decoding throughput: images/s per batch size, beam size K and XLA on/off.

Builds an `OrderFreeRNN` with the default sizes (LSTM 256, attention 256, FC 512) on
random feature maps of the default backbone shape (m = 7·7 = 49 positions, k = 1280
channels of EfficientNet-Lite0), C = 10 classes, T_max = 4, and times
`ofrnn_tf.decoding.make_decoder` with τ = 0 (every path runs all T_max steps, the
worst case). The first calls (tracing, XLA compilation) are untimed warm-up. Prints a
markdown table and appends it to benchmarks/RESULTS.md.

    python benchmarks/bench_decoding.py                          # batch 1, 64; K = 1, 3, 5; XLA off/on
    python benchmarks/bench_decoding.py --min_seconds=0.5        # quicker, noisier

Takes about a minute on two CPU cores with the defaults.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks._results import append_result, machine_info  # noqa: E402
from ofrnn_tf.decoding.beam_search import make_decoder  # noqa: E402
from ofrnn_tf.modeling.model import OrderFreeRNN  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["1", "64"], "batch sizes to time")
flags.DEFINE_list("beam_sizes", ["1", "3", "5"], "beam sizes K to time")
flags.DEFINE_list("xla", ["off", "on"], "XLA settings to time (off, on)")
flags.DEFINE_integer("num_classes", 10, "C")
flags.DEFINE_integer("positions", 49, "m, feature-map positions (H·W)")
flags.DEFINE_integer("channels", 1280, "k, feature channels")
flags.DEFINE_integer("max_steps", 4, "T_max")
flags.DEFINE_float("threshold", 0.0, "τ (0: every path runs T_max steps)")
flags.DEFINE_integer("lstm_units", 256, "LSTM width")
flags.DEFINE_integer("attention_units", 256, "attention width")
flags.DEFINE_integer("fc_units", 512, "FC1 width")
flags.DEFINE_integer("warmup_calls", 3, "untimed calls per setting (the first one traces/compiles)")
flags.DEFINE_float("min_seconds", 2.0, "time each setting for at least this long")
flags.DEFINE_integer("min_calls", 5, "and for at least this many calls")
flags.DEFINE_string("results", str(Path(__file__).resolve().parent / "RESULTS.md"),
                    "markdown file the results are appended to ('' to skip)")


def _ints(name: str, values) -> list[int]:
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--{name} must be a comma-separated list of integers; got {values}")
    if not out or min(out) < 1:
        raise app.UsageError(f"--{name} values must be ≥ 1; got {out}")
    return out


def time_decoder(decode, features: tf.Tensor) -> tuple[float, int]:
    """Seconds per call (after warm-up) and the number of timed calls."""
    for _ in range(FLAGS.warmup_calls):
        decode(features)["num_labels"].numpy()
    calls, start = 0, time.perf_counter()
    while calls < FLAGS.min_calls or time.perf_counter() - start < FLAGS.min_seconds:
        decode(features)["num_labels"].numpy()  # .numpy() waits for the device
        calls += 1
    return (time.perf_counter() - start) / calls, calls


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    batch_sizes = _ints("batch_sizes", FLAGS.batch_sizes)
    beam_sizes = _ints("beam_sizes", FLAGS.beam_sizes)
    bad = [x for x in FLAGS.xla if x not in ("off", "on")]
    if bad or not FLAGS.xla:
        raise app.UsageError(f"--xla takes off and/or on; got {FLAGS.xla}")

    tf.keras.utils.set_random_seed(0)
    m, k, C = FLAGS.positions, FLAGS.channels, FLAGS.num_classes
    model = OrderFreeRNN(num_classes=C, lstm_units=FLAGS.lstm_units,
                         attention_units=FLAGS.attention_units, fc_units=FLAGS.fc_units)
    model.build((None, m, k))
    features = {b: tf.random.normal([b, m, k], seed=b) for b in batch_sizes}

    lines = [
        f"Random weights and features: m={m}, k={k}, C={C}, T_max={FLAGS.max_steps}, "
        f"τ={FLAGS.threshold}, LSTM {FLAGS.lstm_units}, attention {FLAGS.attention_units}, "
        f"FC {FLAGS.fc_units}.",
        "",
        "| batch | K | XLA | images/s | ms/batch | timed calls |",
        "|---:|---:|:---:|---:|---:|---:|",
    ]
    print(machine_info())
    print("\n".join(lines), flush=True)
    for xla in FLAGS.xla:
        for beam_size in beam_sizes:
            decode = make_decoder(model, beam_size=beam_size, max_steps=FLAGS.max_steps,
                                  threshold=FLAGS.threshold, jit_compile=(xla == "on"),
                                  feature_shape=(m, k))
            for batch in batch_sizes:
                seconds, calls = time_decoder(decode, features[batch])
                row = (f"| {batch} | {beam_size} | {xla} | {batch / seconds:,.0f} | "
                       f"{1000 * seconds:.2f} | {calls} |")
                print(row, flush=True)
                lines.append(row)
    if FLAGS.results:
        command = "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:])
        append_result("Beam-search decoding throughput", command, lines, path=FLAGS.results)


if __name__ == "__main__":
    app.run(main)
