"""The whole path of a run: data → cached features → Algorithm 1 → τ → test metrics.

`train.py` is a thin flag layer over these functions; each step is cached on disk
(canvases, feature shards, checkpoints), so rerunning a command resumes where the
last one stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from typing import Optional

import numpy as np
import tensorflow as tf

from ofrnn_tf.data.example import Example
from ofrnn_tf.data.registry import load_split
from ofrnn_tf.evaluation import evaluate as evaluation
from ofrnn_tf.features import tfrecords
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.modeling.model import fixed_label_order
from ofrnn_tf.training.run_config import RunConfig

SPLITS = ("train", "val", "test")
METRICS_FILENAME = "metrics_{split}.json"


def log(message: str) -> None:
    print(f"[ofrnn_tf] {message}", file=sys.stderr, flush=True)


class Timer:
    """Collects how long each part of a run took (printed at the end of train.py)."""

    def __init__(self):
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start

    def save(self, path: str) -> None:
        evaluation.save_json({k: round(v, 1) for k, v in self.parts.items()}, path)

    def summary(self) -> str:
        total = sum(self.parts.values())
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in self.parts.items())
        return f"{parts}; total {total:.0f}s ({total / 60:.1f} min)"


# -- data ---------------------------------------------------------------------------
# Data sets whose validation split is held out of train: COCO's val2014 is the test
# split of the paper's protocol, and NUS-WIDE has only train and test.
HOLD_OUT_VAL = ("coco", "nuswide")


def load_examples(dataset: str, paths: dict, val_fraction: float = 0.05
                  ) -> tuple[dict[str, list[Example]], LabelMap]:
    """Examples of train/val/test; data sets without a val split hold one out of train.

    The hold-out is a deterministic function of each image id (a hash), so it does
    not change between runs or when images are added. τ is never chosen on the test
    images.
    """
    splits, label_map = {}, None
    for split in ("train", "test", "val"):
        if split == "val" and dataset in HOLD_OUT_VAL:
            break
        try:
            examples, split_map, stats = load_split(dataset, split, label_map=label_map, **paths)
        except FileNotFoundError:
            if split != "val":  # a manifest folder may have no val file
                raise
            break
        label_map = label_map or split_map
        log(f"{dataset} {split}: {stats}")
        splits[split] = examples
    if "val" not in splits:
        def held_out(example: Example) -> bool:
            digest = hashlib.sha1(example.image_id.encode()).digest()
            return int.from_bytes(digest[:4], "big") / 2**32 < val_fraction

        train = splits["train"]
        splits["val"] = [e for e in train if held_out(e)]
        splits["train"] = [e for e in train if not held_out(e)]
        log(f"held out {len(splits['val'])} training images as the validation split")
    return {split: splits[split] for split in SPLITS}, label_map


def label_statistics(examples: list[Example], num_classes: int) -> tuple[list[int], int]:
    """Per-class counts and the largest label count of an image (T_max)."""
    counts = np.zeros(num_classes, np.int64)
    longest = 0
    for example in examples:
        counts[list(example.label_ids)] += 1
        longest = max(longest, len(example.label_ids))
    return counts.tolist(), longest


# -- features -----------------------------------------------------------------------
def ensure_features(splits: dict[str, list[Example]], label_map: LabelMap, features_dir: str,
                    backbone_name: str, feature_layer: Optional[str], batch_size: int = 32,
                    num_shards: int = 8) -> str:
    """Extracts each split's features unless its shards are all there already."""
    from ofrnn_tf.features.backbones import get_backbone
    from ofrnn_tf.features.extract import extract_split

    backbone = None
    for split, examples in splits.items():
        if _split_complete(features_dir, split):
            log(f"features {split}: cached in {features_dir}")
            continue
        if backbone is None:
            backbone = get_backbone(backbone_name, feature_layer or None)
        summary = extract_split(examples, label_map, backbone, features_dir, split,
                                batch_size=batch_size, num_shards=num_shards)
        log(f"features {split}: {summary}")
    return features_dir


def _split_complete(features_dir: str, split: str) -> bool:
    try:
        meta = tfrecords.read_meta(features_dir)
        info = meta["splits"][split]
        files = tfrecords.shard_files(features_dir, split)
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return len(files) == int(info["num_shards"])


