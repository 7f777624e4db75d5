"""Feature extraction throughput: the full pipeline vs. the bare backbone, and the reader.

On N benchmark canvases (JPEG files built by ``ofrnn_tf.data.fashion_canvases``) it
measures, in one run:

- ``predict``: ``backbone.feature_model.predict`` on the already decoded and
  preprocessed images (the bare backbone, nothing else);
- ``extract``: `extract_split` end to end (read, decode, resize, backbone,
  float16, serialise, write shards);
- their ratio (goal: ≥ 0.9, i.e. decoding and writing hide behind the backbone);
- the bare backbone as its weights lay it out (a batch norm after each convolution,
  ``get_backbone(fold_batch_norm=False)``) against the folded one the package runs,
  and how many float16 features the two give alike;
- ``reader``: examples/s of `make_dataset` over the written shards.

Each timed phase runs after an untimed warm-up (tracing). Predict and extraction
alternate for ``--repeats`` pairs; the ratio is the median over pairs (each pair
sees about the same load when the CPU is shared), and is also given in process CPU
time per image, which other work on the machine disturbs less. On Linux it also
gives the share of CPU time the hypervisor stole during the pairs: on a shared host
that slows both phases alike and can halve throughput. Prints the numbers and
appends them to benchmarks/RESULTS.md.

    python benchmarks/bench_extraction.py                      # 256 images, lite0, batch 32
    python benchmarks/bench_extraction.py --num_images=1024 --batch_size=64
    python benchmarks/bench_extraction.py --backbone=resnet152 --weights=none  # offline

About a minute on two CPU cores with the defaults.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before TensorFlow: ofrnn_tf sets its oneDNN default, read when TensorFlow loads.
import ofrnn_tf  # noqa: E402,F401
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks._results import cpu_times, publish, steal_share  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from ofrnn_tf.data.canvas_config import CanvasConfig  # noqa: E402
from ofrnn_tf.data.canvas_store import load_benchmark_split  # noqa: E402
from ofrnn_tf.data.example import Example  # noqa: E402
from ofrnn_tf.data.fashion_canvases import build_fashion_canvases  # noqa: E402
from ofrnn_tf.features import shard_meta, tfrecords  # noqa: E402
from ofrnn_tf.features.backbones import get_backbone  # noqa: E402
from ofrnn_tf.features.extract import extract_split  # noqa: E402
from ofrnn_tf.features.images import decode_and_resize  # noqa: E402
from ofrnn_tf.labels import LabelMap  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_images", 256, "Images to extract.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Batch size of both the pipeline and predict.",
                     lower_bound=1)
flags.DEFINE_string("backbone", "efficientnet_lite0", "Backbone name.")
flags.DEFINE_string("feature_layer", None, "Feature layer (default: the backbone's own, `top` "
                    "for EfficientNet-Lite0; the main job extracts `stage5`).")
flags.DEFINE_enum("weights", "imagenet", ["imagenet", "none"],
                  "Backbone weights; `none` (random) times a keras.applications backbone "
                  "whose ImageNet weights cannot be downloaded here (speed does not depend "
                  "on the values; the features do).")
flags.DEFINE_integer("num_shards", 4, "Shards written by the extraction.", lower_bound=1)
flags.DEFINE_integer("repeats", 2, "Timed pairs of the two phases, alternating (the ratio is "
                     "the median over pairs).", lower_bound=1)
flags.DEFINE_string("work_dir", None, "Scratch directory (default: a temporary one).")
flags.DEFINE_bool("append", True, "Append the numbers to benchmarks/RESULTS.md.")


def _canvases(work_dir: str, n: int) -> tuple[list[Example], LabelMap, str]:
    out = os.path.join(work_dir, "canvases")
    build_fashion_canvases(out, CanvasConfig(num_train=n, num_val=0, num_test=0),
                           progress=False)
    examples, label_map, _ = load_benchmark_split(out, "train")
    return examples, label_map, "fashion-canvas JPEGs 224x224"


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="bench_extraction_")
    os.makedirs(work_dir, exist_ok=True)
    n, bs = FLAGS.num_images, FLAGS.batch_size

    examples, label_map, source = _canvases(work_dir, n)
    examples = examples[:n]
    weights = None if FLAGS.weights == "none" else FLAGS.weights
    keras.utils.set_random_seed(0)  # random weights: the same for both layouts below
    backbone = get_backbone(FLAGS.backbone, FLAGS.feature_layer, weights=weights)
    print(f"{len(examples)} {source}; {backbone}", file=sys.stderr)

    # The same images, decoded and preprocessed up front for the bare backbone.
    decoded = np.stack([decode_and_resize(tf.io.read_file(e.image), backbone.image_size).numpy()
                        for e in examples])
    inputs = backbone.preprocess(tf.constant(decoded)).numpy()

    def run_predict(model) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        model.predict(inputs, batch_size=bs, verbose=0)
        return time.perf_counter() - wall, time.process_time() - cpu

    def batch_norms(model) -> int:
        return sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)

    keras.utils.set_random_seed(0)
    unfolded = get_backbone(FLAGS.backbone, backbone.feature_layer, weights=weights,
                            fold_batch_norm=False).feature_model
    if batch_norms(unfolded) == batch_norms(backbone.feature_model):
        unfolded = None  # nothing folded (VGG)
    else:
        unfolded.predict(inputs[:bs], batch_size=bs, verbose=0)

    def run_extract(tag: str) -> tuple[float, float, str]:
        out = os.path.join(work_dir, f"features_{tag}")
        shutil.rmtree(out, ignore_errors=True)
        wall, cpu = time.perf_counter(), time.process_time()
        summary = extract_split(examples, label_map, backbone, out, "train", batch_size=bs,
                                num_shards=FLAGS.num_shards, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if summary.examples_written != len(examples):
            raise RuntimeError(f"extraction wrote {summary.examples_written} of "
                               f"{len(examples)} examples: {summary.skipped[:3]}")
        return wall, cpu, out

    # Warm-up: trace predict and the extraction function, start tf.data machinery.
    backbone.feature_model.predict(inputs[:bs], batch_size=bs, verbose=0)
    warm = examples[: min(len(examples), 2 * bs)]
    extract_split(warm, label_map, backbone, os.path.join(work_dir, "features_warmup"),
                  "train", batch_size=bs, num_shards=1, progress=False)

    # Interleaved pairs: each pair's ratio sees about the same load from other work.
    pred, extr, kept_pred, out = [], [], [], None
    ticks = cpu_times()
    for r in range(FLAGS.repeats):
        pred.append(run_predict(backbone.feature_model))
        wall, cpu, out = run_extract(str(r))
        extr.append((wall, cpu))
        if unfolded is not None:
            kept_pred.append(run_predict(unfolded))
    steal = steal_share(ticks, cpu_times())
    n_img = len(examples)
    predict_ips = [n_img / w for w, _ in pred]
    extract_ips = [n_img / w for w, _ in extr]
    wall_ratio = float(np.median([e / p for e, p in zip(extract_ips, predict_ips)]))
    cpu_ratio = float(np.median([pc / ec for (_, pc), (_, ec) in zip(pred, extr)]))

    # Reader: whole epochs over the written shards; the first one is warm-up.
    reader_times = []
    for _ in range(FLAGS.repeats + 1):
        ds = tfrecords.make_dataset(out, "train", bs, label_map=label_map)
        start = time.perf_counter()
        count = sum(int(b["labels"].shape[0]) for b in ds)
        reader_times.append(time.perf_counter() - start)
        assert count == n_img, count
    reader_eps = n_img / min(reader_times[1:])
    shard_mb = sum(os.path.getsize(p) for p in shard_meta.shard_files(out, "train")) / 2 ** 20

    kept_rows = []  # the weights' own layout against the folded one
    if unfolded is not None:
        sample = inputs[:bs]
        folded = backbone.feature_model.predict(sample, verbose=0)
        reference = unfolded.predict(sample, verbose=0)
        same = float(np.mean(folded.astype(np.float16) == reference.astype(np.float16)))
        error = float(np.max(np.abs(folded - reference)) / np.max(np.abs(reference)))
        kept_ips = [n_img / w for w, _ in kept_pred]
        speedups = [p / q for p, q in zip(predict_ips, kept_ips)]
        kept_rows = [
            f"| bare backbone, {batch_norms(unfolded)} batch norms kept (the weights' layout), "
            f"images/s | "
            f"{max(kept_ips):.1f} | {np.median(kept_ips):.1f} |",
            f"| speed-up of folding {batch_norms(unfolded) - batch_norms(backbone.feature_model)}"
            f" batch norms, wall time per interleaved pair | "
            f"{max(speedups):.2f} | {np.median(speedups):.2f} |",
            f"| float16 features alike, folded vs kept ({len(sample)} images) | "
            f"{100 * same:.2f} % | float32 differences ≤ {error:.1e} of the largest feature |",
        ]

    h, w, k = backbone.feature_shape
    lines = [
        f"{n_img} {source}, backbone {backbone.name} ({backbone.feature_layer}, "
        f"{h}x{w}x{k} float16{'' if weights else ', random weights'}), batch {bs}, "
        f"{FLAGS.num_shards} shards, {FLAGS.repeats} "
        f"interleaved repeats. The CPU was shared with other work (load average "
        f"{os.getloadavg()[0]:.1f} at the end"
        + ("" if steal is None else
           f"; the hypervisor took {100 * steal:.0f} % of the CPU time during the pairs")
        + "): throughput varies between repeats; the per-pair ratio and the CPU-time "
        "ratio are the steadier figures.",
        "",
        "| measure | best | median |",
        "|---|---|---|",
        f"| bare backbone `feature_model.predict`, images/s | {max(predict_ips):.1f} | "
        f"{np.median(predict_ips):.1f} |",
        *kept_rows,
        f"| full extraction pipeline `extract_split`, images/s | {max(extract_ips):.1f} | "
        f"{np.median(extract_ips):.1f} |",
        f"| ratio extraction / predict, wall time per interleaved pair (goal ≥ 0.9) | "
        f"{max(e / p for e, p in zip(extract_ips, predict_ips)):.2f} | {wall_ratio:.2f} |",
        f"| ratio extraction / predict, process CPU time per image | "
        f"{max(pc / ec for (_, pc), (_, ec) in zip(pred, extr)):.2f} | {cpu_ratio:.2f} |",
        f"| reader `make_dataset`, examples/s | {reader_eps:.0f} | "
        f"{n_img / np.median(reader_times[1:]):.0f} |",
        f"| shards on disk | {shard_mb:.1f} MiB | "
        f"{shard_mb * 2 ** 20 / n_img / 1024:.0f} KiB/example |",
    ]
    publish("Feature extraction throughput", "\n".join(lines), FLAGS.append)
    if not FLAGS.work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    stops.run(main)
