"""A split's feature shards taken from another cache of the same images.

A feature cache is known by its data's labels as well as its images
(`ofrnn_tf.features.cache`), so a fixed label, a renamed class or an edited test split
gives a new cache. Its splits whose images are unchanged need no backbone: their
records are copied from the older cache with the labels of now (`copy_split`), record
by record, the features byte for byte. Which caches may serve is the choice of
`cache.reusable_sources` (the same image files: paths, times and sizes); the image ids are
checked here against every record and every skipped image, and a source whose skipped
images decode now (repaired at their old size) does not serve.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Optional, Sequence

import tensorflow as tf

from ofrnn_tf.data.example import Example
from ofrnn_tf.features import tfrecords
from ofrnn_tf.features.extract import (
    ExtractSummary, decode_failure, incomplete_path, move_into_place, prepare_split_folder,
    shard_positions)
from ofrnn_tf.labels import LabelMap

_BACKBONE_KEYS = ("backbone", "feature_layer", "image_size", "feature_shape")


def copy_split(source_dir: str, examples: Sequence[Example], label_map: LabelMap,
               out_dir: str, split: str, *, num_shards: int) -> Optional[ExtractSummary]:
    """Writes the shards of `split` into `out_dir` from those of the feature folder
    `source_dir`, with the labels (and object areas) of `examples`; no image is read.

    `source_dir` must hold `split` whole, in `num_shards` shards, extracted from the
    same images in the same order: its records and skipped images are checked against
    the ids of `examples`, shard by shard, before any shard is put in place. Returns
    None, leaving no shard behind, when they differ or a source shard does not read;
    the caller then extracts the split.
    """
    try:
        meta = tfrecords.read_meta(source_dir)
        entry = meta["splits"][split]
        info = {key: meta[key] for key in _BACKBONE_KEYS}
    except (FileNotFoundError, KeyError, ValueError):
        return None
    shards = entry["shards"]
    if (not entry.get("complete") or entry["num_shards"] != num_shards
            or any(s.get("format_checked", 0) < tfrecords.FORMAT_CHECKS for s in shards.values())
            or _skipped_that_decode_now(entry["skipped"], examples, int(info["image_size"]))):
        return None
    prepare_split_folder(out_dir, label_map, info, split, num_shards, examples)
    summary = ExtractSummary(split=split, out_dir=out_dir, num_shards=num_shards)
    start = time.perf_counter()
    written: list[tuple[int, str, int, list]] = []  # (index, temporary file, records, skipped)
    try:
        for index in range(num_shards):
            if tfrecords.unfinished_reason(out_dir, split, index, num_shards) is None:
                summary.shards_already_done.append(index)
                continue
            shard = shards[str(index)]
            wanted = [examples[i] for i in shard_positions(len(examples), num_shards, index)]
            final = os.path.join(out_dir, tfrecords.shard_filename(split, index, num_shards))
            temp = incomplete_path(final)
            written.append((index, temp, 0, shard["skipped"]))
            count = _relabel_shard(os.path.join(source_dir, shard["file"]), temp, wanted,
                                   {str(s["image_id"]) for s in shard["skipped"]})
            if count is None:
                return None
            written[-1] = (index, temp, count, shard["skipped"])
        for index, temp, count, skipped in written:
            tfrecords.write_shard_stats(out_dir, split, index, num_shards, count, skipped,
                                        len(examples), format_checked=tfrecords.FORMAT_CHECKS)
            move_into_place(temp, os.path.join(
                out_dir, tfrecords.shard_filename(split, index, num_shards)))
            summary.shards_written.append(index)
            summary.examples_written += count
            summary.skipped.extend(skipped)
        written = []
    finally:
        for _, temp, _, _ in written:  # not put in place: nothing of them stays
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)
    summary.seconds = time.perf_counter() - start
    summary.copied_from = source_dir
    tfrecords.write_meta(out_dir)
    return summary


def _skipped_that_decode_now(skipped: Sequence[dict], examples: Sequence[Example],
                             image_size: int) -> bool:
    """Whether an image the source skipped decodes now (repaired at its old size): its
    shard is then extracted, not copied with the image left out again."""
    images = {example.image_id: example for example in examples}
    return any(str(s["image_id"]) in images
               and decode_failure(images[str(s["image_id"])].image, image_size) is None
               for s in skipped)


def _relabel_shard(source: str, temp: str, wanted: Sequence[Example],
                   skipped_ids: set[str]) -> Optional[int]:
    """Writes `temp`: the records of the shard `source`, each given the labels of its
    example in `wanted` (the shard's images, skipped ones included, in order); the
    record count, or None when the records are not those of `wanted`."""
    expected = [e for e in wanted if e.image_id not in skipped_ids]
    if len(expected) + len(skipped_ids) != len(wanted):
        return None  # a skipped image that is not among the shard's
    count = 0
    try:
        with tf.io.TFRecordWriter(temp) as writer:
            for raw in tf.data.TFRecordDataset(source):
                record = tf.train.Example.FromString(raw.numpy())
                fields = record.features.feature
                if count >= len(expected) or (fields["image_id"].bytes_list.value[0].decode()
                                              != expected[count].image_id):
                    return None
                example = expected[count]
                fields["labels"].int64_list.value[:] = list(example.label_ids)
                fields["label_areas"].float_list.value[:] = list(
                    example.label_areas or [-1.0] * len(example.label_ids))
                writer.write(record.SerializeToString())
                count += 1
    except (tf.errors.OpError, OSError, KeyError, IndexError, UnicodeDecodeError):
        return None
    return count if count == len(expected) else None
