"""The TFRecord feature cache: record schema, shard bookkeeping and the reader.

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
``label_map.json`` and ``meta.json`` (backbone, feature layer, image size,
feature shape, dtype, per-split shard counts and skipped images) for the directory,
with ``meta.json.lock``, which processes writing the directory at once take in turns.
A shard counts as finished only with both its files, the ``.json`` readable.

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
split wraps the reading in `naming_corrupt_shards`, which then checks that split's
shards in full and names the bad one. A record whose features hold a NaN or an Inf is
never written (`serialize_example`), and the reader refuses one (`parse_batch_fn`): a
single such value makes a channel's statistics NaN, and with it every image's scores;
`naming_corrupt_shards` names its shard, record and image.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import re
import struct
from typing import Sequence

import numpy as np
import tensorflow as tf

from ofrnn_tf.data import DataFileError
from ofrnn_tf.jsonio import read_json, write_json
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.tf_errors import op_error_text

META_FILENAME = "meta.json"
# Which of the served model's format checks an extraction applies, as its shards record
# it: 0 none, 1 the magic bytes of JPEG, PNG, GIF and BMP, 2 also the BMP layouts.
FORMAT_CHECKS = 2
FEATURE_DTYPE = "float16"


def as_stored(features: tf.Tensor) -> tf.Tensor:
    """float32 `features` rounded as the cache stores them (`FEATURE_DTYPE`, to nearest,
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
_SHARD_RE = re.compile(
    r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.(?P<ext>tfrecord|json)$")


class CorruptShardError(IOError):
    """A shard file is truncated or garbled.

    Attributes:
        path: the shard file.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


def shard_filename(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_stats_filename(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.json"


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


def write_shard_stats(features_dir: str, split: str, index: int, num_shards: int,
                      examples: int, skipped: Sequence[dict],
                      split_size: int | None = None, format_checked: int = 0) -> None:
    """The per-shard record that `read_meta` merges (written before the shard is final).

    ``split_size`` is the number of input images of the whole split, so that a later
    run on a changed image list does not mix two shardings. ``format_checked`` says which
    of the served model's format checks the extraction applied (`FORMAT_CHECKS`).
    """
    write_json(os.path.join(features_dir, shard_stats_filename(split, index, num_shards)), {
        "split": split, "shard": index, "num_shards": num_shards,
        "file": shard_filename(split, index, num_shards), "split_size": split_size,
        "examples": int(examples), "skipped": list(skipped),
        "format_checked": int(format_checked)})


def write_meta(features_dir: str, backbone_info: dict | None = None) -> dict:
    """Rewrites ``meta.json`` from the backbone info and the per-shard records on disk.

    A file that already says all of it is left alone, so that a complete cache can be
    read from a read-only location (a shared or mounted copy). Processes that write one
    cache at once take turns (``meta.json.lock``): a key one of them added (the content
    fingerprint) is never lost to another's rewrite of what it read before.
    """
    path = os.path.join(features_dir, META_FILENAME)
    with _held(path + ".lock"):
        found = read_meta_file(path) if os.path.exists(path) else None
        meta = dict(found or {})
        if backbone_info is not None:
            meta.update(backbone_info)
        meta["dtype"] = FEATURE_DTYPE
        meta = json.loads(json.dumps(_merge_shard_stats(features_dir, meta)))  # as read back
        if meta != found:
            write_json(path, meta)
    return meta


@contextlib.contextmanager
def _held(lock_path: str):
    """An exclusive `fcntl.flock` on `lock_path` while the block runs; none where the
    file cannot be made (a read-only cache, which nothing writes)."""
    try:
        # Never through a link: one planted there would make this process create a file
        # wherever it points.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise FeatureCacheDamagedError(f"{lock_path} is a symbolic link, which this lock "
                                           f"is never taken through: remove it") from None
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- metadata ----------------------------------------------------------------

def _load_meta_file(path: str) -> dict:
    """The JSON object in `path`; FileNotFoundError or ValueError naming the file."""
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return meta


class FeatureCacheDamagedError(ValueError):
    """A feature folder's ``meta.json`` or ``label_map.json`` cannot be read."""


class IncompleteSplitError(FeatureCacheDamagedError):
    """A split of a feature folder has shards not finished, or whose stats cannot be read."""


def read_meta_file(path: str) -> dict:
    """A directory's ``meta.json``; an unreadable one is named with its remedy (it is
    rebuilt from the backbone and the shards' ``.json`` records)."""
    try:
        return _load_meta_file(path)
    except ValueError as error:
        raise FeatureCacheDamagedError(
            f"{error}; delete it and rerun the extraction, which writes it again: "
            f"`ofrnn-extract` with the run's --config and --data.* flags (a new training run "
            f"does it too; a resumed one looks for the file first)") from None


def cache_label_map(features_dir: str) -> LabelMap:
    """The label map a feature folder was extracted with (`FeatureCacheDamagedError`
    naming the remedy when it is missing or unreadable)."""
    try:
        return LabelMap.load(features_dir)
    except (FileNotFoundError, ValueError) as error:
        raise FeatureCacheDamagedError(
            f"{error}: the feature cache {features_dir} cannot say which classes its labels "
            f"are; delete the folder {features_dir} and rerun to extract it again") from None


def read_shard_stats(path: str) -> dict:
    """A shard's ``.json`` record; FileNotFoundError or ValueError naming the file."""
    stats = _load_meta_file(path)
    absent = [key for key in ("file", "examples", "skipped") if key not in stats]
    if absent:
        raise ValueError(f"{path}: no {', '.join(absent)} entry")
    return stats


def unfinished_reason(features_dir: str, split: str, index: int, num_shards: int) -> str | None:
    """Why shard `index` of `split` is not finished, or None when it is.

    A shard is finished when its ``.tfrecord`` exists and its ``.json`` stats record
    reads: the reader needs both, so the extraction counts a shard done on the same
    terms (and extracts it again otherwise).
    """
    name = shard_filename(split, index, num_shards)
    stats = os.path.join(features_dir, shard_stats_filename(split, index, num_shards))
    if not os.path.exists(os.path.join(features_dir, name)):
        return f"{name} is missing"
    try:
        read_shard_stats(stats)
    except FileNotFoundError:
        return f"{name} has no stats file: {stats} is missing"
    except ValueError as error:
        return f"the stats file of {name} is unreadable: {error}"
    return None


def _merge_shard_stats(features_dir: str, meta: dict) -> dict:
    sets: dict[str, dict[int, dict]] = {}  # split -> shard count -> its finished shards
    for path in sorted(glob.glob(os.path.join(glob.escape(features_dir), "*.json"))):
        m = _SHARD_RE.match(os.path.basename(path))
        if not m:
            continue
        try:
            stats = read_shard_stats(path)
        except (FileNotFoundError, ValueError):  # an unfinished shard (`unfinished_reason`)
            continue
        shards = sets.setdefault(m["split"], {}).setdefault(int(m["count"]), {})
        if os.path.exists(os.path.join(features_dir, stats["file"])):
            shards[str(int(m["index"]))] = {
                "file": stats["file"], "examples": stats["examples"], "skipped": stats["skipped"],
                "format_checked": int(stats.get("format_checked", 0))}
    splits: dict[str, dict] = {}
    for split, by_count in sets.items():
        # Two commands that began one split at once with other shard counts each write a
        # set: the split is the complete one (of two, the finer), else the furthest on.
        count = max(by_count, key=lambda n: (len(by_count[n]) == n, len(by_count[n]), n))
        shards = by_count[count]
        ordered = {k: shards[k] for k in sorted(shards, key=int)}
        splits[split] = {
            "num_shards": count, "shards": ordered, "finished_shards": len(shards),
            "complete": len(shards) == count,
            "num_examples": sum(s["examples"] for s in shards.values()),
            "skipped": [s for k in ordered for s in shards[k]["skipped"]]}
    meta["splits"] = splits
    return meta


def read_meta(features_dir: str) -> dict:
    """``meta.json`` of a features directory, with per-split shard counts up to date.

    Keys: ``backbone``, ``feature_layer``, ``image_size``, ``feature_shape``
    ``[H, W, k]``, ``dtype``, and ``splits[split]`` with ``num_shards``,
    ``finished_shards``, ``complete``, ``num_examples``, ``shards`` and
    ``skipped`` (``{"path", "image_id", "reason"}`` per image).
    """
    path = os.path.join(features_dir, META_FILENAME)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no {META_FILENAME} in {features_dir}: not a features directory (create one "
            f"with `ofrnn-extract`, or let training extract it)")
    return _merge_shard_stats(features_dir, read_meta_file(path))


def _split_meta(meta: dict, features_dir: str, split: str) -> dict:
    splits = meta.get("splits", {})
    if split not in splits:
        raise ValueError(f"{features_dir} has no finished shard of split {split!r} "
                         f"(splits there: {sorted(splits)})")
    return splits[split]


def num_examples(features_dir: str, split: str) -> int:
    """Examples written for ``split`` (over the finished shards)."""
    return int(_split_meta(read_meta(features_dir), features_dir, split)["num_examples"])


def _complete_split(features_dir: str, split: str) -> dict:
    """The meta entry of `split`, refused unless every shard is finished (naming, for
    each missing one, which file is missing or unreadable)."""
    entry = _split_meta(read_meta(features_dir), features_dir, split)
    n = entry["num_shards"]
    if not entry["complete"]:
        reasons = [unfinished_reason(features_dir, split, i, n) or shard_filename(split, i, n)
                   for i in range(n) if str(i) not in entry["shards"]]
        raise IncompleteSplitError(f"{features_dir}: split {split!r} is incomplete: "
                         f"{'; '.join(reasons[:5])}{' ...' if len(reasons) > 5 else ''}; rerun "
                         f"the extraction (`ofrnn-extract` or training) to extract those shards")
    return entry


def shard_files(features_dir: str, split: str) -> list[str]:
    """The shard paths of a complete split, in shard order."""
    n = _complete_split(features_dir, split)["num_shards"]
    return [os.path.join(features_dir, shard_filename(split, i, n)) for i in range(n)]


def _shards_with_counts(features_dir: str, split: str) -> list[tuple[str, int]]:
    """``(path, examples its .json records)`` of each shard of a complete split."""
    entry = _complete_split(features_dir, split)
    return [(os.path.join(features_dir, shard_filename(split, i, entry["num_shards"])),
             int(entry["shards"][str(i)]["examples"])) for i in range(entry["num_shards"])]


# -- shard integrity -----------------------------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@tf.autograph.experimental.do_not_convert
def _plus_one(count: tf.Tensor, _) -> tf.Tensor:
    return count + 1


def count_elements(dataset: tf.data.Dataset) -> int:
    """The elements of `dataset`, counted by reading it through."""
    return int(dataset.reduce(np.int64(0), _plus_one))


def check_shard(path: str, full: bool = False) -> int:
    """Checks a TFRecord file and returns its record count.

    By default walks only the 12-byte record headers (length and its CRC): cheap,
    and it finds truncated files and garbled headers. ``full=True`` also reads every
    record with its data CRC (the whole file), which finds garbled payloads too.
    Raises `CorruptShardError` naming the file.
    """
    if full:
        try:
            return count_elements(tf.data.TFRecordDataset(path))
        except tf.errors.DataLossError as e:
            raise CorruptShardError(f"corrupt feature shard {path}: {op_error_text(e)}",
                                    path) from None
    size = os.path.getsize(path)
    count, offset = 0, 0
    with open(path, "rb") as f:
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                raise CorruptShardError(f"corrupt feature shard {path}: truncated record "
                                        f"header at byte {offset}", path)
            length, crc = struct.unpack("<QI", header)
            if _masked_crc32c(header[:8]) != crc:
                raise CorruptShardError(f"corrupt feature shard {path}: bad record header "
                                        f"at byte {offset} (garbled or not a TFRecord file)", path)
            offset += 12 + length + 4
            if offset > size:
                raise CorruptShardError(f"corrupt feature shard {path}: record at byte "
                                        f"{offset - length - 16} runs past the end of the "
                                        f"file (truncated)", path)
            f.seek(offset)
            count += 1
    return count


def verify_shard(path: str, expected: int, full: bool = False) -> None:
    """`check_shard`, and its record count against the `expected` one of its ``.json``:
    a file cut at a record boundary (or to 0 bytes) is sound record by record."""
    count = check_shard(path, full=full)
    if count != expected:
        raise CorruptShardError(f"corrupt feature shard {path}: {count} records, but its "
                                f".json records {expected} (the file was cut short)", path)


def _with_remedy(error: CorruptShardError) -> CorruptShardError:
    # The extraction skips the shards it finds finished (`extract_split`), so a
    # rerun rebuilds only the deleted one.
    return CorruptShardError(f"{error} -- delete {error.path} and rerun: the next run "
                             f"re-extracts only that shard", error.path)


def find_non_finite_record(features_dir: str, split: str) -> CorruptShardError | None:
    """Reads every record of ``split`` (a full pass over its files); returns the error
    naming the first whose features hold a NaN or an Inf (its shard, its index there and
    its image id), or None when none does."""
    for path in shard_files(features_dir, split):
        for index, serialized in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            feature = tf.train.Example.FromString(serialized).features.feature
            values = np.frombuffer(feature["features"].bytes_list.value[0], "<f2")
            if not np.isfinite(values).all():
                image_id = feature["image_id"].bytes_list.value[0].decode(errors="replace")
                held = "NaN" if np.isnan(values).any() else "an Inf"
                return CorruptShardError(f"corrupt feature shard {path}: record {index} (image "
                                         f"{image_id!r}) holds {held} in its features", path)
    return None


def find_corrupt_shard(features_dir: str, split: str) -> CorruptShardError | None:
    """Reads every record of ``split`` with its checksums (a full pass over its files);
    returns the error of the first corrupt or short shard, or None when all are sound."""
    for path, expected in _shards_with_counts(features_dir, split):
        try:
            verify_shard(path, expected, full=True)
        except CorruptShardError as error:
            return error
    return None


@contextlib.contextmanager
def naming_corrupt_shards(features_dir: str, split: str):
    """Names the shard behind a `tf.errors.DataLossError` raised while reading ``split``,
    and the record behind the reader's refusal of a NaN or an Inf (`parse_batch_fn`).

    The reader's header walk does not read payloads, and TensorFlow's error for a
    garbled one names no file (``corrupted record at 12``); nor does the reader's for a
    NaN, which names only the image. On those errors this checks the split's shards in
    full and raises `CorruptShardError` naming the bad one (and record) and how to
    rebuild it; when every shard reads back whole, the error is not a shard's and goes
    on unchanged. Costs nothing until an error.
    """
    try:
        yield
    except tf.errors.DataLossError as error:
        corrupt = find_corrupt_shard(features_dir, split)
        if corrupt is None:
            raise
        raise _with_remedy(corrupt) from error
    except tf.errors.InvalidArgumentError as error:
        corrupt = (find_non_finite_record(features_dir, split)
                   if NON_FINITE_FEATURES in str(error) else None)
        if corrupt is None:
            raise
        raise _with_remedy(corrupt) from error


# -- reading -----------------------------------------------------------------

# The reader's error for a record whose features hold a NaN or an Inf, as
# `naming_corrupt_shards` recognises it.
NON_FINITE_FEATURES = "feature records hold NaN or Inf"


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
    shards = _shards_with_counts(features_dir, split)
    if verify_shards:
        _verify_shards(shards, full=verify_shards == "full")
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


def verify_split(features_dir: str, split: str) -> None:
    """The header walk of every local shard of ``split`` against its ``.json`` count
    (`verify_shard`); `CorruptShardError`, with its remedy, for the first that fails."""
    _verify_shards(_shards_with_counts(features_dir, split), full=False)


def _verify_shards(shards: list[tuple[str, int]], full: bool) -> None:
    """`verify_shard` on each ``(path, expected records)``; the header walk only on local
    files (it reads every header), the full check on all. Errors carry their remedy."""
    for path, expected in shards:
        if full or "://" not in path:
            try:
                verify_shard(path, expected, full=full)
            except CorruptShardError as error:
                raise _with_remedy(error) from None


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
