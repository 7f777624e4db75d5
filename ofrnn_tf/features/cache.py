"""The feature cache of a run: where it lives, what it holds, and making it.

A run's frozen-CNN features are cached as sharded TFRecords (`ofrnn_tf.features.
tfrecords`) under ``<cache_dir>/features/<name>``, where the name says what the cache
holds (data set, backbone, layer) and ends with the first characters of its **content
fingerprint**: a hash of the backbone, its feature layer and input size, the label map,
every split's image ids, label ids and object areas in order and, for the user's own
data (cache format 2), every image file's size (``os.stat``: no image is read; a file's
time would not survive a plain copy of the data to another machine, its size does, and
an image edited or re-encoded in place rarely keeps its size). The run folder records
the fingerprint, not a path, so a run moved to another machine (or another
``--runtime.cache_dir``) finds its features again and refuses a cache that holds
anything else.
``meta.json`` keeps, under ``inputs``, what the fingerprint was made of per split (image
count and digests), so that a changed data set can be named split by split. A new cache
of own data takes each split whose images are those of an older cache beside it (the
same files, by path, time and size, and ids in the same order; only labels, or other
splits, changed) from that cache, relabelled, without running the backbone
(`reusable_sources`, `ofrnn_tf.features.shard_copy`). A cache keeps the record of the
files it was first built from, so one built before this record was kept, or whose data
have moved since, is never copied from.

The embedded benchmark's images are a function of its build settings, rebuilt
identically under any ``--runtime.cache_dir``: its fingerprint covers ids, labels and
areas only (format 1, that of caches built before format 2). Format-1 caches of own data
built by earlier versions cannot be checked against the files: a new run extracts a
format-2 cache beside one and says so (`note_earlier_format`); runs trained on the old
one keep using it.

The fingerprint does not cover the image bytes (hashing every image would cost a pass
over the data on each run). A repaired image of own data (another size) gives another
cache; a benchmark image, or a file rewritten with the same size, keeps its entry, so
an image skipped there as unreadable stays skipped once it is repaired: a cache hit
re-checks the skipped images and names those that now decode, with the shard to delete
so that the next run extracts them.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shlex
import unicodedata
from typing import Iterator, Mapping, Sequence

from ofrnn_tf.data.example import Example
from ofrnn_tf.features import shard_meta
from ofrnn_tf.features.backbones import describe_backbone, get_backbone
from ofrnn_tf.features.extract import (
    decode_failure, describe_image, extract_split, remove_dead_temporary_shards)
from ofrnn_tf.features.images import (
    ACCEPTED_MAGIC, BMP_FIELDS_BYTES, BMP_MASKS_AT, FORMAT_MAGIC, bmp_problem)
from ofrnn_tf.features.shard_copy import copy_split
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.status import log

FEATURES_SUBDIR = "features"
FINGERPRINT_KEY = "content_fingerprint"
INPUTS_KEY = "inputs"
# 1: image ids, labels and areas; 2: also each image file's size.
CACHE_FORMAT = 2


class FeatureCacheMismatchError(ValueError):
    """A feature cache does not hold what a run was trained on."""


class FeatureCacheNotFoundError(FileNotFoundError):
    """The feature cache a run was trained on is not under this ``--runtime.cache_dir``."""


def _split_digest(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        areas = example.label_areas or ()
        digest.update(json.dumps([example.image_id, list(example.label_ids),
                                  [round(a, 6) for a in areas]]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _file_records(image) -> tuple[list, list]:
    """What `describe_inputs` records of one image, from one ``os.stat``: ``[size]`` of a
    file (None when it cannot be read) and ``[absolute path, modification time]``; for
    encoded image bytes ``[length, sha256]`` for both."""
    if isinstance(image, bytes):
        record = [len(image), hashlib.sha256(image).hexdigest()]
        return record, record
    path = os.path.abspath(os.fspath(image))
    try:
        stat = os.stat(path)
    except OSError:
        return [None], [path, None]
    return [stat.st_size], [path, stat.st_mtime_ns]


def _file_digests(examples: Sequence[Example]) -> tuple[str, str]:
    """The digests of the images' sizes (``files``) and of their absolute paths and
    modification times (``sources``), in order."""
    files, sources = hashlib.sha256(), hashlib.sha256()
    for example in examples:
        for digest, record in zip((files, sources), _file_records(example.image)):
            digest.update(json.dumps(record).encode())
            digest.update(b"\n")
    return files.hexdigest(), sources.hexdigest()


def describe_inputs(splits: Mapping[str, Sequence[Example]], label_map: LabelMap, *,
                    file_stats: bool = True) -> dict:
    """What a cache's fingerprint is made of, per split (kept in meta.json under
    ``inputs``): ``{"format", "labels", "splits": {split: {"examples", "ids_labels",
    "files", "sources"}}}``; ``files`` and ``sources`` (format 2) are None with
    `file_stats` False (format 1). ``sources``, the images' absolute paths and
    modification times, is no part of the fingerprint (a copy of the data is the same
    data); it says which files a cache's splits were extracted from, so that a new cache
    copies only a split of the very same, unchanged files (`reusable_sources`)."""
    described = {}
    for split, examples in sorted(splits.items()):
        files, sources = _file_digests(examples) if file_stats else (None, None)
        described[split] = {"examples": len(examples), "ids_labels": _split_digest(examples),
                            "files": files, "sources": sources}
    return {"format": CACHE_FORMAT if file_stats else 1, "labels": list(label_map.names),
            "splits": described}


def fingerprint_of(inputs: dict, backbone: str, feature_layer: str,
                   cache_format: int | None = None) -> str:
    """The content fingerprint of `describe_inputs` for a backbone and layer, in
    `cache_format` (default: the inputs' own; 1 gives what a format-1 cache of the same
    ids and labels was named by)."""
    cache_format = inputs["format"] if cache_format is None else cache_format
    splits = inputs["splits"]
    record = {"backbone": describe_backbone(backbone, feature_layer),
              "labels": list(inputs["labels"]),
              "splits": {split: splits[split]["ids_labels"] for split in sorted(splits)},
              "dtype": shard_meta.FEATURE_DTYPE}
    if cache_format >= 2:
        record["format"] = cache_format
        record["files"] = {split: splits[split]["files"] for split in sorted(splits)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def cache_name(dataset: str, backbone: str, feature_layer: str, fingerprint: str) -> str:
    """``<dataset>-<backbone>-<layer>-<fingerprint[:12]>``: readable and unique."""
    return f"{dataset}-{backbone}-{feature_layer}-{fingerprint[:12]}"


def features_dir(cache_dir: str, name: str) -> str:
    return os.path.join(cache_dir, FEATURES_SUBDIR, name)


def cache_name_in_use(cache_dir: str, dataset: str, backbone: str, feature_layer: str,
                      fingerprint: str) -> str:
    """`cache_name`, or the name of a cache under `cache_dir` that holds the same features
    with the layer spelt otherwise (``stage5`` and its Keras name ``block5c_out`` are one
    layer: the fingerprint is the resolved layer's), so that they are not extracted twice.
    """
    name = cache_name(dataset, backbone, feature_layer, fingerprint)
    if os.path.exists(features_dir(cache_dir, name)):
        return name
    pattern = features_dir(glob.escape(cache_dir), glob.escape(f"{dataset}-{backbone}-") + "*"
                           + glob.escape(f"-{fingerprint[:12]}"))
    for directory in sorted(glob.glob(pattern)):
        try:
            if shard_meta.read_meta(directory).get(FINGERPRINT_KEY) == fingerprint:
                return os.path.basename(directory)
        except (FileNotFoundError, ValueError, OSError):
            continue
    return name


# How a run's feature cache is made again when the run folder is not known (a rerun of a
# run knows it: `extract_again_for`).
EXTRACT_AGAIN = ("extract it again with ofrnn-extract and the run's settings (ofrnn-train "
                 "--workdir=RUN --print_config lists them: give the list to ofrnn-extract "
                 "with --flagfile)")


def extract_again_for(workdir: str, cache_dir: str,
                      data_flags: Mapping[str, str] | None = None) -> str:
    """The commands that extract the run at `workdir`'s features again under `cache_dir`
    (a rerun of the run never extracts: its data are checked against the cache).
    `data_flags` (name -> value) say where the data are now, where the run's record of
    them may say where they were (a run moved, or started from another folder)."""
    flags = [f"--{name}={value}" for name, value in (data_flags or {}).items()]
    flags.append(f"--runtime.cache_dir={cache_dir}")
    return (f"extract it again with the run's settings: ofrnn-train "
            f"--workdir={shlex.quote(workdir)} {' '.join(map(shlex.quote, flags))} "
            f"--print_config > run_flags.txt && ofrnn-extract --flagfile=run_flags.txt")


def check_fingerprint(directory: str, expected: str, *,
                      extract_again: str = EXTRACT_AGAIN) -> dict:
    """The cache's meta.json, once its fingerprint is checked to be `expected`;
    `extract_again` completes the errors' remedies.

    Raises:
        FeatureCacheNotFoundError: no cache at `directory` (the run's features are under
            another ``--runtime.cache_dir``, which run.json does not record).
        FeatureCacheMismatchError: the cache there holds other features.
    """
    try:
        meta = shard_meta.read_meta(directory)
    except FileNotFoundError:
        raise FeatureCacheNotFoundError(
            f"no feature cache at {directory}: point --runtime.cache_dir at the cache the "
            f"run was trained with (run.json does not record it; the default is ./data), "
            f"or, if that cache is gone, {extract_again}") from None
    found = meta.get(FINGERPRINT_KEY)
    if found != expected:
        raise FeatureCacheMismatchError(
            f"{directory} holds features with content fingerprint {found!r}, but the run was "
            f"trained on {expected!r}: the data, backbone or layer differ. Use the matching "
            f"--runtime.cache_dir, or remove the folder and {extract_again}")
    return meta


def note_earlier_format(cache_dir: str, dataset: str, backbone: str, feature_layer: str,
                        inputs: dict) -> None:
    """Says so when the cache of `inputs` (format 2) is about to be extracted beside a
    cache of the same image ids and labels that an earlier version built: in format 1,
    which cannot be checked against the image files, or with the class names spelt as
    their files spelt them (names are now read in Unicode NFC form). Neither is reused;
    runs trained on them keep them."""
    if inputs["format"] < 2:
        return
    fingerprint = fingerprint_of(inputs, backbone, feature_layer)
    if os.path.exists(features_dir(cache_dir, cache_name(dataset, backbone, feature_layer,
                                                         fingerprint))):
        return
    earlier = [(fingerprint_of(inputs, backbone, feature_layer, cache_format=1),
                "whose cache fingerprint did not cover the image files, so it cannot tell "
                "whether they changed")]
    decomposed = [unicodedata.normalize("NFD", name) for name in inputs["labels"]]
    if decomposed != list(inputs["labels"]):
        earlier.append((fingerprint_of(dict(inputs, labels=decomposed), backbone, feature_layer),
                        "that kept the class names in the Unicode form of their files (NFD, as "
                        "macOS spells them), where they are now read in NFC"))
    for old, why in earlier:
        directory = features_dir(cache_dir, cache_name(dataset, backbone, feature_layer, old))
        try:
            found = shard_meta.read_meta(directory).get(FINGERPRINT_KEY)
        except (FileNotFoundError, ValueError):
            continue
        if found == old:
            log(f"features: {directory} holds these image ids and labels, built "
                f"by an earlier version {why}: extracting a new cache beside it (runs "
                f"trained on it keep using it; delete it once none does)")


def split_complete(directory: str, split: str) -> bool:
    try:
        info = shard_meta.read_meta(directory)["splits"][split]
        files = shard_meta.shard_files(directory, split)
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return len(files) == int(info["num_shards"])


def repaired_images(directory: str, split: str) -> dict[str, list[str]]:
    """``{shard file: [image path, ...]}`` of the images skipped when ``split`` was
    extracted that decode now."""
    meta = shard_meta.read_meta(directory)
    found: dict[str, list[str]] = {}
    for shard in meta["splits"][split]["shards"].values():
        for record in shard["skipped"]:
            path = str(record["path"])  # or the "<n encoded bytes ...>" of in-memory images
            if os.path.isfile(path) and decode_failure(path, int(meta["image_size"])) is None:
                found.setdefault(shard["file"], []).append(record["path"])
    return found


def held_unservable(directory: str, split: str, examples: Sequence[Example]) -> list[str]:
    """The images of `split` held in the cache that the served model refuses for their
    format, as ``"<path>: <reason>"``.

    Extraction skips them (its shards record `shard_meta.FORMAT_CHECKS`), but shards
    written before it applied every check may hold some (WebP, TIFF, whatever their
    names; BMPs TensorFlow decodes with their colours swapped): for those, the first
    bytes of every image the cache did not skip are read (13,000 files in about 0.15 s).
    """
    shards = shard_meta.read_meta(directory)["splits"][split]["shards"].values()
    if all(shard.get("format_checked", 0) >= shard_meta.FORMAT_CHECKS for shard in shards):
        return []
    skipped = {str(record["path"]) for shard in shards for record in shard["skipped"]}
    found = []
    for example in examples:
        image = example.image
        if describe_image(example) in skipped:
            continue
        if isinstance(image, str):
            try:
                with open(image, "rb") as f:
                    head = f.read(_HEAD_BYTES)
            except OSError:
                continue
        else:
            head = bytes(image[:_HEAD_BYTES])
        if not head.startswith(ACCEPTED_MAGIC):
            found.append(f"{describe_image(example)}: not a JPEG, PNG, GIF or BMP image")
        elif head.startswith(FORMAT_MAGIC["BMP"]) and len(head) >= BMP_FIELDS_BYTES:
            problem = bmp_problem(head)
            if problem is not None:
                found.append(f"{describe_image(example)}: {problem}")
    return found


# Enough for the magic bytes and a BMP's colour masks.
_HEAD_BYTES = BMP_MASKS_AT + 12


def _report_unservable_images(directory: str, split: str,
                              examples: Sequence[Example]) -> None:
    held = held_unservable(directory, split, examples)
    if held:
        log(f"features {split}: {len(held)} image(s) in this cache are refused "
            f"by the exported model ({'; '.join(held[:3])}{' ...' if len(held) > 3 else ''})"
            f": extraction now skips them, but this cache was built before it did. Delete "
            f"{directory} and rerun to train and evaluate without them")


def _report_repaired_images(directory: str, split: str) -> None:
    repaired = repaired_images(directory, split)
    if not repaired:
        return
    paths = [path for shard_paths in repaired.values() for path in shard_paths]
    shards = [os.path.join(directory, name) for name in repaired]
    log(f"features {split}: {len(paths)} image(s) skipped when the cache was "
        f"built decode now ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}) but "
        f"stay out of it: delete {' '.join(shards)} (or the folder {directory}) and rerun "
        f"to extract them")


def reusable_sources(directory: str, split: str, inputs: dict | None,
                     num_shards: int) -> Iterator[str]:
    """Other caches beside `directory` (the same data set, backbone and layer), the most
    recently changed first, that hold `split` whole in `num_shards` shards, extracted
    from the same image files, unchanged since: the same absolute paths, modification
    times and sizes in the same order (cache format 2; `shard_copy.copy_split` checks
    the ids as well), none of the images it skipped readable now (`repaired_images`:
    those are extracted, not copied as skipped again).

    The embedded benchmark (format 1) is never a source, nor is a cache whose meta.json
    does not record its images' sources (built before it did)."""
    if inputs is None or inputs["format"] < 2:
        return
    now = inputs["splits"][split]
    parent, name = os.path.split(os.path.abspath(directory))
    prefix = name.rsplit("-", 1)[0] + "-"
    try:
        siblings = [os.path.join(parent, entry) for entry in os.listdir(parent)
                    if entry.startswith(prefix) and entry != name and len(entry) == len(name)]
    except OSError:
        return
    for path in sorted(siblings, key=_changed_at, reverse=True):
        try:
            meta = shard_meta.read_meta(path)
        except (FileNotFoundError, ValueError, OSError):
            continue
        then = (meta.get(INPUTS_KEY) or {})
        described = then.get("splits", {}).get(split) or {}
        entry = meta.get("splits", {}).get(split) or {}
        if (then.get("format") == inputs["format"]
                and described.get("sources") == now["sources"]
                and described.get("files") == now["files"]
                and described.get("examples") == now["examples"] and entry.get("complete")
                and entry.get("num_shards") == num_shards and not repaired_images(path, split)):
            yield path


def _changed_at(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def ensure_features(splits: Mapping[str, list[Example]], label_map: LabelMap, directory: str,
                    backbone_name: str, feature_layer: str, fingerprint: str, *,
                    batch_size: int = 32, num_shards: int = 8,
                    inputs: dict | None = None) -> dict:
    """Makes every split whose shards are not all there: copied, relabelled, from an
    older cache of the same image files (`reusable_sources`, `shard_copy.copy_split`),
    else extracted; returns the cache's meta.json, with `inputs` (the `describe_inputs`
    of `fingerprint`, when given) unless it already records the inputs it was built from,
    which it keeps.

    A cache folder that already carries another fingerprint is refused. A complete cache
    whose meta.json already says all of this is only read (`shard_meta.write_meta` leaves
    such a file alone), so it may be shared read-only.
    """
    meta_path = os.path.join(directory, shard_meta.META_FILENAME)
    before = shard_meta.read_meta(directory) if os.path.exists(meta_path) else {}
    if before.get(FINGERPRINT_KEY) not in (None, fingerprint):
        check_fingerprint(directory, fingerprint,
                          extract_again="rerun this command, which extracts them again")
    backbone = None
    for split, examples in splits.items():
        if split_complete(directory, split):
            log(f"features {split}: cached in {directory}")
            with contextlib.suppress(OSError):  # a tidy-up; the cache may be read-only
                remove_dead_temporary_shards(directory, split)
            _report_repaired_images(directory, split)
            _report_unservable_images(directory, split, examples)
            continue
        summary = next(filter(None, (
            copy_split(source, examples, label_map, directory, split, num_shards=num_shards)
            for source in reusable_sources(directory, split, inputs, num_shards))), None)
        if summary is None:
            if backbone is None:
                backbone = get_backbone(backbone_name, feature_layer)
            summary = extract_split(examples, label_map, backbone, directory, split,
                                    batch_size=batch_size, num_shards=num_shards)
        log(f"features {summary}")  # it starts with the split
    record = {FINGERPRINT_KEY: fingerprint}
    if inputs is not None and not before.get(INPUTS_KEY):  # an existing record stays:
        record[INPUTS_KEY] = inputs  # the same data (its fingerprint), and maybe read-only
    return shard_meta.write_meta(directory, record)


def feature_shape(directory: str) -> tuple[int, int, int]:
    """`(H, W, k)` of the cached maps."""
    return tuple(int(d) for d in shard_meta.read_meta(directory)["feature_shape"])