def feature_shape(features_dir: str) -> tuple[int, int]:
    """`(m, k)` of the cached maps (m = H·W positions)."""
    height, width, depth = (int(d) for d in tfrecords.read_meta(features_dir)["feature_shape"])
    return height * width, depth


def eval_dataset(config: RunConfig, split: str, batch_size: int = 256):
    return tfrecords.make_dataset(config.features_dir, split, batch_size,
                                  label_map=LabelMap(config.label_names))


def make_run_config(base: RunConfig, train_examples: list[Example], label_map: LabelMap
                    ) -> RunConfig:
    """Fills in what the data decides: class names, T_max and the fixed label order."""
    counts, longest = label_statistics(train_examples, label_map.num_classes)
    base.label_names = label_map.names
    base.max_steps = min(longest, label_map.num_classes)
    order = fixed_label_order(counts, base.variant)
    base.label_order = None if order is None else tuple(order)
    return base


# -- training and evaluation -----------------------------------------------------------
def make_trainer(config: RunConfig, workdir: str, strategy, validate: bool = True):
    """The `Trainer` of a run: training records of `config.features_dir`, and (with
    `validate`) greedy decoding of the validation split after every epoch."""
    from ofrnn_tf.training.trainer import Trainer

    label_map = LabelMap(config.label_names)

    def train_examples(ctx: tf.distribute.InputContext):
        return tfrecords.record_dataset(config.features_dir, "train", label_map=label_map,
                                        input_context=ctx)

    parse = tfrecords.parse_batch_fn(config.features_dir)

    def parse_batch(serialized: tf.Tensor) -> dict:
        batch = parse(serialized)
        return {"features": batch["features"], "labels": batch["labels"]}

    num_train = tfrecords.num_examples(config.features_dir, "train")
    return Trainer(config, workdir, strategy, feature_shape(config.features_dir),
                   num_train, train_examples, validate_fn=validator(config) if validate else None,
                   parse_batch_fn=parse_batch, progress=validate)


def validator(config: RunConfig):
    """Greedy decoding of the validation split at its best τ: picks the best epoch."""
    val = eval_dataset(config, "val")

    def validate(model):
        return evaluation.validate(model, val, beam_size=1, max_steps=config.max_steps,
                                   min_labels=config.min_labels,
                                   objective=config.calibration_objective)

    return validate


def train(config: RunConfig, workdir: str, strategy):
    """Algorithm 1 with validation after every epoch; returns the best model."""
    return make_trainer(config, workdir, strategy).train()


def calibrate_and_evaluate(model, config: RunConfig, workdir: str, split: str = "test",
                           recalibrate: bool = False, calibrate_baseline: bool = False) -> dict:
    """τ on validation (cached in calibration.json), then every metric on `split`.

    The `baseline` variant keeps the paper's fixed 0.5 threshold on v_prob unless
    `calibrate_baseline`.
    """
    path = os.path.join(workdir, evaluation.CALIBRATION_FILENAME)
    fixed = config.variant == "baseline" and not calibrate_baseline
    calibration = None
    if os.path.exists(path) and not recalibrate:
        with open(path) as f:
            calibration = json.load(f)
        wanted = "fixed" if fixed else config.calibration_objective
        if calibration.get("beam_size") != config.beam_size or calibration.get("objective") != wanted:
            calibration = None
    if calibration is None and fixed:
        # DESIGN §1: M_map alone is the paper's "ResNet-baseline" row, thresholded at 0.5.
        calibration = {"tau": 0.5, "objective": "fixed", "beam_size": config.beam_size,
                       "max_steps": config.max_steps, "min_labels": config.min_labels}
        evaluation.save_json(calibration, path)
    if calibration is None:
        log(f"calibrating τ on the validation split (beam {config.beam_size}, "
            f"objective {config.calibration_objective})")
        calibration = evaluation.calibrate(
            model, eval_dataset(config, "val"), beam_size=config.beam_size,
            max_steps=config.max_steps, min_labels=config.min_labels,
            objective=config.calibration_objective)
        evaluation.save_json(calibration, path)
    log(f"τ = {calibration['tau']:.4g}")
    metrics = evaluation.evaluate(
        model, eval_dataset(config, split), tau=calibration["tau"], beam_size=config.beam_size,
        max_steps=config.max_steps, min_labels=config.min_labels, small_area=config.small_area)
    metrics["variant"] = config.variant
    evaluation.save_json(metrics, os.path.join(workdir, METRICS_FILENAME.format(split=split)))
    return metrics
