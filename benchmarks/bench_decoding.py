"""Beam-search decoding cost: loop against unrolled steps, XLA, and fused matrix products.

Builds the main job's model (the `benchmark` preset: spatial M_map, residual decoder)
with random weights on random maps of the main job's shape (m = 14·14 = 196 positions,
k = 112 channels), C = 10, T_max = 4, and times:

1. `make_decoder` (the whole beam search on precomputed features) per batch size and
   beam width K: the steps in a `tf.while_loop`, written out (`unroll`, what the
   export does), and the loop compiled with XLA;
2. one decoding step of `ResidualDecoderCell` at K = 3: as the cell runs it (the
   products sharing an input fused, one read-out of the attended features and scores,
   scales and biases folded in, the kernels joined once per call), with the products
   separate, and as run but with the kernels joined at every step (the work `prepare`
   moves out of the loop).

Untimed warm-up calls first (tracing, compilation); then calls until `--min_seconds`.
Prints markdown tables and appends them to benchmarks/RESULTS.md.

    python benchmarks/bench_decoding.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# Before TensorFlow: ofrnn_tf sets its oneDNN default, read when TensorFlow loads.
import ofrnn_tf  # noqa: F401
import tensorflow as tf
from absl import app, flags

from ofrnn_tf.config.experiment import ExperimentConfig
from ofrnn_tf.decoding.beam_search import beam_search
from ofrnn_tf.modeling.candidate_pool import CellState
from ofrnn_tf.modeling.model import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import check_int_list, publish  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["1", "32"], "batch sizes to time")
flags.DEFINE_list("beam_sizes", ["1", "3"], "beam sizes K to time")
flags.DEFINE_list("feature_shape", ["196", "112"], "m, k of the maps (the main job's)")
flags.DEFINE_integer("num_classes", 10, "C", lower_bound=1)
flags.DEFINE_integer("max_steps", 4, "T_max", lower_bound=1)
flags.DEFINE_integer("warmup_calls", 3, "untimed calls per setting", lower_bound=0)
flags.DEFINE_float("min_seconds", 2.0, "time each setting for at least this long", lower_bound=0)
check_int_list("batch_sizes")
check_int_list("beam_sizes")
check_int_list("feature_shape", length=2)
flags.DEFINE_bool("append", True, "append the results to benchmarks/RESULTS.md")


def seconds_per_call(fn, *args) -> float:
    for _ in range(FLAGS.warmup_calls):
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    calls, start = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - start < FLAGS.min_seconds:
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
        calls += 1
    return (time.perf_counter() - start) / calls


def separate_step(cell, context, state, beams):
    """The cell's step with its four products separate (the same weights and arithmetic)."""
    d = context["head_features"].shape[-1]
    scores = context["memory"][:, :, d:]
    query = tf.matmul(state.h, cell.query_kernel) + cell.query_bias
    recurrent = tf.matmul(state.h, cell.recurrent_kernel)
    query = tf.reshape(query, [-1, beams, d]) * d ** -0.5
    alpha = tf.nn.softmax(tf.matmul(query, context["head_features"], transpose_b=True), axis=-1)
    attended = tf.reshape(tf.matmul(alpha, context["head_features"]), [-1, d])
    attended_scores = tf.reshape(tf.matmul(alpha, scores), [-1, cell.num_classes])
    step_input = tf.concat([state.v_pred, state.y_tilde, attended, attended_scores], -1)
    gates = tf.matmul(step_input, cell.input_kernel) + recurrent + cell.lstm_bias
    i, f, g, o = tf.split(gates, 4, axis=-1)
    c = tf.sigmoid(f) * state.c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    fc1 = tf.nn.relu(tf.matmul(step_input, cell.fc1_input_kernel)
                     + tf.matmul(h, cell.fc1_hidden_kernel) + cell.fc1_bias)
    base = tf.reshape(tf.repeat(context["logits"][:, None], beams, 1), [-1, cell.num_classes])
    return base + cell.fc2(fc1), h, c


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    beam_sizes = [int(k) for k in FLAGS.beam_sizes]
    m, k = (int(v) for v in FLAGS.feature_shape)
    C, T = FLAGS.num_classes, FLAGS.max_steps
    config = ExperimentConfig()
    tf.keras.utils.set_random_seed(0)
    model = build_model(config.model, C, (m, k))
    kernel = model.cell.fc2.kernel  # a fresh residual decoder repeats M_map: give it weights
    kernel.assign(tf.random.normal(kernel.shape, stddev=0.5))
    features = {b: tf.random.normal([b, m, k], seed=b) for b in batch_sizes}

    lines = [f"The main job's model ({config.model.head} M_map, {config.model.decoder} decoder, "
             f"LSTM {config.model.lstm_units}, FC {config.model.fc_units}) with random weights "
             f"on random maps m={m}, k={k}; C={C}, T_max={T}, τ=0 (every path runs T_max steps).",
             "", "| batch | K | loop ms | unrolled ms | loop + XLA ms | unrolled / loop |",
             "|---:|---:|---:|---:|---:|---:|"]
    for beam_size in beam_sizes:
        decoders = {}
        for name, unroll, xla in (("loop", False, False), ("unrolled", True, False),
                                  ("xla", False, True)):
            decoders[name] = tf.function(
                lambda f, unroll=unroll: beam_search(model, f, beam_size=beam_size, max_steps=T,
                                                     unroll=unroll),
                jit_compile=xla, input_signature=[tf.TensorSpec([None, m, k], tf.float32)])
        for batch in batch_sizes:
            t = {name: seconds_per_call(fn, features[batch]) for name, fn in decoders.items()}
            lines.append(f"| {batch} | {beam_size} | {t['loop'] * 1e3:.2f} | "
                         f"{t['unrolled'] * 1e3:.2f} | {t['xla'] * 1e3:.2f} | "
                         f"{t['unrolled'] / t['loop']:.3f} |")
            print(lines[-1], flush=True)

    beams = 3
    lines += ["", f"One decoding step of the residual cell at K = {beams} (after step 1):", "",
              "| batch | fused (as run) ms | separate products ms | fused, kernels joined "
              "every step ms | separate / fused |", "|---:|---:|---:|---:|---:|"]
    cell = model.cell
    for batch in batch_sizes:
        context, state = model.start(features[batch])
        rows = batch * beams
        state = CellState(tf.random.normal([rows, cell.units]), tf.random.normal([rows, cell.units]),
                          tf.zeros([rows, C]), tf.fill([rows, C], 0.5))
        fused = tf.function(lambda: cell.predict(context, state, beam_size=beams)[0])
        separate = tf.function(lambda: separate_step(cell, context, state, beams)[0])
        d = context["head_features"].shape[-1]
        joined = tf.function(lambda: cell.predict(
            dict(context, weights=cell.prepare(
                context["head_features"], context["memory"][:, :, d:],
                context["logits"])["weights"]),
            state, beam_size=beams)[0])
        t = {name: seconds_per_call(fn) for name, fn in
             (("fused", fused), ("separate", separate), ("joined", joined))}
        lines.append(f"| {batch} | {t['fused'] * 1e3:.3f} | {t['separate'] * 1e3:.3f} | "
                     f"{t['joined'] * 1e3:.3f} | {t['separate'] / t['fused']:.3f} |")
        print(lines[-1], flush=True)
    publish("Decoding cost: loop, unrolled steps, XLA, fused products", "\n".join(lines),
            FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
