"""The TFRecord feature cache's records and its reader.

A features directory holds, per split, ``{split}-{i:05d}-of-{n:05d}.tfrecord``
shards of ``tf.train.Example`` records

=============  ==========================================================
image_id       bytes
features       bytes: float16, row-major ``[H*W, k]`` (the m region vectors)
labels         int64 list: label ids
label_areas    float list aligned with ``labels``: area fraction of the
               class's largest object, -1 when unknown
=============  ==========================================================

beside each finished shard a ``.json`` with its counts and skipped images, and
``label_map.json`` and ``meta.json`` for the directory (`ofrnn_tf.features.shard_meta`).

`make_dataset` is the ``tf.data`` reader of evaluation and of code of one's own:
deterministic file listing, per-worker file sharding (before any shuffle),
``interleave`` over files, batched ``parse_example``, prefetch. Training builds its
input from the same pieces, `record_dataset` and `parse_batch_fn`
(`ofrnn_tf.training.trainer`): it resumes inside an epoch, gives every worker the
same number of steps and, in stage 2, reads M_map's outputs computed once. Before
reading, `record_dataset` walks each shard's record headers (cheap) and compares their
count with the shard's ``.json``, so a file cut short, even at a record boundary, is
named; a payload garbled behind intact headers shows only
while reading, as a `tf.errors.DataLossError` that names no file: code that reads a
split wraps the reading in `naming_corrupt_shards` (`ofrnn_tf.features.shard_checks`),
which then checks that split's shards in full and names the bad one. A record whose
features hold a NaN or an Inf is never written (`serialize_example`), and the reader
refuses one (`parse_batch_fn`): a single such value makes a channel's statistics NaN,
and with it every image's scores; `naming_corrupt_shards` names its shard, record and
image.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from ofrnn_tf.data import DataFileError
from ofrnn_tf.features import shard_checks
from ofrnn_tf.features.shard_checks import NON_FINITE_FEATURES
from ofrnn_tf.features.shard_meta import (
    cache_label_map, num_examples, read_meta, shard_files, shards_with_counts)
from ofrnn_tf.labels import LabelMap


def as_stored(features: tf.Tensor) -> tf.Tensor:
    """float32 `features` rounded as the cache stores them (`shard_meta.FEATURE_DTYPE`, to nearest,
    ties to even, float16's subnormals and overflow to ±inf included), bit for bit what a
    cast to float16 and back gives. In float32 arithmetic: a float16 op makes oneDNN log
    an error line on CPUs without AVX-512's float16 instructions, at every prediction."""
    bits = tf.bitcast(features, tf.int32)
    # float16 keeps 10 bits after the leading one, down to its smallest normal, 2^-14;
    # below that its steps are 2^-24 apart.
    exponent = tf.maximum(tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 23), 0xFF) - 127,
                          -14)
    step = tf.bitcast(tf.bitwise.left_shift(exponent - 10 + 127, 23), tf.float32)
    rounded = tf.round(tf.abs(features) / step) * step  # tf.round: ties to even
    rounded = tf.where(rounded > 65504.0, tf.constant(np.inf, tf.float32), rounded)
    sign = tf.bitwise.bitwise_and(bits, tf.constant(-2 ** 31, tf.int32))
    return tf.bitcast(tf.bitwise.bitwise_or(tf.bitcast(rounded, tf.int32), sign), tf.float32)


# Parallel reads and parses of an input pipeline, and batches it prefetches: fixed sizes,
# as `without_autotuning` turns tf.data's autotuner off.
INPUT_THREADS = 2


# -- writing -----------------------------------------------------------------

def serialize_example(image_id: str, features: np.ndarray, label_ids: Sequence[int],
                      label_areas: Sequence[float] | None = None) -> bytes:
    """One record. ``features`` is ``[H, W, k]`` or ``[m, k]``; stored as float16.

    Features float16 cannot hold (a NaN, or beyond its ±65504, which the cast makes
    ±inf) are refused naming the image (`DataFileError`): the reader refuses them too."""
    with np.errstate(over="ignore"):  # overflow is refused below
        stored = np.ascontiguousarray(features, dtype="<f2")
    if not np.isfinite(stored).all():
        held = "NaN" if np.isnan(stored).any() else "a value beyond float16's ±65504"
        raise DataFileError(f"image {image_id}: its feature maps hold {held}, which the "
                            f"float16 feature cache cannot store; the backbone's weights are "
                            f"the likely cause (check them), else leave the image out")
    raw = stored.tobytes()
    feature = {
        "image_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
        "features": tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw])),
        **_label_features(image_id, label_ids, label_areas),
    }
    # deterministic: the features map in one order, so a rebuilt cache is the same bytes
    # (checksums, rsync) and not only the same values.
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


