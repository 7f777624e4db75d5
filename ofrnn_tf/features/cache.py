"""The feature cache of a run: where it lives, what it holds, and making it.

A run's frozen-CNN features are cached as sharded TFRecords (`ofrnn_tf.features.
tfrecords`) under ``<cache_dir>/features/<name>``, where the name says what the cache
holds (data set, backbone, layer) and ends with the first characters of its **content
fingerprint**: a hash of the backbone, its feature layer and input size, the label map,
and every split's image ids, label ids and object areas in order. The run folder
records the fingerprint, not a path, so a run moved to another machine (or another
``--runtime.cache_dir``) finds its features again and refuses a cache that holds
anything else.

The fingerprint does not cover the image bytes (hashing every image would cost a pass
over the data on each run), so an image skipped as undecodable stays skipped after it
is repaired: a cache hit re-checks the skipped images and names those that now decode,
with the shard to delete so that the next run extracts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Mapping, Sequence

import tensorflow as tf

from ofrnn_tf.data.example import Example
from ofrnn_tf.features import tfrecords
from ofrnn_tf.features.backbones import describe_backbone, get_backbone
from ofrnn_tf.features.extract import extract_split
from ofrnn_tf.features.images import decode_and_resize
from ofrnn_tf.labels import LabelMap

FEATURES_SUBDIR = "features"
FINGERPRINT_KEY = "content_fingerprint"


class FeatureCacheMismatchError(ValueError):
    """A feature cache does not hold what a run was trained on."""


def _split_digest(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        areas = example.label_areas or ()
        digest.update(json.dumps([example.image_id, list(example.label_ids),
                                  [round(a, 6) for a in areas]]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def content_fingerprint(splits: Mapping[str, Sequence[Example]], label_map: LabelMap,
                        backbone: str, feature_layer: str) -> str:
    """The hash a cache of these examples' features is known by (see the module docstring)."""
    record = {"backbone": describe_backbone(backbone, feature_layer),
              "labels": list(label_map.names),
              "splits": {split: _split_digest(examples) for split, examples in sorted(splits.items())},
              "dtype": tfrecords.FEATURE_DTYPE}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def cache_name(dataset: str, backbone: str, feature_layer: str, fingerprint: str) -> str:
    """``<dataset>-<backbone>-<layer>-<fingerprint[:12]>``: readable and unique."""
    return f"{dataset}-{backbone}-{feature_layer}-{fingerprint[:12]}"


def features_dir(cache_dir: str, name: str) -> str:
    return os.path.join(cache_dir, FEATURES_SUBDIR, name)


def check_fingerprint(directory: str, expected: str) -> dict:
    """The cache's meta.json, once its fingerprint is checked to be `expected`."""
    try:
        meta = tfrecords.read_meta(directory)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no feature cache at {directory}: run training once with this "
            f"--runtime.cache_dir (it extracts the features), or point "
            f"--runtime.cache_dir at the cache the run was trained with") from None
    found = meta.get(FINGERPRINT_KEY)
    if found != expected:
        raise FeatureCacheMismatchError(
            f"{directory} holds features with content fingerprint {found!r}, but the run was "
            f"trained on {expected!r}: the data, backbone or layer differ. Rebuild the cache "
            f"(remove the folder and rerun training) or use the matching --runtime.cache_dir")
    return meta


def split_complete(directory: str, split: str) -> bool:
    try:
        info = tfrecords.read_meta(directory)["splits"][split]
        files = tfrecords.shard_files(directory, split)
    except (FileNotFoundError, KeyError, ValueError):
        return False
    return len(files) == int(info["num_shards"])


def _decodes(path: str, image_size: int) -> bool:
    """Whether the extraction would read the image at `path` now."""
    if not os.path.isfile(path):  # also the "<n encoded bytes ...>" of in-memory images
        return False
    try:
        decode_and_resize(tf.io.read_file(path), image_size)
    except (tf.errors.OpError, ValueError):
        return False
    return True


def repaired_images(directory: str, split: str) -> dict[str, list[str]]:
    """``{shard file: [image path, ...]}`` of the images skipped when ``split`` was
    extracted that decode now."""
    meta = tfrecords.read_meta(directory)
    found: dict[str, list[str]] = {}
    for shard in meta["splits"][split]["shards"].values():
        for record in shard["skipped"]:
            if _decodes(str(record["path"]), int(meta["image_size"])):
                found.setdefault(shard["file"], []).append(record["path"])
    return found


def _report_repaired_images(directory: str, split: str) -> None:
    repaired = repaired_images(directory, split)
    if not repaired:
        return
    paths = [path for shard_paths in repaired.values() for path in shard_paths]
    shards = [os.path.join(directory, name) for name in repaired]
    print(f"[ofrnn_tf] features {split}: {len(paths)} image(s) skipped when the cache was "
          f"built decode now ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}) but "
          f"stay out of it: delete {' '.join(shards)} (or the folder {directory}) and rerun "
          f"to extract them", file=sys.stderr)


def ensure_features(splits: Mapping[str, list[Example]], label_map: LabelMap, directory: str,
                    backbone_name: str, feature_layer: str, fingerprint: str, *,
                    batch_size: int = 32, num_shards: int = 8) -> dict:
    """Extracts every split whose shards are not all there; returns the cache's meta.json.

    A cache folder that already carries another fingerprint is refused.
    """
    meta_path = os.path.join(directory, tfrecords.META_FILENAME)
    if os.path.exists(meta_path):
        found = tfrecords.read_meta(directory).get(FINGERPRINT_KEY)
        if found not in (None, fingerprint):
            check_fingerprint(directory, fingerprint)
    backbone = None
    for split, examples in splits.items():
        if split_complete(directory, split):
            print(f"[ofrnn_tf] features {split}: cached in {directory}", file=sys.stderr)
            _report_repaired_images(directory, split)
            continue
        if backbone is None:
            backbone = get_backbone(backbone_name, feature_layer)
        summary = extract_split(examples, label_map, backbone, directory, split,
                                batch_size=batch_size, num_shards=num_shards)
        print(f"[ofrnn_tf] features {split}: {summary}", file=sys.stderr)
    return tfrecords.write_meta(directory, {FINGERPRINT_KEY: fingerprint})


def feature_shape(directory: str) -> tuple[int, int, int]:
    """`(H, W, k)` of the cached maps."""
    return tuple(int(d) for d in tfrecords.read_meta(directory)["feature_shape"])
