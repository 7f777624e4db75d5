"""Stage-2 training throughput on cached features, and how long steps wait for input.

Builds the `Trainer` of `ofrnn_tf.pipeline.make_trainer` (serialized records
shuffled, batched, parsed in parallel and prefetched in `TrainingInputs.epoch_dataset`)
over a features directory: the one of a finished run (``--workdir``, the default the
main job's `runs/order_free`, with its model and settings) or N synthetic examples
(``--synthetic``: random float16 ``[m, k]`` maps with a weak label signal, 1–4 of C
labels each, the main job's model). For XLA off and on (``runtime.jit_compile``), and
for each input source — M_map's outputs computed once and kept in memory (the default
for the residual decoder when they fit in ``train.cache_records_mib``), the records
kept in memory (the default for a split that fits, otherwise), the records read from
the files every epoch — it times the stage-2 step function of
`Trainer._make_train_step`:

- ``pipeline``: whole epochs fed by the trainer's input pipeline, from building the
  epoch's dataset to its end, when the iterator is dropped (so the shuffle buffer's
  fill at the start of every epoch counts, as it does in training, and so does the
  end, which waited seconds on tf.data's autotuner before it was turned off);
- ``compute``: the same number of steps fed from a few batches of that pipeline held
  in memory (`Dataset.from_tensors`), i.e. the step alone;
- input-wait share = 1 − t_compute / t_pipeline per step (0 when negative; goal ≤ 5%),
  over the whole epoch and after its first step (the first step waits for the fill);
- ``reader``: examples/s of the trainer's input pipeline with no training, and of the
  bare `make_dataset` reader (batches of 256, no shuffle).

Tracing and XLA compilation are untimed warm-up; every step waits for its loss as the
trainer's loop does (``float(loss)``). Each measure is repeated; medians count (shares
are taken per repeat, from a compute block timed right before its pipeline epoch).
The CPU may be shared with other work: compare the numbers as ratios within one run.
Prints a markdown table and appends it to benchmarks/RESULTS.md.

    python benchmarks/bench_training.py --workdir=runs/order_free --xla=off
    python benchmarks/bench_training.py --workdir=runs/order_free --xla=off --shuffle_buffers=4096,1024
    python benchmarks/bench_training.py --synthetic --num_examples=2048
"""

from __future__ import annotations

import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before TensorFlow: ofrnn_tf sets its oneDNN default, read when TensorFlow loads.
import ofrnn_tf  # noqa: E402,F401
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks import _table_runs as table_runs  # noqa: E402
from benchmarks import _stops as stops  # noqa: E402
from benchmarks._results import host_load, publish  # noqa: E402
from ofrnn_tf import pipeline  # noqa: E402
from ofrnn_tf.features import run_cache  # noqa: E402
from ofrnn_tf.config.experiment import ExperimentConfig  # noqa: E402
from ofrnn_tf.features import shard_meta, tfrecords  # noqa: E402
from ofrnn_tf.labels import LabelMap  # noqa: E402
from ofrnn_tf.run_dir import RunDir, RunFacts  # noqa: E402
from ofrnn_tf.training.trainer import Trainer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/order_free", "A finished run: its features and settings.")
flags.DEFINE_bool("synthetic", False, "Time on synthetic features instead of a run's.")
flags.DEFINE_integer("num_examples", 2048, "Synthetic training examples to write.", lower_bound=1)
flags.DEFINE_list("feature_shape", ["14", "14", "112"],
                  "H, W, k of the synthetic maps (m = H·W; the main job's: 14,14,112).")
flags.DEFINE_integer("num_classes", 10, "C of the synthetic data.", lower_bound=1)
flags.DEFINE_integer("num_shards", 8, "Shards of the synthetic data.", lower_bound=1)
flags.DEFINE_integer("max_steps", 4, "T_max of the synthetic data.", lower_bound=1)
flags.DEFINE_list("xla", ["off", "on"], "XLA settings to time (off, on).")
flags.DEFINE_bool("head_outputs", True, "Time M_map's outputs computed once and kept in "
                  "memory (the default for the residual decoder when they fit in "
                  "`train.cache_records_mib`).")
