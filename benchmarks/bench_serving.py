"""Latency of the exported `serving_default` against its backbone alone: what the decoder adds.

Both sides are loaded SavedModels called in process on the same encoded images, and
both include decoding (JPEG/PNG → pixels) and resizing:

- `full`: the export's `serving_default` (decode + resize + backbone + beam search).
- `backbone`: a SavedModel of decode + resize + backbone only, written to a temporary
  folder by this script with the same ops as the export's image path
  (`ofrnn_tf.features.images.decode_and_resize` under `tf.map_fn`, then the backbone).

Comparing against the bare backbone on pre-decoded pixels would leave image decoding
out of the denominator only and make the ratio look worse than what a client sees;
comparing two loaded SavedModels keeps the runtime (graph optimisation, function
call overhead) the same on both sides, so the ratio isolates the decoder. The
decoder alone (`predict_features` on the backbone's features) is timed as well.
Before timing, `predict_features(backbone(images))` is checked to give the labels
of `serving_default(images)`.

Calls alternate between the models (order swapped every repeat) after untimed
warm-up calls; the median of the repeats is reported, per batch size. Goals:
ratio ≤ 1.15 at batch 1 and ≤ 1.10 at batch 32.

    python benchmarks/bench_serving.py --export_dir=exports/ofrnn \
        --images='data/fashion_canvases/images/test/*.jpg'

About 1-2 minutes on 2 CPU cores for the default 15 repeats (batch 32 dominates).
"""

from __future__ import annotations

import glob
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from tqdm import tqdm  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "model base path (newest version used) or a version folder")
flags.DEFINE_string("images", None, "glob of JPEG/PNG images (cycled to fill a batch)")
flags.DEFINE_string("backbone", "efficientnet_lite0", "backbone the export was made with")
flags.DEFINE_string("feature_layer", None, "its feature layer (default: the backbone's)")
flags.DEFINE_list("batch_sizes", ["1", "32"], "batch sizes to time")
flags.DEFINE_integer("repeats", 15, "timed calls per model and batch size")
flags.DEFINE_integer("warmup", 2, "untimed calls per model and batch size")
flags.DEFINE_bool("append", True, "append the results to benchmarks/RESULTS.md")

GOALS = {1: 1.15, 32: 1.10}


class DecodeAndBackbone(tf.Module):
    """Image bytes → backbone features, with the export's decode and resize ops."""

    def __init__(self, backbone):
        super().__init__(name="decode_and_backbone")
        self.backbone = backbone
        self.serve = tf.function(self._serve,
                                 input_signature=[tf.TensorSpec([None], tf.string, name="images")])

    def _serve(self, images):
        from ofrnn_tf.features.images import decode_and_resize

        size = self.backbone.image_size
        pixels = tf.map_fn(lambda encoded: decode_and_resize(encoded, size), images,
                           fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))
        return {"features": self.backbone(pixels)}


def resolve_export(export_dir: str) -> str:
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    from serving.local_server import find_latest_version

    return find_latest_version(export_dir)[1]


def xla_compiled(fn) -> bool:
    """Whether a loaded signature contains a function compiled with `jit_compile=True`."""
    graph = fn.graph.as_graph_def()
    attrs = [n.attr for n in graph.node] + [f.attr for f in graph.library.function] + [
        n.attr for f in graph.library.function for n in f.node_def]
    return any("_XlaMustCompile" in a and a["_XlaMustCompile"].b for a in attrs)


def load_backbone_only(export_features_shape, workdir: str):
    """Writes and loads the decode + resize + backbone SavedModel; returns its signature."""
    from ofrnn_tf.features.backbones import get_backbone

    backbone = get_backbone(FLAGS.backbone, FLAGS.feature_layer)
    if list(backbone.feature_shape) != list(export_features_shape):
        raise app.UsageError(
            f"--backbone={FLAGS.backbone} gives features {list(backbone.feature_shape)} but the "
            f"export's predict_features takes {list(export_features_shape)}: pass the backbone "
            f"(and --feature_layer) the run was trained with")
    module = DecodeAndBackbone(backbone)
    path = os.path.join(workdir, "decode_and_backbone")
    tf.saved_model.save(module, path,
                        signatures={"serving_default": module.serve.get_concrete_function()})
    return tf.saved_model.load(path).signatures["serving_default"]


