"""TensorFlow's oneDNN CPU kernels off and on: extraction, training steps and serving.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it loads; unset, it turns oneDNN
on only on CPUs with AVX-512 VNNI or BF16, AVX-VNNI or AMX instructions. Importing
``ofrnn_tf`` first turns it on unless the environment says otherwise. This script measures what that default is worth on a
finished run (``--workdir``, whose cached canvases must still exist): for every
repeat, one child process per setting (order alternating, so both see about the
same load) times

- ``extract``: `extract_split` end to end on the first ``--num_images`` validation
  canvases (read, decode, resize, backbone, serialise), images/s;
- ``train step``: the run's stage-2 training step (`Trainer._make_train_step`) on a
  few batches held in memory, ms per step after warm-up;
- ``serve b1`` / ``serve b32``: the run's portable SavedModel loaded through TF
  Serving's session loader (`load_session`), median ms per call of batch 1 and 32.

Medians over repeats; the ratio column is off / on (above 1: oneDNN is faster).
Prints a markdown table and appends it to benchmarks/RESULTS.md.

    python benchmarks/bench_onednn.py --workdir=runs/order_free
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import host_load, publish  # noqa: E402
from benchmarks._session import SessionModel, median_seconds  # noqa: E402
from ofrnn_tf.run_dir import RunDir  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/order_free", "A finished run with its cached canvases.")
flags.DEFINE_integer("num_images", 512, "Validation canvases to extract per measure.",
                     lower_bound=1)
flags.DEFINE_integer("train_steps", 20, "Timed training steps per measure.", lower_bound=1)
flags.DEFINE_integer("serve_calls", 15, "Timed calls per batch size per measure.", lower_bound=1)
flags.DEFINE_integer("repeats", 2, "Child processes per setting.", lower_bound=1)
flags.DEFINE_bool("child", False, "Internal: measure once in this process, print JSON.")
flags.DEFINE_bool("append", True, "Append the numbers to benchmarks/RESULTS.md.")
table_runs.define_cache_dir()  # --workdir's canvases and feature cache
flags.adopt_module_key_flags(table_runs)

SETTINGS = ("0", "1")
MEASURES = (("extract", "images/s", True), ("train_step", "ms", False),
            ("serve_b1", "ms", False), ("serve_b32", "ms", False))


def measure_once(workdir: str) -> dict:
    """One process's numbers (TensorFlow loaded with this process's environment)."""
    import numpy as np
    import tensorflow as tf

    from ofrnn_tf import pipeline
    from ofrnn_tf.data import run_data
    from ofrnn_tf.features import run_cache
    from ofrnn_tf.export.saved_model import save_inference_module
    from ofrnn_tf.features.backbones import get_backbone
    from ofrnn_tf.features.extract import extract_split
    from ofrnn_tf.inference.module import InferenceModule

    run_dir = RunDir(workdir).require()
    config, facts = table_runs.run_config(run_dir)
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_onednn_") as tmp:
        data = run_data.load_data(config)
        examples = data.splits["val"][:FLAGS.num_images]
        backbone = get_backbone(config.features.backbone, config.features.layer)
        extract_split(examples[:64], data.label_map, backbone, os.path.join(tmp, "warm"), "val",
                      num_shards=1, progress=False)
        summary = extract_split(examples, data.label_map, backbone, os.path.join(tmp, "f"),
                                "val", batch_size=config.features.extract_batch_size,
                                progress=False)
        out["extract"] = summary.images_per_second

        features_dir = run_cache.locate_features(config, facts)
        trainer = pipeline.make_trainer(config, facts, RunDir(os.path.join(tmp, "run")),
                                        features_dir, tf.distribute.get_strategy(),
                                        validate=False)
        step = trainer._make_train_step(2)
        batches = list(itertools.islice(iter(trainer.inputs.epoch_dataset(2, 0, 0)), 4))
        held = iter(trainer.strategy.distribute_datasets_from_function(
            lambda ctx: tf.data.Dataset.from_tensor_slices(
                tf.nest.map_structure(lambda *x: tf.stack(x), *batches)).repeat()))
        for _ in range(3):
            float(step(held)[0])
        start = time.perf_counter()
        for _ in range(FLAGS.train_steps):
            float(step(held)[0])
        out["train_step"] = (time.perf_counter() - start) / FLAGS.train_steps * 1e3

        module = InferenceModule.from_run(run_dir)
        path = save_inference_module(module, os.path.join(tmp, "export"), version=1)
        model = SessionModel(path)
        encoded = [Path(p).read_bytes() for p in run_dir.example_images()]
        for batch in (1, 32):
            images = np.array([encoded[i % len(encoded)] for i in range(batch)], object)
            out[f"serve_b{batch}"] = median_seconds(lambda: model(images), FLAGS.serve_calls,
                                                    warmup=3) * 1e3
    return out


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.child:
        print("RESULT " + json.dumps(measure_once(FLAGS.workdir)), flush=True)
        return
    table_runs.run_config(table_runs.workdir_run())  # a wrong --workdir or --cache_dir fails here
    results = {s: [] for s in SETTINGS}
    load_before = os.getloadavg()
    for r in range(FLAGS.repeats):
        for setting in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "2"}
            args = [sys.executable, __file__, "--child", f"--workdir={FLAGS.workdir}",
                    f"--cache_dir={FLAGS.cache_dir}",
                    f"--num_images={FLAGS.num_images}", f"--train_steps={FLAGS.train_steps}",
                    f"--serve_calls={FLAGS.serve_calls}"]
            print(f"repeat {r + 1}/{FLAGS.repeats}, oneDNN {'on' if setting == '1' else 'off'} ...",
                  file=sys.stderr, flush=True)
            done = subprocess.run(args, env=env, capture_output=True, text=True)
            lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
            results[setting].append(json.loads(lines[-1][len("RESULT "):]))
    load_after = os.getloadavg()

    lines = [f"Run `{FLAGS.workdir}`; {FLAGS.num_images} validation canvases extracted, "
             f"{FLAGS.train_steps} stage-2 steps, {FLAGS.serve_calls} session-loader calls per "
             f"batch size; median of {FLAGS.repeats} child processes per setting.", "",
             "| measure | oneDNN off | oneDNN on | off / on (speed-up) |", "|:---|---:|---:|---:|"]
    for key, unit, higher_better in MEASURES:
        off = statistics.median(m[key] for m in results["0"])
        on = statistics.median(m[key] for m in results["1"])
        speedup = on / off if higher_better else off / on
        lines.append(f"| {key.replace('_', ' ')} ({unit}) | {off:.1f} | {on:.1f} | {speedup:.2f}× |")
    lines += ["", f"The {host_load(load_before[0], load_after[0])}."]
    publish("oneDNN CPU kernels off and on", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
