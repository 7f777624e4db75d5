"""The whole path of a run: data → cached features → Algorithm 1 → τ → test metrics.

`run` is what ``ofrnn-train`` (train.py) does. Every step is cached on disk (canvases,
feature shards, checkpoints, calibration), so rerunning a command resumes where the
last one stopped; a run folder moved elsewhere finds its feature cache again by
content fingerprint (`ofrnn_tf.features.cache`).
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import time
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from ofrnn_tf.config.experiment import ExperimentConfig, RuntimeConfig
from ofrnn_tf.data import DataNotFoundError
from ofrnn_tf.data.run_data import Data, check_beam_size, load_data, say_max_steps, t_max
from ofrnn_tf.data.splits import check_extracted_sizes, label_statistics
from ofrnn_tf.evaluation import evaluate as evaluation
from ofrnn_tf.features import cache, shard_checks, shard_meta, tfrecords
from ofrnn_tf.features.backbones import describe_backbone
from ofrnn_tf.features.run_cache import (
    check_evaluated_data, check_resumed_data, feature_cache_key, in_run_spelling,
    locate_features)
from ofrnn_tf.labels import LabelMap, listed_names
from ofrnn_tf.metrics import SIZE_SPLIT_KEYS, format_table
from ofrnn_tf.modeling.model import fixed_label_order
from ofrnn_tf.run_dir import RunDir, RunFacts, train_command
from ofrnn_tf.training.distribute import (
    check_batch_split, is_chief, is_chief_task, make_strategy)
from ofrnn_tf.training.run_state import (
    check_checkpoints_kept, check_finished_stages, latest_position, training_state)
from ofrnn_tf.training.trainer import Trainer
from ofrnn_tf.visualization.attention_maps import CAPTIONS
from ofrnn_tf.visualization.example_images import save_examples
from ofrnn_tf.status import log

RESULT_COLUMNS = ("C-P", "C-R", "C-F1", "O-P", "O-R", "O-F1", "mAP", "AP-small", "AP-large", "tau")


class Timer:
    """Collects how long each part of a run took (printed at the end of a run), and what
    a training command trained with (`trained_with`, recorded with its time)."""

    def __init__(self):
        self.parts: dict[str, float] = {}
        self.trained_with: dict = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.parts.items()}

    def summary(self) -> str:
        total = sum(self.parts.values())
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in self.parts.items())
        return f"{parts}; total {total:.0f}s ({total / 60:.1f} min)"


# -- features -------------------------------------------------------------------------
def prepare_features(config: ExperimentConfig, data: Data,
                     resumed: Optional[RunDir] = None) -> tuple[str, RunFacts]:
    """Extracts (or finds) the run's feature cache; returns it and the run's facts.

    With `resumed`, an existing run folder this run goes on with, the data (class names
    spelt as the run spells them, `in_run_spelling`) and the run's cache are checked
    first (`check_resumed_data`); a new run says so when it
    extracts the features of data an earlier-format cache holds (`cache.note_earlier_format`).

    Raises `SplitTooSmallError` when the images that could be decoded leave a split too
    small for the run (`check_extracted_sizes`): the cache stays, training does not start.
    """
    features = config.features
    if resumed is not None:
        data = in_run_spelling(data, resumed)
    key = feature_cache_key(config, data)
    if resumed is not None:
        key = check_resumed_data(config, data, key, resumed)
    else:
        cache.note_earlier_format(config.runtime.cache_dir, config.data.dataset,
                                  features.backbone, features.layer, key.inputs)
    name, fingerprint = key.name, key.fingerprint
    layer = describe_backbone(features.backbone, features.layer)["feature_layer"]
    directory = cache.features_dir(config.runtime.cache_dir, name)
    meta = cache.ensure_features(data.splits, data.label_map, directory, features.backbone,
                                 features.layer, fingerprint,
                                 batch_size=features.extract_batch_size,
                                 num_shards=features.num_shards, inputs=key.inputs)
    extracted = {split: meta["splits"][split] for split in data.splits}
    check_extracted_sizes({s: int(e["num_examples"]) for s, e in extracted.items()},
                          {s: len(e["skipped"]) for s, e in extracted.items()},
                          config.train.batch_size,
                          os.path.join(directory, shard_meta.META_FILENAME))
    counts, longest = label_statistics(data.splits["train"], data.label_map.num_classes)
    untrained = [name for name, count in zip(data.label_map.names, counts) if count == 0]
    if untrained:
        log(f"train: no training image carries {len(untrained)} of the {len(counts)} classes "
            f"({listed_names(untrained, _NAMED_CLASSES)}): the model cannot learn them, and "
            f"they still count in the metrics (C-P counts each as precision 0)")
    _note_classes_without_validation(data, counts)
    max_steps = t_max(longest, data.label_map)
    say_max_steps(data.splits, max_steps, config.model.variant)
    order = fixed_label_order(counts, config.model.variant)
    facts = RunFacts(
        label_names=data.label_map.names, max_steps=max_steps,
        label_order=None if order is None else tuple(order), small_area=data.small_area,
        features_name=name, features_fingerprint=fingerprint,
        feature_shape=tuple(int(d) for d in meta["feature_shape"]),
        image_size=int(meta["image_size"]), feature_layer=layer,
        train_examples=int(extracted["train"]["num_examples"]))
    return directory, facts


def note_changed_training_split(run_dir: RunDir, facts: RunFacts) -> None:
    """Says so when a resumed run's training split holds another number of examples
    than when it was last trained (an image skipped then, repaired and extracted since):
    its checkpoints' epochs and feature statistics were made on the earlier split."""
    before = run_dir.load()[1].train_examples
    if before is None or before == facts.train_examples or latest_position(run_dir) is None:
        return
    log(f"train: {facts.train_examples} examples now, {before} when {run_dir.path} was last "
        f"trained (an image extracted or dropped since): the run goes on from its checkpoint "
        f"over all {facts.train_examples}, its epoch in progress counted in the new number of "
        f"steps, its feature statistics still those of the {before}")