flags.DEFINE_bool("memory", True, "Time the records kept in memory (`train.cache_records_mib`, "
                  "the default for splits that fit).")
flags.DEFINE_list("shuffle_buffers", ["default"], "Also time reading the files every epoch with "
                  "these shuffle buffers (examples; `default`: the run's `train.shuffle_buffer`); "
                  "empty: not at all.")
flags.DEFINE_integer("warmup_steps", 3, "Untimed steps per setting (tracing, compilation).",
                     lower_bound=0)
flags.DEFINE_integer("memory_batches", 4, "Distinct batches held in memory for `compute`.",
                     lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed repeats of each measure (medians count).", lower_bound=1)
flags.DEFINE_string("work_dir", None, "Scratch directory, kept (default: a temporary one).")
flags.DEFINE_bool("append", True, "Append the numbers to benchmarks/RESULTS.md.")
table_runs.define_cache_dir()  # --workdir's feature cache
flags.adopt_module_key_flags(table_runs)


# -- data ----------------------------------------------------------------------------
def write_synthetic_features(features_dir: str, num_examples: int, shape: tuple[int, int, int],
                             num_classes: int, num_shards: int, seed: int = 0) -> LabelMap:
    """A features directory of random float16 maps whose mean shifts with the labels."""
    height, width, depth = shape
    rng = np.random.default_rng(seed)
    label_map = LabelMap([f"class{c}" for c in range(num_classes)])
    os.makedirs(features_dir, exist_ok=True)
    label_map.save(features_dir)
    class_vectors = 0.3 * rng.standard_normal((num_classes, depth), dtype=np.float32)
    bounds = [i * num_examples // num_shards for i in range(num_shards + 1)]
    with tqdm(total=num_examples, desc="writing synthetic features", unit="ex",
              file=sys.stderr, dynamic_ncols=True) as bar:
        for s in range(num_shards):
            path = os.path.join(features_dir, shard_meta.shard_filename("train", s, num_shards))
            with tf.io.TFRecordWriter(path) as writer:
                for i in range(bounds[s], bounds[s + 1]):
                    count = int(rng.integers(1, min(4, num_classes) + 1))
                    labels = sorted(rng.choice(num_classes, size=count, replace=False).tolist())
                    maps = rng.standard_normal((height * width, depth), dtype=np.float32)
                    maps += class_vectors[labels].sum(0)
                    writer.write(tfrecords.serialize_example(f"synthetic{i:07d}", maps, labels))
                    bar.update(1)
            shard_meta.write_shard_stats(features_dir, "train", s, num_shards,
                                        bounds[s + 1] - bounds[s], [])
    shard_meta.write_meta(features_dir, {"backbone": "synthetic", "feature_layer": "random",
                                        "image_size": 0, "feature_shape": [height, width, depth]})
    return label_map


def make_trainer(config: ExperimentConfig, facts: RunFacts, features_dir: str,
                 workdir: str) -> Trainer:
    """The `Trainer` `train.py` builds over `features_dir` (without validation)."""
    return pipeline.make_trainer(config, facts, RunDir(workdir), features_dir,
                                 tf.distribute.get_strategy(), validate=False)


# -- timing --------------------------------------------------------------------------
def run_steps(train_step: Callable, iterator, steps: int) -> list[float]:
    """Seconds of each step, each waiting for its loss like the trainer's loop."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = train_step(iterator)[0]  # (loss, per-step losses, outputs beyond float16)
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"non-finite loss {float(loss)} in the benchmark")
        times.append(time.perf_counter() - start)
    return times


def time_pipeline_epoch(trainer: Trainer, train_step: Callable,
                        epoch: int) -> tuple[list[float], float]:
    """Per-step seconds of one epoch (the first includes building the dataset and its
    fill, the last the end of the epoch), and the end alone: dropping the epoch's
    iterator, as the trainer's loop does when the epoch ends."""
    start = time.perf_counter()
    iterator = iter(trainer.inputs.epoch_dataset(2, epoch, 0))
    setup = time.perf_counter() - start
    times = run_steps(train_step, iterator, trainer.steps_per_epoch)
    start = time.perf_counter()
    del iterator
    end = time.perf_counter() - start
    times[0] += setup
    times[-1] += end
    return times, end


def memory_iterator(trainer: Trainer, batches: list[dict]):
    """The same batches, repeated, from memory (through the strategy like the real input)."""
    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensors(batches[0])
        for batch in batches[1:]:
            ds = ds.concatenate(tf.data.Dataset.from_tensors(batch))
        return ds.repeat()

    return iter(trainer.strategy.distribute_datasets_from_function(dataset_fn))


def time_reader(dataset, batches: int) -> tuple[float, int]:
    """Seconds to draw `batches` batches (all of them if fewer) and the examples drawn."""
    start, examples = time.perf_counter(), 0
    for i, batch in enumerate(dataset):
        examples += int(tf.nest.flatten(batch)[0].shape[0])
        if i + 1 == batches:
            break
    return time.perf_counter() - start, examples


def measure(trainer: Trainer, repeats: int) -> dict:
    """Per-step seconds of compute and of whole pipeline epochs, medians over `repeats`.

    Each repeat times a block of compute-only steps right before a pipeline epoch, and
    the input-wait shares are taken per repeat, so a change in the machine's load
    between repeats moves both sides of a ratio alike.
    """
    train_step = trainer._make_train_step(2)
    steps = trainer.steps_per_epoch
    try:
        run_steps(train_step, iter(trainer.inputs.epoch_dataset(2, 0, 0)),
                  min(FLAGS.warmup_steps, steps))
    except tf.errors.OpError as error:  # e.g. the step does not compile with XLA
        return {"error": compile_error_summary(error)}
    held = list(itertools.islice(iter(trainer.inputs.epoch_dataset(2, 0, 0)),
                                 min(FLAGS.memory_batches, steps)))
    memory = memory_iterator(trainer, held)
    run_steps(train_step, memory, 2)  # a new input signature may retrace

    per_repeat = []
    for r in range(repeats):
        compute = sum(run_steps(train_step, memory, steps)) / steps
        epoch, end = time_pipeline_epoch(trainer, train_step, epoch=1 + r)
        pipeline = sum(epoch) / steps
        after_first = sum(epoch[1:]) / (steps - 1) if steps > 1 else float("nan")
        per_repeat.append({"compute": compute, "pipeline": pipeline, "first_step": epoch[0],
                           "epoch_end": end, "after_first": after_first,
                           "share": wait_share(compute, pipeline),
                           "share_after_first": wait_share(compute, after_first)})
    summary = {key: statistics.median(r[key] for r in per_repeat) for key in per_repeat[0]}
    summary["epoch_end_max"] = max(r["epoch_end"] for r in per_repeat)
    return summary


def buffered_bytes_per_example(trainer: Trainer, record_bytes: float) -> float:
    """What one example takes in the shuffle buffer: its tensors, or its serialized record."""
    spec = trainer.inputs.examples_fn(tf.distribute.InputContext()).element_spec
    total = 0.0
    for leaf in tf.nest.flatten(spec):
        if leaf.dtype == tf.string or not leaf.shape.is_fully_defined():
            return record_bytes
        total += leaf.shape.num_elements() * leaf.dtype.size
    return total


def compile_error_summary(error: tf.errors.OpError) -> str:
    """The telling line of a (long, multi-line) step failure."""
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    telling = next((line for line in lines if "XLA" in line or "requires" in line), lines[0])
    return f"{type(error).__name__}: {telling[:320]}"


def wait_share(compute: float, pipeline: float) -> float:
    return max(0.0, 1.0 - compute / pipeline)


# -- main ----------------------------------------------------------------------------
def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    bad = [x for x in FLAGS.xla if x not in ("off", "on")]
    if bad or not FLAGS.xla:
        raise app.UsageError(f"--xla takes off and/or on; got {FLAGS.xla}")
    if FLAGS.repeats < 1 or FLAGS.memory_batches < 1 or FLAGS.warmup_steps < 1:
        raise app.UsageError("--repeats, --memory_batches and --warmup_steps must be ≥ 1")
    work_dir = FLAGS.work_dir or tempfile.mkdtemp(prefix="bench_training_")
    os.makedirs(work_dir, exist_ok=True)
    try:
        run(work_dir)
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)


def run(work_dir: str) -> None:
    """Writes or opens the features, times every XLA setting, prints and appends."""
    if not FLAGS.synthetic:
        config, facts = table_runs.run_config(table_runs.workdir_run())
        features_dir = run_cache.locate_features(config, facts)
        label_map = LabelMap(facts.label_names)
        source = f"features of the run {FLAGS.workdir} ({features_dir})"
    else:
        try:
            shape = tuple(int(d) for d in FLAGS.feature_shape)
        except ValueError:
            raise app.UsageError(f"--feature_shape must be three integers H,W,k; got "
                                 f"{FLAGS.feature_shape}") from None
        if len(shape) != 3 or min(shape) < 1:
            raise app.UsageError(f"--feature_shape must be three positive integers H,W,k; "
                                 f"got {FLAGS.feature_shape}")
        config = ExperimentConfig()
        if FLAGS.num_examples < config.train.batch_size or FLAGS.num_classes < 1:
            raise app.UsageError(f"--num_examples={FLAGS.num_examples} gives no batch of "
                                 f"{config.train.batch_size} (or --num_classes < 1)")
        features_dir = os.path.join(work_dir, "features")
        shutil.rmtree(features_dir, ignore_errors=True)
        label_map = write_synthetic_features(features_dir, FLAGS.num_examples, shape,
                                             FLAGS.num_classes, FLAGS.num_shards)
        facts = RunFacts(label_names=label_map.names, max_steps=FLAGS.max_steps,
                         label_order=None, small_area=None, features_name="synthetic",
                         features_fingerprint="synthetic", feature_shape=shape, image_size=0,
                         feature_layer="synthetic")
        source = "synthetic float16 features (1–4 labels, weak label signal)"
    meta = shard_meta.read_meta(features_dir)
    height, width, depth = (int(d) for d in meta["feature_shape"])
    num_train = shard_meta.num_examples(features_dir, "train")
    files = shard_meta.shard_files(features_dir, "train")
    shard_mib = tfrecords.split_bytes(features_dir, "train") / 2 ** 20

    rows, results, readers, buffered = [], {}, {}, 0.0
    load_before = os.getloadavg()[0]
    in_memory = {"cache_records_mib": max(1, config.train.cache_records_mib)}
    inputs = ([("M_map outputs", in_memory)] * FLAGS.head_outputs
              + [("memory", in_memory)] * FLAGS.memory)
    buffers = [config.train.shuffle_buffer if b == "default" else int(b)
               for b in FLAGS.shuffle_buffers]
    inputs += [("files", {"cache_records_mib": 0, "shuffle_buffer": b}) for b in buffers]
    if not inputs:
        raise app.UsageError("nothing to time: --nohead_outputs, --nomemory and no "
                             "--shuffle_buffers")
    for xla, (source_name, train) in itertools.product(FLAGS.xla, inputs):
        trainer = make_trainer(config.replace(runtime={"jit_compile": xla == "on"}, train=train),
                               facts, features_dir, os.path.join(work_dir, f"workdir_{len(results)}"))
        if source_name == "M_map outputs" and not trainer.inputs.cache_head_outputs:
            print(f"M_map's outputs ({trainer.inputs.head_outputs_mib:.0f} MiB) are not kept "
                  f"(another decoder, or over train.cache_records_mib): not timed",
                  file=sys.stderr)
            continue
        if source_name != "M_map outputs":
            # The records, as stage 2 reads them otherwise.
            trainer.inputs.cache_head_outputs = False
        if source_name == "memory" and not trainer.inputs.cache_examples:
            print(f"the split ({shard_mib:.0f} MiB) exceeds train.cache_records_mib: not timed "
                  f"from memory", file=sys.stderr)
            continue
        buffer = trainer.inputs.shuffle_buffer
        print(f"timing XLA {xla}, records from {source_name}, shuffle buffer {buffer}: "
              f"{trainer.steps_per_epoch} steps/epoch ...", file=sys.stderr, flush=True)
        results[xla, source_name, buffer] = measure(trainer, FLAGS.repeats)
        if source_name not in readers:
            buffered = buffered_bytes_per_example(trainer, shard_mib * 2 ** 20 / num_train)
            steps = trainer.steps_per_epoch
            own = [time_reader(trainer.inputs.epoch_dataset(2, 100 + r, 0), steps)
                   for r in range(FLAGS.repeats)]
            readers[source_name] = statistics.median(n / t for t, n in own)
        del trainer

    bare = [time_reader(tfrecords.make_dataset(features_dir, "train", 256, label_map=label_map),
                        10 ** 9) for _ in range(FLAGS.repeats)]
    readers["bare `make_dataset` reader, batches of 256, no shuffle"] = statistics.median(
        n / t for t, n in bare)
    load_after = os.getloadavg()[0]
    batch = config.train.batch_size
    model = config.model
    lines = [
        f"{num_train} {source}: m={height * width} ({height}x{width}), k={depth}, "
        f"C={label_map.num_classes}, T_max={facts.max_steps}, batch {batch}; model "
        f"{model.variant} (head {model.head}, decoder {model.decoder}, LSTM "
        f"{model.lstm_units}, FC {model.fc_units}), stage-2 steps {config.train.train_steps}; "
        f"{len(files)} shards, {shard_mib:.0f} MiB; a buffered example takes "
        f"{buffered / 2 ** 10:.0f} KiB. Stage-2 step of "
        f"`Trainer._make_train_step`; medians of {FLAGS.repeats} repeats. The CPU may be "
        f"shared with other work (the {host_load(load_before, load_after)}): compare the "
        f"numbers as ratios within this run.",
        "",
        "| XLA | records | shuffle buffer | ex/s with pipeline | ex/s compute only | input-wait share | "
        "ms/step pipeline | ms/step compute | first step of epoch (s) | "
        "wait share after first step | end of epoch (s), median / max |",
        "|:---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    failures = []
    for (xla, source_name, buffer), r in results.items():
        if "error" in r:
            rows.append(f"| {xla} | {source_name} | {buffer} | fails | fails | — | — | — | — | — "
                        f"| — |")
            failures.append(f"XLA {xla}: the stage-2 step fails: {r['error']}")
            continue
        rows.append(
            f"| {xla} | {source_name} | {buffer} | {batch / r['pipeline']:,.0f} | {batch / r['compute']:,.0f} | "
            f"{100 * r['share']:.1f}% | "
            f"{1000 * r['pipeline']:.1f} | {1000 * r['compute']:.1f} | {r['first_step']:.2f} | "
            f"{100 * r['share_after_first']:.1f}% | {r['epoch_end']:.2f} / "
            f"{r['epoch_end_max']:.2f} |")
    lines += rows
    lines += [""] + failures + [""] * bool(failures) + [
        f"Readers alone, examples/s (the trainer's `TrainingInputs.epoch_dataset`, batches "
        f"of {batch}, shuffle fill included, from each source): "
        + "; ".join(f"{name} {rate:,.0f}" for name, rate in readers.items()) + ".",
        "Input-wait share = 1 − t_compute / t_pipeline per step (goal ≤ 5%); a pipeline "
        "epoch is timed from building its dataset to the end of the epoch, when the "
        "trainer drops the epoch's iterator (its own column).",
    ]
    lines.append("`M_map outputs`: the frozen head's per-position outputs, computed once "
                 "(in the warm-up) and kept in memory; the pipeline yields example indices and "
                 "the step gathers their rows (so `compute` includes the gather); `memory`: the "
                 "records of the first epoch are kept (the warm-up fills them), every later "
                 "epoch shuffles all of them from memory and the step runs M_map on them; "
                 "`files`: every epoch reads the shards again through a shuffle buffer.")
    publish("Stage-2 training throughput and input wait", "\n".join(lines), FLAGS.append)


if __name__ == "__main__":
    stops.run(main)
