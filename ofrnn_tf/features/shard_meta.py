"""A feature folder's bookkeeping: shard file names, each finished shard's ``.json``
record, and ``meta.json``, merged from them.

Beside each finished ``{split}-{i:05d}-of-{n:05d}.tfrecord`` shard a ``.json`` with its
counts and skipped images, and ``label_map.json`` and ``meta.json`` (backbone, feature
layer, image size, feature shape, dtype, per-split shard counts and skipped images) for
the directory, with ``meta.json.lock``, which processes writing the directory at once
take in turns. A shard counts as finished only with both its files, the ``.json``
readable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import os
import re
from typing import Sequence

from ofrnn_tf.jsonio import read_json, write_json
from ofrnn_tf.labels import LabelMap

META_FILENAME = "meta.json"
# Which of the served model's format checks an extraction applies, as its shards record
# it: 0 none, 1 the magic bytes of JPEG, PNG, GIF and BMP, 2 also the BMP layouts.
FORMAT_CHECKS = 2
# How the records store features (`ofrnn_tf.features.tfrecords`), as meta.json says.
FEATURE_DTYPE = "float16"
_SHARD_RE = re.compile(
    r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.(?P<ext>tfrecord|json)$")


def shard_filename(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_stats_filename(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.json"


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


def shards_with_counts(features_dir: str, split: str) -> list[tuple[str, int]]:
    """``(path, examples its .json records)`` of each shard of a complete split."""
    entry = _complete_split(features_dir, split)
    return [(os.path.join(features_dir, shard_filename(split, i, entry["num_shards"])),
             int(entry["shards"][str(i)]["examples"])) for i in range(entry["num_shards"])]
