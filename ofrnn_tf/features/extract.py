"""Images → sharded TFRecords of frozen feature maps (the feature cache).

Pipeline: ``tf.data`` tensor slices of (position, path, bytes) → parallel read + a
format check (`has_accepted_format`) + `decode_and_resize` → ``ignore_errors`` → batch →
prefetch, with tf.data's autotuning off (decode threads set from the usable cores,
`_decode_threads`, and a fixed prefetch depth); the backbone runs on each batch in a
``tf.function`` on the main thread while a writer thread serialises the previous batch.
An image that cannot be read or decoded, or whose format the served model refuses (not a
JPEG, PNG, GIF or BMP), is dropped by ``ignore_errors`` alone (the rest of its batch
goes on); the writer sees the gap in positions, finds the reason (`decode_failure`),
prints it with the path and records it in the summary and ``meta.json``. A model is thus
trained and evaluated only on images of formats it can serve. The served model's pixel
limit is a guard of the server, set at export (``--max_image_pixels``), and not applied
here.

Examples are split into ``num_shards`` contiguous shards. Each shard is written
under a temporary name of its own process (tagged with host and pid,
`ofrnn_tf.processes.owner_tag`) and renamed when complete, after its ``.json``
record. A shard is finished when both files are there and the ``.json`` reads, so a
rerun skips finished shards and extracts the others again, an interrupted extraction
resumes, and two processes that build the same cache at once (two training runs
started together, or machines sharing the folder) do not take each other's files: both
write the same shard and the first to finish keeps its file. With ``shard_index``
several machines extract disjoint shards into one directory (``ofrnn-extract
--shard_index=i``, see `ofrnn_tf.cli.extract`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import queue
import re
import stat
import sys
import threading
import time
import weakref
from typing import Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ofrnn_tf.data.example import Example
from ofrnn_tf.features import shard_meta, tfrecords
from ofrnn_tf.features.backbones import Backbone
from ofrnn_tf.features.image_guards import has_accepted_bmp_layout
from ofrnn_tf.features.images import decode_and_resize, decode_checked, has_accepted_format
from ofrnn_tf.host_limits import usable_cpus
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.processes import owner_tag, remove_dead_leftovers
from ofrnn_tf.status import log, progress_bar
from ofrnn_tf.tf_errors import op_error_text

_INCOMPLETE_SUFFIX = ".incomplete"
NAMED_SKIPPED = 5  # skipped images named one a line in a split's extraction; then a count


def incomplete_path(final: str) -> str:
    """This process's temporary file for shard `final`, ``<final>.incomplete-<owner tag>``,
    made new and empty: whatever was under that name (a link planted there, through which
    the shard's writer would have written over another file) is removed first.

    Leftovers of processes of this machine that died are removed, and untagged ones of
    older versions; a live process's file, or another machine's (whose pids cannot be
    asked from here), is its own business.
    """
    remove_dead_leftovers(os.path.dirname(final) or ".",
                          _temporary_names(re.escape(os.path.basename(final))))
    path = f"{final}{_INCOMPLETE_SUFFIX}-{owner_tag()}"
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    return path


def remove_dead_temporary_shards(out_dir: str, split: str) -> None:
    """Removes the temporary shards of `split` that dead processes of this machine left
    behind where another process has finished those shards since (then nothing extracts
    them again, which would remove them, `incomplete_path`)."""
    remove_dead_leftovers(out_dir, _temporary_names(
        re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord"))


def _temporary_names(shards: str) -> re.Pattern:
    """The temporary names of the shards whose names the regex `shards` matches, their
    owner tag (none in older versions' names) as the group ``owner``."""
    return re.compile(shards + re.escape(_INCOMPLETE_SUFFIX) + r"(?:-(?P<owner>.+))?")


@dataclasses.dataclass
class ExtractSummary:
    """What one `extract_split` call did.

    Attributes:
        split, out_dir, num_shards: as requested.
        shards_written: shard indices written by this call.
        shards_already_done: requested shards that were finished before and skipped.
        examples_written: records written by this call.
        skipped: images skipped by this call, ``{"path", "image_id", "reason"}``.
        seconds: wall time of the extraction loop.
        copied_from: the feature folder the records were copied from, relabelled
            (`ofrnn_tf.features.shard_copy`), or None when they were extracted.
    """

    split: str
    out_dir: str
    num_shards: int
    shards_written: list[int] = dataclasses.field(default_factory=list)
    shards_already_done: list[int] = dataclasses.field(default_factory=list)
    examples_written: int = 0
    skipped: list[dict] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    copied_from: str | None = None

    @property
    def images_per_second(self) -> float:
        done = self.examples_written + len(self.skipped)
        return done / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        if self.copied_from:
            return (f"{self.split}: {self.examples_written} examples copied from "
                    f"{self.copied_from} (the same images) with the labels of now, in "
                    f"{len(self.shards_written)} shard(s) ({len(self.skipped)} image(s) "
                    f"skipped there), {len(self.shards_already_done)} shard(s) already done, "
                    f"of {self.num_shards} → {self.out_dir}")
        return (f"{self.split}: {self.examples_written} examples written in "
                f"{len(self.shards_written)} shard(s) ({self.images_per_second:.1f} img/s), "
                f"{len(self.skipped)} image(s) skipped, {len(self.shards_already_done)} "
                f"shard(s) already done, of {self.num_shards} → {self.out_dir}")


# What a feature folder's meta.json says of the backbone that made it.
BACKBONE_INFO_KEYS = ("backbone", "feature_layer", "image_size", "feature_shape")


def _backbone_info(backbone: Backbone) -> dict:
    return dict(zip(BACKBONE_INFO_KEYS, (backbone.name, backbone.feature_layer,
                                         backbone.image_size, list(backbone.feature_shape))))


class FeatureFolderMismatchError(ValueError):
    """A feature folder begun with another backbone, sharding or image list."""


class UnsafeFeatureFolderError(ValueError):
    """A feature folder that users other than this one could put files or links in."""


def check_folder_safe(out_dir: str) -> None:
    """Refuses to write in `out_dir` where every user may write in it and either it has
    no sticky bit or another user owns it (who may remove anything in it, sticky or
    not): any of them could replace a shard with records of their own, or plant a link
    through which this process would write over another file. A folder shared with a
    group stays writable."""
    status = os.stat(out_dir)
    if status.st_mode & stat.S_IWOTH and (
            not status.st_mode & stat.S_ISVTX or status.st_uid != os.geteuid()):
        why = ("has no sticky bit" if not status.st_mode & stat.S_ISVTX
               else "belongs to another user")
        raise UnsafeFeatureFolderError(
            f"{out_dir} may be written by every user (mode {status.st_mode & 0o7777:o}) and "
            f"{why}: another user could replace its shards or plant links there; take "
            f"write access from other users (chmod o-w {out_dir}), or use a feature cache "
            f"of your own (--runtime.cache_dir)")


def _check_compatible(out_dir: str, info: dict) -> None:
    path = os.path.join(out_dir, shard_meta.META_FILENAME)
    if not os.path.exists(path):
        return
    existing = shard_meta.read_meta_file(path)
    diffs = [f"{k}: {existing.get(k)!r} there vs {v!r} now" for k, v in info.items()
             if k in existing and existing[k] != v]
    if diffs:
        raise FeatureFolderMismatchError(f"{out_dir} already holds features of another "
                                         f"backbone ({'; '.join(diffs)}); use a new output "
                                         f"directory")


def _check_existing_shards(out_dir: str, split: str, num_shards: int, split_size: int) -> None:
    """Refuses to resume a split sharded differently or from another image list.

    Two commands that began the split at once with other shard counts leave both layouts
    (`shard_meta.write_meta` reads the complete one): either may be resumed, and a third
    count is refused naming them."""
    pattern = os.path.join(glob.escape(out_dir), f"{glob.escape(split)}-?????-of-?????.*")
    paths = [p for p in sorted(glob.glob(pattern)) if p.endswith((".tfrecord", ".json"))]
    layouts: dict[int, str] = {}  # shard count -> its first file
    for path in paths:
        name = os.path.basename(path)
        layouts.setdefault(int(name.split("-of-")[1][:5]), name)
    if layouts and num_shards not in layouts:
        held = " and ".join(f"{count} shards ({name})" for count, name in sorted(layouts.items()))
        count = max(layouts)
        raise FeatureFolderMismatchError(
            f"{out_dir} already holds split {split!r} in {held}: resume it with "
            f"--features.num_shards={count} (num_shards={count} when calling extract_split), "
            f"or extract into another folder (--runtime.cache_dir)")
    for path in (p for p in paths if p.endswith(f"-of-{num_shards:05d}.json")):
        try:
            before = shard_meta.read_shard_stats(path).get("split_size")
        except (FileNotFoundError, ValueError):  # its shard is extracted again
            continue
        if before is not None and before != split_size:
            raise FeatureFolderMismatchError(
                f"{path}: split {split!r} had {before} images when this shard was "
                f"written, now {split_size}; the shards would not line up. Extract the "
                f"changed split into a new directory")


def describe_image(example: Example) -> str:
    """How the extraction's records name an image: its path, or its size and id when
    its bytes are held in memory."""
    if isinstance(example.image, (bytes, bytearray)):
        return f"<{len(example.image)} encoded bytes of image {example.image_id}>"
    return str(example.image)


def decode_failure(image, image_size: int | None = None,
                   max_image_pixels: int | None = None) -> str | None:
    """Why the extraction cannot read `image` (a file path or encoded bytes), or None
    when it reads it now (run eagerly, one image).

    The rules are the served model's, in the words of ``ofrnn-predict``
    (`decode_checked`); the extraction applies no pixel limit (`max_image_pixels`
    None). `image_size` (default: decoding only) resizes as the extraction does.
    """
    try:
        if isinstance(image, (bytes, bytearray)):
            data = bytes(image)
        else:
            if not os.path.exists(image):
                return "file not found"
            data = tf.io.read_file(image).numpy()
        decode_checked(data, image_size, max_image_pixels)
    except (tf.errors.OpError, OSError, ValueError) as e:
        return op_error_text(e)
    return None


def _diagnose(example: Example, image_size: int) -> str:
    """Why an image was dropped by the pipeline (rerun eagerly, rare)."""
    return decode_failure(example.image, image_size) or "could not be read or decoded"


@dataclasses.dataclass
class _PendingShard:
    index: int
    start: int  # position in the extraction order
    end: int
    example_ids: Sequence[int]  # indices into the example list
    written: int = 0
    skipped: list = dataclasses.field(default_factory=list)
    writer: tf.io.TFRecordWriter | None = None
    temp_path: str = ""  # where `writer` writes until the shard is complete


class _ShardWriter(threading.Thread):
    """Serialises feature batches into the pending shards and finalises them."""

    def __init__(self, out_dir: str, split: str, num_shards: int,
                 shards: list[_PendingShard], examples: Sequence[Example], image_size: int,
                 summary: ExtractSummary, bar: tqdm):
        super().__init__(daemon=True, name="shard-writer")
        self.out_dir, self.split, self.num_shards = out_dir, split, num_shards
        self.shards, self.examples, self.image_size = shards, examples, image_size
        self.summary, self.bar = summary, bar
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self._shard_pos = 0
        self._next = 0  # next extraction position not yet written or skipped
        self._total = shards[-1].end if shards else 0
        self._aborted = False

    # -- called from the main thread --
    def put(self, positions: np.ndarray, features: np.ndarray) -> None:
        self._send((positions, features))

    def finish(self) -> None:
        self._send(None)
        self.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stops without finalising the open shard, whose temporary file is removed: a
        failed extraction (a full disk, say) leaves nothing the next run cannot use."""
        self._aborted = True
        while self.is_alive():
            try:
                self.queue.put(None, timeout=0.5)
            except queue.Full:
                continue
            self.join()

    def _send(self, item) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if not self.is_alive():
                raise RuntimeError("the shard writer thread stopped unexpectedly")
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # -- writer thread --
    def run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if self._aborted:
                    return
                if item is None:
                    self._advance_to(self._total)
                    self.bar.update(self._total - self.bar.n)
                    return
                positions, features = item
                for row, pos in enumerate(positions):
                    self._advance_to(int(pos))
                    self._write(int(pos), features[row])
                self.bar.update(int(positions[-1]) + 1 - self.bar.n if len(positions) else 0)
        except BaseException as e:  # surfaced in the main thread by put/finish
            self.error = e
        finally:
            for shard in self.shards:  # unfinished: never resumed from, so not kept
                if shard.writer is not None:
                    with contextlib.suppress(Exception):  # a flush on a full disk fails;
                        shard.writer.close()  # a second close does nothing
                    with contextlib.suppress(OSError):
                        os.remove(shard.temp_path)

    def _current(self) -> _PendingShard:
        return self.shards[self._shard_pos]

    def _advance_to(self, pos: int) -> None:
        """Marks positions before `pos` as skipped and closes the shards they end."""
        while self._shard_pos < len(self.shards):
            shard = self._current()
            while self._next < min(pos, shard.end):
                self._skip(shard, self._next)
                self._next += 1
            if self._next >= shard.end:
                self._finalize(shard)
                self._shard_pos += 1
                continue
            return

    def _skip(self, shard: _PendingShard, pos: int) -> None:
        example = self.examples[shard.example_ids[pos - shard.start]]
        record = {"path": describe_image(example), "image_id": example.image_id,
                  "reason": _diagnose(example, self.image_size)}
        shard.skipped.append(record)
        self.summary.skipped.append(record)
        if len(self.summary.skipped) <= NAMED_SKIPPED:  # the rest: `note_more_skipped`
            # Reruns skip finished shards, so a repaired image is extracted only with its shard.
            tqdm.write(f"skipped image {record['path']}: {record['reason']} (once it is "
                       f"fixed, delete {self._path(shard)}, or its whole folder, and rerun to "
                       f"extract it)", file=sys.stderr)

    def _write(self, pos: int, features: np.ndarray) -> None:
        shard = self._current()
        if not shard.start <= pos < shard.end or pos != self._next:
            raise RuntimeError(f"extraction out of order: position {pos}, expected "
                               f"{self._next} in shard {shard.index}")
        example = self.examples[shard.example_ids[pos - shard.start]]
        if shard.writer is None:
            self._open(shard)
        shard.writer.write(tfrecords.serialize_example(
            example.image_id, features, example.label_ids, example.label_areas))
        shard.written += 1
        self.summary.examples_written += 1
        self._next += 1

    def _open(self, shard: _PendingShard) -> None:
        shard.temp_path = incomplete_path(self._path(shard))
        shard.writer = tf.io.TFRecordWriter(shard.temp_path)

    def _path(self, shard: _PendingShard) -> str:
        return os.path.join(self.out_dir,
                            shard_meta.shard_filename(self.split, shard.index, self.num_shards))

    def _finalize(self, shard: _PendingShard) -> None:
        final = self._path(shard)
        if shard.writer is None:  # every image skipped, or an empty shard
            self._open(shard)
        shard.writer.close()
        shard_meta.write_shard_stats(self.out_dir, self.split, shard.index, self.num_shards,
                                    shard.written, shard.skipped, len(self.examples),
                                    format_checked=shard_meta.FORMAT_CHECKS)
        move_into_place(shard.temp_path, final)
        # Only now a finished shard: until its stats are written (a full disk may stop
        # them) and it is in place, `run` removes its temporary file on a failure.
        shard.writer = None
        self.summary.shards_written.append(shard.index)


def move_into_place(temp_path: str, final: str) -> None:
    """Renames a finished shard to `final`. Should another process (on any machine
    sharing the folder) have finished the same shard first, its file stays: a shard's
    bytes depend only on its images and the backbone, so the two are the same."""
    if os.path.exists(final):
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        return
    try:
        os.replace(temp_path, final)
    except FileNotFoundError:
        if not os.path.exists(final):
            raise


_COMPUTE_FNS: "weakref.WeakKeyDictionary[Backbone, tf.types.experimental.GenericFunction]" = (
    weakref.WeakKeyDictionary())


def _compute_fn(backbone: Backbone):
    """The traced float16 feature function of a backbone, reused across splits."""
    if backbone not in _COMPUTE_FNS:
        size = backbone.image_size
        ref = weakref.ref(backbone)  # the cached function must not keep its key alive
        _COMPUTE_FNS[backbone] = tf.function(
            lambda images: tf.cast(ref()(images), tf.float16),
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)], autograph=False)
    return _COMPUTE_FNS[backbone]


def _decode_threads() -> int:
    """Images read and decoded at once beside the backbone: 2, and a quarter of the cores
    this process may use (`usable_cpus`) on larger machines. Decoding is no small part
    of the work for photos: one image decoded and resized on one thread took 0.7 ms at
    224x224 but 19 ms at 1600x1200 and 129 ms at 12 megapixels (4000x3000), against
    about 33 ms of a backbone's time per image on 2 cores (the manifest preset's); two
    threads held such an extraction near 15 images/s whatever the cores. Each image is
    decoded on one thread and batched in order, so the features are the same whatever
    the count."""
    return max(2, usable_cpus() // 4)


def _image_dataset(examples: Sequence[Example], order: Sequence[int], image_size: int,
                   batch_size: int) -> tf.data.Dataset:
    # Tensor slices, not a Python generator: the input pipeline runs no Python, so it
    # does not compete for the interpreter lock with the shard writer and the main loop.
    paths, data = [], []
    for i in order:
        image = examples[i].image
        in_memory = isinstance(image, (bytes, bytearray))
        paths.append("" if in_memory else os.fspath(image))
        data.append(bytes(image) if in_memory else b"")

    @tf.autograph.experimental.do_not_convert
    def load(pos, path, data):
        image_bytes = tf.cond(tf.strings.length(path) > 0,
                              lambda: tf.io.read_file(path), lambda: data)
        # A format the served model refuses (WebP, TIFF, ...) is skipped, not decoded, and
        # so is a BMP it refuses (one TensorFlow would decode with its colours swapped).
        accepted = tf.debugging.Assert(tf.logical_and(has_accepted_format(image_bytes),
                                                      has_accepted_bmp_layout(image_bytes)),
                                       ["image format"])
        with tf.control_dependencies([accepted]):
            return pos, decode_and_resize(tf.identity(image_bytes), image_size)

    ds = tf.data.Dataset.from_tensor_slices((
        tf.range(len(paths), dtype=tf.int64), tf.constant(paths, tf.string),
        tf.constant(data, tf.string)))
    ds = ds.map(load, num_parallel_calls=_decode_threads(), deterministic=True)
    ds = ds.ignore_errors()
    # Without autotuning: its thread held the end of a long extraction for up to a
    # minute (main jobs idled 17-57 s after the last image).
    return ds.batch(batch_size).prefetch(2).with_options(tfrecords.without_autotuning())


def prepare_split_folder(out_dir: str, label_map: LabelMap, info: dict, split: str,
                         num_shards: int, examples: Sequence[Example]) -> None:
    """Makes `out_dir` ready for the shards of `split`: the label ids of `examples`
    checked against `label_map`, the map and backbone `info` written or checked against
    those already there, and shards already there checked to be of `num_shards` and a
    split of as many images."""
    for i, ex in enumerate(examples):
        bad = [c for c in ex.label_ids if not 0 <= c < label_map.num_classes]
        if bad:
            raise ValueError(f"example {i} (image {ex.image_id}): label ids {bad} outside "
                             f"the label map's {label_map.num_classes} classes")
    os.makedirs(out_dir, exist_ok=True)
    check_folder_safe(out_dir)
    if os.path.exists(os.path.join(out_dir, "label_map.json")):
        label_map.check_same(LabelMap.load(out_dir))
    else:
        label_map.save(out_dir)
    _check_compatible(out_dir, info)
    _check_existing_shards(out_dir, split, num_shards, len(examples))
    shard_meta.write_meta(out_dir, info)


def shard_positions(split_size: int, num_shards: int, index: int) -> range:
    """The positions in its split of the images of shard `index`: contiguous runs."""
    return range(index * split_size // num_shards, (index + 1) * split_size // num_shards)


def extract_split(examples: list[Example], label_map: LabelMap, backbone: Backbone,
                  out_dir: str, split: str, *, batch_size: int = 32, num_shards: int = 4,
                  shard_index: int | None = None, progress: bool = True) -> ExtractSummary:
    """Writes the feature shards of one split (see the module docstring).

    Args:
        examples: the split's records (paths or encoded bytes, label ids, areas).
        label_map: written to ``out_dir/label_map.json``; an existing different one
            is refused (`LabelMapMismatchError`).
        backbone: the frozen feature extractor.
        out_dir: features directory (created).
        split: split name used in the shard file names.
        batch_size: images per backbone call.
        num_shards: shards of this split (must match an earlier partial run).
        shard_index: None = every shard; else only that one.
        progress: show a progress bar (images/s) on stderr.
    """
    if not split or "/" in split or os.sep in split:
        raise ValueError(f"bad split name {split!r}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if shard_index is not None and not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    prepare_split_folder(out_dir, label_map, _backbone_info(backbone), split, num_shards,
                         examples)

    summary = ExtractSummary(split=split, out_dir=out_dir, num_shards=num_shards)
    n = len(examples)
    wanted = range(num_shards) if shard_index is None else [shard_index]
    pending: list[_PendingShard] = []
    order: list[int] = []
    for i in wanted:
        reason = shard_meta.unfinished_reason(out_dir, split, i, num_shards)
        if reason is None:
            summary.shards_already_done.append(i)
            continue
        final = os.path.join(out_dir, shard_meta.shard_filename(split, i, num_shards))
        if os.path.exists(final):  # without its stats record: not trusted, not kept
            log(f"{reason}; extracting that shard again")
            with contextlib.suppress(FileNotFoundError):
                os.remove(final)
        ids = shard_positions(n, num_shards, i)
        pending.append(_PendingShard(i, len(order), len(order) + len(ids), ids))
        order.extend(ids)
    if not pending:
        shard_meta.write_meta(out_dir)
        return summary

    compute = _compute_fn(backbone)
    bar = progress_bar(total=len(order), unit="img", desc=f"features {split}",
                       enabled=progress, smoothing=0.1)
    writer = _ShardWriter(out_dir, split, num_shards, pending, examples, backbone.image_size,
                          summary, bar)
    writer.start()
    start = time.perf_counter()
    try:
        for positions, images in _image_dataset(examples, order, backbone.image_size,
                                                batch_size):
            writer.put(positions.numpy(), compute(images).numpy())
        writer.finish()
    except BaseException:
        writer.abort()
        bar.close()
        _note_finished_shards(out_dir)  # a rerun extracts (and names) the rest again
        raise
    summary.seconds = time.perf_counter() - start
    bar.close()
    _note_more_skipped(out_dir, split, summary)
    shard_meta.write_meta(out_dir)
    return summary


def _note_more_skipped(out_dir: str, split: str, summary: ExtractSummary) -> None:
    """One line for the skipped images past the first `NAMED_SKIPPED`, which were named."""
    more = len(summary.skipped) - NAMED_SKIPPED
    if more > 0:
        log(f"features {split}: {more} more image(s) skipped, each named with its reason "
            f"under \"skipped\" in {os.path.join(out_dir, shard_meta.META_FILENAME)} (once "
            f"they are fixed, delete their shards and rerun to extract them)")


def _note_finished_shards(out_dir: str) -> None:
    """Records the shards finished before an extraction failed in ``meta.json``, if it
    can: the failure (a full disk, say) often stops this write too, and it must not
    hide that failure, which names the shard (the next run merges the shards' own
    records anyway)."""
    try:
        shard_meta.write_meta(out_dir)
    except (OSError, ValueError) as error:  # ValueError: an unreadable meta.json
        log(f"could not update {os.path.join(out_dir, shard_meta.META_FILENAME)} "
            f"after the extraction failed: {error}")