def eval_dataset(features_dir: str, facts: RunFacts, split: str, batch_size: int = 256):
    return tfrecords.make_dataset(features_dir, split, batch_size,
                                  label_map=LabelMap(facts.label_names))


# -- training and evaluation ------------------------------------------------------------
def make_trainer(config: ExperimentConfig, facts: RunFacts, run_dir: RunDir, features_dir: str,
                 strategy=None, validate: bool = True,
                 settings_before: Optional[ExperimentConfig] = None) -> Trainer:
    """The `Trainer` of a run: the training records of its feature cache and, with
    `validate`, validation after every epoch (see `evaluation.validate`); a resumed
    run's `settings_before`, as its folder held them, say what a change does."""
    label_map = LabelMap(facts.label_names)

    def train_examples(ctx: tf.distribute.InputContext):
        return tfrecords.record_dataset(features_dir, "train", label_map=label_map,
                                        input_context=ctx)

    parse = tfrecords.parse_batch_fn(features_dir, features_dtype=tf.float16)
    split_mib = tfrecords.split_bytes(features_dir, "train") / 2 ** 20
    # Before a checkpoint is restored against the number of examples the shards' records
    # give: a shard cut short or miscounted is named before any step, validation or save.
    shard_checks.verify_split(features_dir, "train")

    @tf.autograph.experimental.do_not_convert
    def parse_batch(serialized: tf.Tensor) -> dict:
        batch = parse(serialized)
        return {"features": batch["features"], "labels": batch["labels"]}

    def validate_fn(model, stage):
        with shard_checks.naming_corrupt_shards(features_dir, "val"):
            return evaluation.validate(model, val, stage, config.decoding, facts.max_steps)

    val = eval_dataset(features_dir, facts, "val") if validate else None
    strategy = strategy or make_strategy(config.runtime.strategy)
    def validation_logits_fn(model):
        with shard_checks.naming_corrupt_shards(features_dir, "val"):
            return evaluation.map_logits(model, val)

    trainer = Trainer(config, facts, run_dir, strategy,
                      shard_meta.num_examples(features_dir, "train"),
                      train_examples, validate_fn=validate_fn if validate else None,
                      parse_batch_fn=parse_batch,
                      records_mib=split_mib,
                      progress=validate,
                      validation_logits_fn=validation_logits_fn if validate else None,
                      settings_before=settings_before)
    if val is not None and trainer.inputs.fits_beside_training(
            tfrecords.parsed_split_mib(features_dir, "val")):
        # Read and parsed at the first validation, then kept: every epoch's validation
        # reads the same records (`validate_fn` and `validation_logits_fn` look `val` up
        # when called, so they read this one).
        val = val.cache()
    return trainer


