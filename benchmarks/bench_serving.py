"""Serving latency of the exported model against its backbone alone, as TF Serving runs it.

From one finished run (`--workdir`), this writes three SavedModels of its
`InferenceModule` and loads each through TensorFlow Serving's loading path (a session
over the SignatureDef, `ofrnn_tf.serving.servable.load_session`):

- `portable`: the default export (no XLA; the decoding steps unrolled);
- `loop`: the same with the decoding steps in a `tf.while_loop` (what unrolling saves);
- `xla`: `--jit_compile` (XLA-compiled beam search; TF Serving needs an experimental
  flag to run it);
- `backbone`: the same module's `in_process.image_features` (guards, decode, resize,
  backbone): what serving would cost with no decoder at all;
- `head` (with `--variants=...,head`): the backbone and M_map alone, its per-class
  probabilities (label context included) and no beam search: how much of what the
  decoder adds is its spatial head, which the portable export cannot do without.

Every variant decodes the same encoded images. Calls alternate between the variants
(order rotated every repeat) after untimed warm-up calls; medians count. The ratio
`variant / backbone` per batch size is what the decoder adds. Before timing, the
labels of every variant are checked to be equal. Goals for the portable export:
≤ 1.10 at batch 1 and ≤ 1.05 at batch 32.

    python benchmarks/bench_serving.py --workdir=runs/order_free

About 2–4 minutes on 2 CPU cores for the default 25 repeats.
"""

from __future__ import annotations

import glob
import os
import sys
import tempfile
import time
from pathlib import Path

# Before TensorFlow: ofrnn_tf sets its oneDNN default, read when TensorFlow loads.
import ofrnn_tf  # noqa: F401
import numpy as np
import tensorflow as tf
from absl import app, flags
from tqdm import tqdm

from ofrnn_tf.export.saved_model import save_inference_module, signatures
from ofrnn_tf.inference.module import InferenceModule
from ofrnn_tf.run_dir import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import check_int_list, host_load, publish  # noqa: E402
from benchmarks._session import SessionModel  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/order_free", "A finished training run.")
flags.DEFINE_string("images", None, "Glob of images (default: the run's example images), "
                    "cycled to fill a batch.")
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to time.")
flags.DEFINE_list("variants", ["portable", "loop", "xla"], "Exports to time against the backbone: "
                  "portable (needed), loop, xla, head.")
flags.DEFINE_integer("repeats", 25, "Timed calls per variant and batch size.", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed calls per variant and batch size.", lower_bound=0)
check_int_list("batch_sizes")
flags.DEFINE_bool("append", True, "Append the results to benchmarks/RESULTS.md.")

GOALS = {1: 1.10, 32: 1.05}
VARIANTS = {"portable": {}, "loop": {"unroll": False}, "xla": {"jit_compile": True}}
HEAD = "head"  # not an InferenceModule setting: the module's M_map without its decoder


def head_probabilities(module: InferenceModule):
    """Encoded images → M_map's per-class probabilities, through the module's backbone."""
    height, width, depth = module.feature_shape

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")],
                 autograph=False)
    def head(images):
        features = module.in_process.image_features(images)["features"]
        logits = module.model(tf.reshape(features, [-1, height * width, depth]), training=False)
        return {"scores": tf.sigmoid(tf.cast(logits, tf.float32))}

    return head


def write_variants(run_dir: RunDir, out: str) -> dict[str, SessionModel]:
    models = {}
    for name in FLAGS.variants:
        if name == HEAD:
            continue
        module = InferenceModule.from_run(run_dir, **VARIANTS[name])
        path = save_inference_module(module, os.path.join(out, name), version=1)
        models[name] = SessionModel(path, "serving_default")
        if name == "portable":
            backbone = os.path.join(out, "backbone")
            tf.saved_model.save(module, backbone, signatures={
                **signatures(module), "image_features": module.in_process.image_features})
            models["backbone"] = SessionModel(backbone, "image_features")
            if HEAD in FLAGS.variants:
                head = os.path.join(out, HEAD)
                tf.saved_model.save(module, head, signatures={"head": head_probabilities(module)})
                models[HEAD] = SessionModel(head, "head")
    return {name: models[name] for name in ["backbone", *FLAGS.variants]}