def relabel(record: tf.train.Example, label_ids: Sequence[int],
            label_areas: Sequence[float] | None = None) -> None:
    """Gives a parsed record other labels (and object areas), in place."""
    image_id = record.features.feature["image_id"].bytes_list.value[0].decode()
    for key, feature in _label_features(image_id, label_ids, label_areas).items():
        record.features.feature[key].CopyFrom(feature)


def _label_features(image_id: str, label_ids: Sequence[int],
                    label_areas: Sequence[float] | None) -> dict[str, tf.train.Feature]:
    """A record's ``labels`` and ``label_areas`` (-1, unknown, for each label when none
    are given); areas that do not pair with the labels, or a label listed twice, are
    refused."""
    if label_areas is None:
        label_areas = [-1.0] * len(label_ids)
    if len(label_areas) != len(label_ids):
        raise ValueError(f"image {image_id}: {len(label_areas)} label areas for "
                         f"{len(label_ids)} labels")
    if len(set(label_ids)) != len(label_ids):  # parsed, its areas would add up
        twice = next(i for i in label_ids if list(label_ids).count(i) > 1)
        raise ValueError(f"image {image_id}: label id {twice} listed twice")
    return {
        "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=list(label_ids))),
        "label_areas": tf.train.Feature(float_list=tf.train.FloatList(value=list(label_areas))),
    }


# -- reading -----------------------------------------------------------------

def _finite_checked(features: tf.Tensor, image_ids: tf.Tensor) -> tf.Tensor:
    """`features` (``[B, values]`` as stored) once every value is finite; else an
    InvalidArgumentError naming the images whose record is not. One such value makes a
    channel's statistics NaN, and with it every image's scores; the fused oneDNN
    training step can drop it before the loss, which then stays finite."""
    finite = tf.reduce_all(tf.math.is_finite(features), axis=1)
    check = tf.debugging.Assert(tf.reduce_all(finite), [
        f"{NON_FINITE_FEATURES}, images", tf.boolean_mask(image_ids, tf.logical_not(finite))],
        summarize=5)
    with tf.control_dependencies([check]):
        return tf.identity(features)


def _parse_fn(num_positions: int, depth: int, num_classes: int, features_dtype=tf.float32):
    spec = {
        "image_id": tf.io.FixedLenFeature([], tf.string),
        "features": tf.io.FixedLenFeature([], tf.string),
        "labels": tf.io.VarLenFeature(tf.int64),
        "label_areas": tf.io.VarLenFeature(tf.float32),
    }

    # Plain graph code: AutoGraph has nothing to convert and only warns about the closure.
    @tf.autograph.experimental.do_not_convert
    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, spec)
        batch = tf.shape(serialized, out_type=tf.int64)[0]
        features = _finite_checked(tf.io.decode_raw(parsed["features"], tf.float16),
                                   parsed["image_id"])
        features = tf.cast(tf.reshape(features, [batch, num_positions, depth]), features_dtype)
        labels, areas = parsed["labels"], parsed["label_areas"]
        index = tf.stack([labels.indices[:, 0], labels.values], axis=1)
        shape = tf.stack([batch, tf.constant(num_classes, tf.int64)])
        multi_hot = tf.scatter_nd(index, tf.ones_like(labels.values, tf.float32), shape)
        area_map = tf.scatter_nd(index, areas.values, shape)
        return {"features": features, "labels": tf.minimum(multi_hot, 1.0),
                "label_areas": area_map, "image_id": parsed["image_id"]}

    return parse


def parse_batch_fn(features_dir: str, features_dtype=tf.float32):
    """Parses a batch of serialized records of ``features_dir`` into `make_dataset`'s dict.

    ``features_dtype=tf.float16`` keeps the features as stored (half the bytes to move;
    the consumer casts them). A record whose features hold a NaN or an Inf is refused
    (InvalidArgumentError naming its image, which `naming_corrupt_shards` turns into one
    naming its shard and record too).
    """
    height, width, depth = (int(d) for d in read_meta(features_dir)["feature_shape"])
    return _parse_fn(height * width, depth, cache_label_map(features_dir).num_classes,
                     features_dtype)


def split_bytes(features_dir: str, split: str) -> int:
    """Bytes of a split's shards on disk."""
    return sum(os.path.getsize(path) for path in shard_files(features_dir, split))


def parsed_split_mib(features_dir: str, split: str) -> float:
    """MiB a split takes in memory as `make_dataset` yields it: float32 features, labels
    and label areas (the image ids, a few bytes each, are left out)."""
    height, width, depth = (int(d) for d in read_meta(features_dir)["feature_shape"])
    classes = cache_label_map(features_dir).num_classes
    per_example = 4 * (height * width * depth + 2 * classes)
    return num_examples(features_dir, split) * per_example / 2 ** 20