def calibrate_and_evaluate(model, config: ExperimentConfig, facts: RunFacts, run_dir: RunDir,
                           features_dir: str, split: str = "test",
                           notes: Optional[dict] = None) -> dict:
    """τ for the configured beam width chosen on validation (saved in calibration.json),
    then every metric on `split` (saved, with `notes` added, as metrics_<split>.json, or
    metrics_<split>_k<K>.json at a width K other than the run's)."""
    decoding = config.decoding
    with shard_checks.naming_corrupt_shards(features_dir, "val"):
        calibration = evaluation.calibrate(model, eval_dataset(features_dir, facts, "val"),
                                           decoding, facts.max_steps)
    run_dir.save_calibration(calibration)
    log(f"τ = {calibration['tau']:.4g}"
        + (f" (beam width {decoding.beam_size})" if model.uses_decoder else ""))
    with shard_checks.naming_corrupt_shards(features_dir, split):
        metrics = evaluation.evaluate(
            model, eval_dataset(features_dir, facts, split), tau=calibration["tau"],
            beam_size=decoding.beam_size, max_steps=facts.max_steps,
            min_labels=decoding.min_labels, score_mix=calibration.get("score_mix", 0.0),
            small_area=facts.small_area)
    metrics["variant"] = config.model.variant
    absent = metrics.pop(evaluation.ABSENT_CLASSES_KEY, [])
    if absent:
        names = [facts.label_names[k] for k in absent]
        metrics[evaluation.ABSENT_CLASSES_KEY] = names
        num_classes = len(facts.label_names)
        log(f"{split}: no {split} image carries {len(names)} of the {num_classes} classes "
            f"({listed_names(names, _NAMED_CLASSES)}): C-R leaves them out, C-P counts each "
            f"as precision 0 (docs/model.md, Metrics), so C-P is at most "
            f"{100.0 * (num_classes - len(names)) / num_classes:.1f}")
    _note_skipped_images(features_dir, split, metrics)
    for key, size in zip(SIZE_SPLIT_KEYS, ("below", "at least")):
        if key in metrics and metrics[key] is None:
            log(f"{split}: in no {split} image is a label's largest item of an area {size} "
                f"{facts.small_area:g} of the image: {key} is not defined (n/a in the "
                f"table, null in the metrics file)")
    metrics.update(notes or {})
    run_dir.save_metrics(split, metrics, beam_size=decoding.beam_size)
    return metrics


# Class names a log line names before it counts the rest.
_NAMED_CLASSES = 5


def _note_classes_without_validation(data: Data, train_counts) -> None:
    """Names the trained classes that no validation image carries: validation's scores,
    which choose the epoch kept and τ, count each as precision 0 (docs/model.md,
    Metrics)."""
    num_classes = data.label_map.num_classes
    val_counts, _ = label_statistics(data.splits["val"], num_classes)
    absent = [name for name, trained, validated
              in zip(data.label_map.names, train_counts, val_counts) if trained and not validated]
    if absent:
        log(f"val: no validation image carries {len(absent)} of the {num_classes} classes "
            f"({listed_names(absent, _NAMED_CLASSES)}): the validation scores that choose the "
            f"epoch kept and τ count each as precision 0, so C-P there is at most "
            f"{100.0 * (num_classes - len(absent)) / num_classes:.1f}; a validation split "
            f"with every class chooses them better")


def _note_skipped_images(features_dir: str, split: str, metrics: dict) -> None:
    """Adds to `metrics` (``images_skipped``) and says how many images of `split` the
    extraction skipped, which its metrics leave out: the data's list counts them, the
    metrics' ``images`` does not, and the extraction named them only when it ran."""
    skipped = shard_meta.read_meta(features_dir)["splits"].get(split, {}).get("skipped", [])
    if not skipped:
        return
    metrics["images_skipped"] = len(skipped)
    first = skipped[0]
    log(f"{split}: the metrics are over the {metrics['images']} image(s) of the feature "
        f"cache; {len(skipped)} listed {split} image(s) were skipped when it was extracted "
        f"and are left out (first: {first['path']}: {first['reason']}; all under 'skipped' "
        f"in {os.path.join(features_dir, shard_meta.META_FILENAME)})")