def time_models(models: dict, images: np.ndarray, repeats: int, warmup: int, desc: str) -> dict:
    """Median wall seconds and median process CPU seconds per call of each model, calls
    interleaved (order rotated per repeat). CPU time counts the work of every thread and
    is the steadier figure when other jobs share the cores."""
    names = list(models)
    for name in names:
        for _ in range(warmup):
            models[name](images)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in tqdm(range(repeats), desc=desc, file=sys.stderr):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            models[name](images)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: (float(np.median(wall[name])), float(np.median(cpu[name]))) for name in names}


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    unknown = sorted(set(FLAGS.variants) - set(VARIANTS) - {HEAD})
    if unknown or "portable" not in FLAGS.variants:
        raise app.UsageError(f"--variants takes {sorted([*VARIANTS, HEAD])} and must hold "
                             f"portable")
    run_dir = table_runs.workdir_run()
    paths = sorted(glob.glob(FLAGS.images)) if FLAGS.images else run_dir.example_images()
    if not paths:
        raise app.UsageError("no images: pass --images or use a run with example images")
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    encoded = [Path(p).read_bytes() for p in paths]
    config, facts = run_dir.load()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        models = write_variants(run_dir, tmp)
        check = np.array(encoded[:4] * (4 // len(encoded[:4])), object)
        reference = models["portable"](check)["labels"]
        for name in FLAGS.variants:
            if name != HEAD and not np.array_equal(models[name](check)["labels"], reference):
                sys.exit(f"the {name} export decodes other labels than the portable one")
        rows = []
        for batch in batch_sizes:
            images = np.array([encoded[i % len(encoded)] for i in range(batch)], object)
            rows.append((batch, time_models(models, images, FLAGS.repeats, FLAGS.warmup,
                                            f"batch {batch}")))
    load_after = os.getloadavg()

    height, width, depth = facts.feature_shape
    lines = [
        f"Run `{FLAGS.workdir}` ({config.model.variant}; K={config.decoding.beam_size}, "
        f"T_max={facts.max_steps}, C={facts.num_classes}; {config.features.backbone} "
        f"{facts.feature_layer} maps {height}x{width}x{depth}); {len(encoded)} image(s) cycled "
        f"to fill a batch. Every model is a SavedModel loaded through TF Serving's session "
        f"loader; `backbone` is the same module's guards + decode + resize + backbone"
        + ("; `head` that and M_map's probabilities, no decoder" if HEAD in FLAGS.variants else "")
        + f". Median of {FLAGS.repeats} interleaved calls after {FLAGS.warmup} warm-up calls.",
        "",
        "| batch | clock | backbone ms | "
        + " | ".join(f"{v} ms | {v} / backbone" for v in FLAGS.variants) + " | goal (portable) |",
        "|---:|:---|---:|" + "---:|---:|" * len(FLAGS.variants) + ":---|",
    ]
    for batch, m in rows:
        for clock, i in (("wall", 0), ("CPU", 1)):
            cells = [f"{m[v][i] * 1e3:.1f} | {m[v][i] / m['backbone'][i]:.3f}"
                     for v in FLAGS.variants]
            goal = GOALS.get(batch)
            ratio = m["portable"][i] / m["backbone"][i]
            verdict = "—" if goal is None else f"≤ {goal:.2f}: {'met' if ratio <= goal else 'missed'}"
            lines.append(f"| {batch} | {clock} | {m['backbone'][i] * 1e3:.1f} | "
                         + " | ".join(cells) + f" | {verdict} |")
    lines += ["", f"The {host_load(load_before[0], load_after[0])}: compare the ratios, which "
                  f"share the load, rather than absolute times."]
    publish("Serving latency: portable and XLA exports against the backbone alone",
            "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