def time_models(models: dict, inputs: dict, repeats: int, warmup: int, desc: str) -> dict:
    """Median seconds per call of each model, calls interleaved (order swapped per repeat)."""
    names = list(models)
    for name in names:
        for _ in range(warmup):
            tf.nest.map_structure(lambda t: t.numpy(), models[name](**inputs[name]))
    times = {name: [] for name in names}
    for r in tqdm(range(repeats), desc=desc, file=sys.stderr):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            out = models[name](**inputs[name])
            tf.nest.map_structure(lambda t: t.numpy(), out)  # wait for every output
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.export_dir or not FLAGS.images:
        raise app.UsageError("--export_dir and --images are required")
    paths = sorted(glob.glob(FLAGS.images))
    if not paths:
        raise app.UsageError(f"--images={FLAGS.images!r} matches no file")
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    encoded = [Path(p).read_bytes() for p in paths[:max(batch_sizes)]]
    load_before = os.getloadavg()

    export_path = resolve_export(FLAGS.export_dir)
    export = tf.saved_model.load(export_path)
    full = export.signatures["serving_default"]
    decoder = export.signatures["predict_features"]
    features_shape = decoder.structured_input_signature[1]["features"].shape[1:]
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp:
        backbone_only = load_backbone_only(features_shape, tmp)

        check = tf.constant([encoded[i % len(encoded)] for i in range(min(4, len(encoded)))])
        served = full(images=check)
        recomposed = decoder(features=backbone_only(images=check)["features"])
        if not np.array_equal(served["labels"].numpy(), recomposed["labels"].numpy()):
            sys.exit("the export's serving_default and predict_features(decode + backbone) "
                     "disagree: the --backbone given is not the export's")

        rows = []
        for batch in batch_sizes:
            images = tf.constant([encoded[i % len(encoded)] for i in range(batch)])
            features = backbone_only(images=images)["features"]
            medians = time_models(
                {"full": full, "backbone": backbone_only, "decoder": decoder},
                {"full": {"images": images}, "backbone": {"images": images},
                 "decoder": {"features": features}},
                FLAGS.repeats, FLAGS.warmup, f"batch {batch}")
            rows.append((batch, medians))
    load_after = os.getloadavg()

    settings = (f"K={int(export.beam_size.numpy())}, T_max={int(export.max_steps.numpy())}, "
                f"tau={float(export.tau.numpy()):.4g}, C={len(export.label_names.numpy())}, "
                f"decoder XLA {'on' if xla_compiled(decoder) else 'off'}")
    lines = [
        f"Export `{export_path}` ({settings}); backbone {FLAGS.backbone}, features "
        f"{list(features_shape)}; {len(paths)} image(s) from `{FLAGS.images}` cycled to fill "
        f"a batch. Both sides are loaded SavedModels called in process and both decode + "
        f"resize the encoded images; median of {FLAGS.repeats} interleaved calls after "
        f"{FLAGS.warmup} warm-up calls each. `decoder` = `predict_features` on precomputed "
        f"features (beam search alone).",
        "",
        "| batch | decode+backbone ms | serving_default ms | ratio | goal | decoder alone ms "
        "| 1 + decoder/backbone |",
        "|---:|---:|---:|---:|:---|---:|---:|",
    ]
    for batch, m in rows:
        ratio = m["full"] / m["backbone"]
        goal = GOALS.get(batch)
        verdict = "—" if goal is None else f"≤ {goal:.2f}: {'met' if ratio <= goal else 'missed'}"
        lines.append(f"| {batch} | {m['backbone'] * 1e3:.1f} | {m['full'] * 1e3:.1f} | "
                     f"{ratio:.3f} | {verdict} | {m['decoder'] * 1e3:.1f} | "
                     f"{1 + m['decoder'] / m['backbone']:.3f} |")
    lines += ["", f"The CPU is shared with other jobs: load average {load_before[0]:.1f} before, "
                  f"{load_after[0]:.1f} after (1-minute), so absolute times are noisy. Calls "
                  f"are interleaved so both sides see the same load; the last column "
                  f"(decoder timed alone, added to the backbone) cross-checks the ratio."]
    text = "\n".join(lines)
    print(text)
    if FLAGS.append:
        from benchmarks._results import append_result

        command = "python " + shlex.join([os.path.relpath(__file__)] + sys.argv[1:])
        print(f"appended to {append_result('Serving latency: export vs backbone alone', command, text)}",
              file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