def run(config: ExperimentConfig, workdir: str, mode: str = "train") -> dict:
    """Trains (or resumes) and evaluates a run (``mode="train"``), or only recalibrates τ
    and evaluates a finished one (``mode="eval"``); returns the test metrics.

    An existing run folder is checked against `config` before any data work
    (`IncompatibleRunError`), and in train mode against its data and feature cache before
    any feature extraction (`check_resumed_data`); a benchmark run's feature cache is
    looked up before its canvases are built. ``mode="eval"`` writes nothing of the
    run's settings: a ``--decoding.beam_size`` other than the run's adds a τ for that width
    to calibration.json and writes ``metrics_test_k<K>.json`` beside ``metrics_test.json``.
    It refuses a run that stopped before its last stage was validated
    (`UnfinishedRunError`) and records where an unfinished one stopped. The run folder is
    held while it runs: one that another process holds is refused (`RunInUseError`).
    """
    if mode not in ("train", "eval"):
        raise ValueError(f"mode must be 'train' or 'eval'; got {mode!r}")
    timer, run_dir = Timer(), RunDir(workdir)
    with _held(run_dir, config, mode), _callers_random_state():
        try:
            return _run(config, run_dir, mode, timer)
        except BaseException:  # Ctrl-C or an error once training began: its time counts too
            if mode == "train" and "training" in timer.parts and is_chief_task(
                    config.runtime.strategy):
                _record_timing(run_dir, mode, timer)
            raise


