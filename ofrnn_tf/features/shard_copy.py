"""A split's feature shards taken from another cache of the same images.

A feature cache is known by its data's labels as well as its images
(`ofrnn_tf.features.cache`), so a fixed label, a renamed class or an edited test split
gives a new cache. Its splits whose images are unchanged need no backbone: their
records are copied from the older cache with the labels of now (`copy_split`), record
by record, the features byte for byte. Which caches may serve is the choice of
`cache.reusable_sources` (the same image files: paths, times and sizes, none of those it
skipped readable now); the image ids are checked here against every record and every
skipped image.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Optional, Sequence

import tensorflow as tf

from ofrnn_tf.data.example import Example
from ofrnn_tf.features import shard_meta, tfrecords
from ofrnn_tf.features.extract import (
    BACKBONE_INFO_KEYS, ExtractSummary, incomplete_path, move_into_place, prepare_split_folder,
    shard_positions)
from ofrnn_tf.labels import LabelMap


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
        meta = shard_meta.read_meta(source_dir)
        entry = meta["splits"][split]
        info = {key: meta[key] for key in BACKBONE_INFO_KEYS}
    except (FileNotFoundError, KeyError, ValueError):
        return None
    shards = entry["shards"]
    if (not entry.get("complete") or entry["num_shards"] != num_shards
            or any(s.get("format_checked", 0) < shard_meta.FORMAT_CHECKS for s in shards.values())):
        return None
    prepare_split_folder(out_dir, label_map, info, split, num_shards, examples)
    summary = ExtractSummary(split=split, out_dir=out_dir, num_shards=num_shards)
    start = time.perf_counter()
    relabelled: list[tuple[int, str, int, list]] = []  # (index, temporary file, records, skipped)
    try:
        for index in range(num_shards):
            if shard_meta.unfinished_reason(out_dir, split, index, num_shards) is None:
                summary.shards_already_done.append(index)
                continue
            shard = shards[str(index)]
            wanted = [examples[i] for i in shard_positions(len(examples), num_shards, index)]
            temp = incomplete_path(os.path.join(
                out_dir, shard_meta.shard_filename(split, index, num_shards)))
            count = _relabel_shard(os.path.join(source_dir, shard["file"]), temp, wanted,
                                   {str(s["image_id"]) for s in shard["skipped"]})
            if count is None:
                return None
            relabelled.append((index, temp, count, shard["skipped"]))
        # Every shard read as expected: only now is any put in place.
        while relabelled:
            index, temp, count, skipped = relabelled.pop(0)
            shard_meta.write_shard_stats(out_dir, split, index, num_shards, count, skipped,
                                        len(examples), format_checked=shard_meta.FORMAT_CHECKS)
            move_into_place(temp, os.path.join(
                out_dir, shard_meta.shard_filename(split, index, num_shards)))
            summary.shards_written.append(index)
            summary.examples_written += count
            summary.skipped.extend(skipped)
    finally:
        for _, temp, _, _ in relabelled:  # not put in place: nothing of them stays
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)
    summary.seconds = time.perf_counter() - start
    summary.copied_from = source_dir
    shard_meta.write_meta(out_dir)
    return summary


def _relabel_shard(source: str, temp: str, wanted: Sequence[Example],
                   skipped_ids: set[str]) -> Optional[int]:
    """Writes `temp`: the records of the shard `source`, each given the labels of its
    example in `wanted` (the shard's images, skipped ones included, in order); the
    record count, or None, leaving no `temp`, when the records are not those of
    `wanted`."""
    expected = [e for e in wanted if e.image_id not in skipped_ids]
    if len(expected) + len(skipped_ids) != len(wanted):
        return None  # a skipped image that is not among the shard's
    count = 0
    try:
        with tf.io.TFRecordWriter(temp) as writer:
            for raw in tf.data.TFRecordDataset(source):
                record = tf.train.Example.FromString(raw.numpy())
                if count >= len(expected) or (
                        record.features.feature["image_id"].bytes_list.value[0].decode()
                        != expected[count].image_id):
                    count = -1  # another image
                    break
                tfrecords.relabel(record, expected[count].label_ids, expected[count].label_areas)
                writer.write(record.SerializeToString(deterministic=True))
                count += 1
    except (tf.errors.OpError, OSError, KeyError, IndexError, UnicodeDecodeError):
        count = -1
    if count == len(expected):
        return count
    with contextlib.suppress(FileNotFoundError):
        os.remove(temp)
    return None