def record_dataset(features_dir: str, split: str, *, label_map: LabelMap | None = None,
                   shuffle: bool = False, seed: int | None = None,
                   input_context: tf.distribute.InputContext | None = None,
                   verify_shards: bool | str = True) -> tf.data.Dataset:
    """This worker's serialized records of ``split``, unparsed; arguments as `make_dataset`.

    Shuffling these before `parse_batch_fn` keeps the compact float16 records in the
    shuffle buffer and parses whole batches in parallel, after the shuffle.
    """
    dir_map = cache_label_map(features_dir)
    if label_map is not None:
        label_map.check_same(dir_map)
    shards = shards_with_counts(features_dir, split)
    if verify_shards:
        shard_checks.verify_shards(shards, full=verify_shards == "full")
    files = [path for path, _ in shards]

    n, i = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
            if input_context is not None else (1, 0))
    if 1 < n <= len(files):
        files = files[i::n]
    elif n > 1:
        # Fewer files than workers: records are split, and every worker must split the
        # same sequence, so files are read in order here; the caller shuffles the records.
        return tf.data.TFRecordDataset(files).shard(n, i)

    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    cycle = min(len(files), 8)
    # tf.data refuses more parallel calls than files in the cycle (one shard a split, or
    # a worker's share of one).
    return ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle,
                         num_parallel_calls=min(INPUT_THREADS, cycle), deterministic=not shuffle)


def make_dataset(features_dir: str, split: str, batch_size: int, *,
                 label_map: LabelMap | None = None, shuffle: bool = False,
                 repeat: bool = False, seed: int | None = None,
                 input_context: tf.distribute.InputContext | None = None,
                 drop_remainder: bool = False, cache: bool = False,
                 shuffle_buffer: int = 1024,
                 verify_shards: bool | str = True) -> tf.data.Dataset:
    """Batches of cached features as a ``tf.data.Dataset``.

    Elements: ``{"features": float32 [B, m, k], "labels": float32 [B, C] multi-hot,
    "label_areas": float32 [B, C] (largest-object area fraction; 0 absent, -1
    unknown), "image_id": string [B]}``.

    Args:
        features_dir: a directory written by `ofrnn_tf.features.extract`.
        split: split name (``train``, ``val``, ``test`` ...).
        batch_size: global batch size; with ``input_context`` each worker's dataset
            batches ``input_context.get_per_replica_batch_size(batch_size)``.
        label_map: the map the caller expects; a features directory built with
            another one is refused (`LabelMapMismatchError`).
        shuffle: shuffle file order and records (``shuffle_buffer`` records, each
            m·k·2 bytes, so keep it moderate); otherwise the order is deterministic.
            Workers split the data before any shuffle, so they never share a record.
        repeat: repeat forever.
        seed: shuffle seed.
        input_context: from ``distribute_datasets_from_function``; files (or, with
            fewer files than workers, records) are split between input pipelines.
        drop_remainder: drop the last partial batch.
        cache: keep the serialized records in memory after the first pass.
        verify_shards: True: walk the record headers of each local shard first, so
            a truncated file, a garbled header or a record count other than the
            shard's ``.json`` records fails here with the file's name;
            ``"full"``: read every record and its checksum once (garbled payloads
            too; costs a pass over the data); False: no check.
    """
    ds = record_dataset(features_dir, split, label_map=label_map, shuffle=shuffle, seed=seed,
                        input_context=input_context, verify_shards=verify_shards)
    per_worker_batch = (input_context.get_per_replica_batch_size(batch_size)
                        if input_context is not None else batch_size)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(per_worker_batch, drop_remainder=drop_remainder)
    if input_context is None and not repeat:  # a known length: progress bars show a total
        n = num_examples(features_dir, split)
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            n // per_worker_batch if drop_remainder else -(-n // per_worker_batch)))
    ds = ds.map(parse_batch_fn(features_dir),
                num_parallel_calls=INPUT_THREADS, deterministic=not shuffle)
    return ds.prefetch(INPUT_THREADS).with_options(without_autotuning())


def without_autotuning(single_threaded_ops: bool = False) -> tf.data.Options:
    """tf.data options with the autotuner off. An iterator's destructor waits for the
    autotuner's thread: it held the end of an extraction for up to a minute, and of a
    training epoch for 1.5 to 5 s; the input work is small next to the model's, so fixed
    sizes (`INPUT_THREADS`) do. `single_threaded_ops` keeps each op on one thread,
    leaving the cores to a training step instead of competing with it."""
    options = tf.data.Options()
    options.autotune.enabled = False
    if single_threaded_ops:
        options.threading.max_intra_op_parallelism = 1
    return options
