"""A feature shard's soundness: its record headers walked (cheap: a file cut short or a
garbled header), every record read with its checksum (a garbled payload), its record
count against its ``.json``, and a record holding a NaN or an Inf; each failure raised as
a `CorruptShardError` naming the file, and the remedy (delete it, rerun: only that shard
is extracted again).
"""

from __future__ import annotations

import contextlib
import os
import struct

import numpy as np
import tensorflow as tf

from ofrnn_tf.features.shard_meta import shard_files, shards_with_counts
from ofrnn_tf.tf_errors import op_error_text

# The reader's error for a record whose features hold a NaN or an Inf
# (`ofrnn_tf.features.tfrecords`), as `naming_corrupt_shards` recognises it.
NON_FINITE_FEATURES = "feature records hold NaN or Inf"


class CorruptShardError(IOError):
    """A shard file is truncated or garbled.

    Attributes:
        path: the shard file.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


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
        how = "the file was cut short" if count < expected else "records were added to it"
        raise CorruptShardError(f"corrupt feature shard {path}: {count} records, but its "
                                f".json records {expected} ({how})", path)


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
    for path, expected in shards_with_counts(features_dir, split):
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


def verify_split(features_dir: str, split: str) -> None:
    """The header walk of every local shard of ``split`` against its ``.json`` count
    (`verify_shard`); `CorruptShardError`, with its remedy, for the first that fails."""
    verify_shards(shards_with_counts(features_dir, split), full=False)


def verify_shards(shards: list[tuple[str, int]], full: bool) -> None:
    """`verify_shard` on each ``(path, expected records)``; the header walk only on local
    files (it reads every header), the full check on all. Errors carry their remedy."""
    for path, expected in shards:
        if full or "://" not in path:
            try:
                verify_shard(path, expected, full=full)
            except CorruptShardError as error:
                raise _with_remedy(error) from None