@contextlib.contextmanager
def _callers_random_state():
    """Gives Python's and NumPy's global random generators back as the caller left them:
    training seeds them with ``train.seed`` (`keras.utils.set_random_seed`), which would
    otherwise replay seed 0's draws in a notebook's own code after a run. TensorFlow's
    and Keras's global seeds stay the run's."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _held(run_dir: RunDir, config: ExperimentConfig, mode: str):
    """The run folder held for this run (`RunDir.exclusive`), so that a second run or a
    reader of its weights (`ofrnn-predict`, `Predictor.from_run`) is refused at once. A
    worker other than the chief of a multi-worker run shares the folder with its chief
    and holds nothing; eval mode does not create a folder that is not there (`_run`
    refuses it)."""
    if mode == "eval" and not run_dir.exists():
        return contextlib.nullcontext()
    if not is_chief_task(config.runtime.strategy):
        return contextlib.nullcontext()
    return run_dir.exclusive()


def results_table(config: ExperimentConfig, metrics: dict) -> str:
    """The test metrics as the commands print them: a row named by the variant (and the
    beam width K of a decoder); for the baseline, a second row at the fixed 0.5.
    Percentages at one decimal; τ, a probability, at three digits."""
    variant = config.model.variant
    rows = {}
    if variant == "baseline":
        rows[variant] = metrics
        if evaluation.FIXED_THRESHOLD_KEY in metrics:  # its own τ, the fixed 0.5, inside
            rows[f"{variant} at 0.5"] = metrics[evaluation.FIXED_THRESHOLD_KEY]
    else:
        rows[f"{variant} (K={metrics.get('beam_size', config.decoding.beam_size)})"] = metrics
    shown = {name: dict(row, **({"tau": f"{row['tau']:.3g}"} if "tau" in row else {}))
             for name, row in rows.items()}
    columns = [c for c in RESULT_COLUMNS if any(c in row for row in shown.values())]
    return format_table(shown, columns=columns) + "\n\n" + _results_key(variant, columns)


def _results_key(variant: str, columns: Sequence[str]) -> str:
    """The line under the results table that says what its numbers are: the metrics are
    percentages, τ a probability (its header is the metrics file's key, ``tau``)."""
    key = "C-/O-: per class / over all labels; metrics in percent"
    if "tau" in columns:
        key += ("; tau: the threshold τ on each class's score, chosen on validation"
                if variant == "baseline" else
                "; tau: the threshold τ on the path probability, chosen on validation")
    return key + "."


def _record_timing(run_dir: RunDir, mode: str, timer: Timer) -> Optional[str]:
    """Adds this command's time to the run folder's timing file (`RunDir.save_timing`);
    returns the file, or None where writing it failed (a full disk), which is said in one
    line, not raised: it must not hide the error that ended the run, nor fail a run whose
    results are written."""
    try:
        return run_dir.save_timing(mode, timer.rounded(), timer.trained_with)
    except Exception as error:  # a full disk, a timing file of another shape
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        log(f"time not recorded in {run_dir.timing_file(mode)}: {reason}")
        return None


def _run(config: ExperimentConfig, run_dir: RunDir, mode: str, timer: Timer) -> dict:
    workdir = run_dir.path
    data, unfinished, settings_before = None, None, None
    if mode == "eval":
        run_dir.require()
        unread = [f"--runtime.{name}={getattr(config.runtime, name)}"
                  for name in ("strategy", "mixed_precision", "jit_compile")
                  if getattr(config.runtime, name) != getattr(RuntimeConfig(), name)]
        if unread:  # run.json keeps no runtime settings to compare them with
            log(f"eval mode decodes in float32 on one device, without XLA: "
                f"{', '.join(unread)} {'is' if len(unread) == 1 else 'are'} not read")
    resuming = run_dir.exists()
    if resuming:
        run_dir.check_config(config)
        if mode == "train":
            check_checkpoints_kept(run_dir)
        check_finished_stages(run_dir, config, mode)
        settings_before = run_dir.load()[0]
        before = settings_before.decoding.beam_size
        if mode == "train" and config.decoding.beam_size != before:
            log(f"the run's beam width changes from K={before} to "
                f"K={config.decoding.beam_size}: stage-2 epochs validated from here on are "
                f"scored at K={config.decoding.beam_size} (and the best one so far again, "
                f"before stage 2 trains on), and the test metrics are its (--mode=eval scores "
                f"another width without changing the run)")
    if mode == "train":
        # Before any TensorFlow work: a multi-worker strategy configures the runtime.
        strategy = make_strategy(config.runtime.strategy)
        check_batch_split(strategy, config.train.batch_size)  # before data and run.json
        if resuming and config.data.dataset == "fashion_canvases":
            # The benchmark is made from the run's settings, checked above: its feature cache
            # is found (or refused) before its canvases are built again.
            locate_features(config, run_dir.load()[1], workdir)
        with timer("data"):
            try:
                data = load_data(config)
            except DataNotFoundError as error:
                if not resuming or config.data.dataset == "fashion_canvases":
                    raise
                raise DataNotFoundError(
                    f"{error} (a rerun takes its data flags from {run_dir.run_file}, relative "
                    f"paths read from the current folder {os.getcwd()}: give --data.data_dir "
                    f"or --data.manifest again)") from None
        with timer("features"):
            features_dir, facts = prepare_features(config, data,
                                                   run_dir if resuming else None)
        if resuming:
            note_changed_training_split(run_dir, facts)
        if is_chief(strategy):  # workers sharing a run folder must not race on its files
            run_dir.save(config, facts)
        with timer("training"), shard_checks.naming_corrupt_shards(features_dir, "train"):
            trainer = make_trainer(config, facts, run_dir, features_dir, strategy,
                                   settings_before=settings_before)
            # As the trainer resolved them: a float32 run goes on in float32 whatever asked.
            timer.trained_with = {"strategy": config.runtime.strategy,
                                  "replicas": strategy.num_replicas_in_sync,
                                  "jit_compile": config.runtime.jit_compile,
                                  "mixed_precision": trainer.mixed_precision}
            model = trainer.train()
        if not is_chief(strategy):
            log("training done; the chief worker evaluates and writes the results")
            return {}
        for beam_size, why in run_dir.drop_stale_calibrations().items():
            again = train_command(workdir, "--mode=eval", f"--decoding.beam_size={beam_size}")
            log(f"τ and test metrics for beam width {beam_size} were {why}: "
                f"removed ({again} makes them again)")
        if config.runtime.mixed_precision:
            # Evaluate what eval mode and the export compute: the best weights in float32.
            model, _, _ = run_dir.load_model()
    else:
        _, facts = run_dir.load()
        check_beam_size(config, facts.num_classes, facts.max_steps)
        check_evaluated_data(config, run_dir)
        unfinished = training_state(run_dir, config)
        model, _, _ = run_dir.load_model()
        if unfinished:
            log(f"WARNING: {workdir} is not finished (stopped at {unfinished}); evaluating its "
                f"best epoch so far")
        features_dir = locate_features(config, facts, workdir)
    with timer("evaluation"):
        metrics = calibrate_and_evaluate(
            model, config, facts, run_dir, features_dir, "test",
            notes={"unfinished_run": f"stopped at {unfinished}"} if unfinished else None)
    if data is not None:
        with timer("examples and attention pictures"):
            save_examples(run_dir, data.splits["test"], data.label_map)
    print(results_table(config, metrics))
    metrics_file = run_dir.metrics_file("test", config.decoding.beam_size)
    log(f"test metrics written to {metrics_file}"
        + (f"; attention pictures in {run_dir.attention_dir} (described in its {CAPTIONS})"
           if data is not None and os.path.isfile(os.path.join(run_dir.attention_dir, CAPTIONS))
           else "")
        + f"; curves: tensorboard --logdir {shlex.quote(run_dir.tensorboard_dir)}")
    recorded = _record_timing(run_dir, mode, timer)
    kept = ""
    if recorded:  # training's time adds up over reruns; an evaluation's is the last one's
        kept = (f"; every training command of the run summed in {recorded}" if mode == "train"
                else f"; written to {recorded}")
    log(f"time of this command: {timer.summary()}{kept}")
    return metrics
