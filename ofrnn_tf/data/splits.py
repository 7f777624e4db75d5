"""The train / val / test examples of a run, and the checks that they can make one.

Data sets without a validation split (MS-COCO's val2014 is the test split of the
paper's protocol; NUS-WIDE has train and test only) hold one out of train. A single
manifest file holds all three. The hold-out is a deterministic function of each
image id (a hash), so it does not move between runs or when images are added, and
τ is never chosen on test images.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from typing import Callable, Iterator, Optional

from ofrnn_tf.data import DataFileError
from ofrnn_tf.data.example import Example
from ofrnn_tf.data.registry import load_split, manifest_file
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.status import log

SPLITS = ("train", "val", "test")
# Data sets whose validation split is held out of train.
HOLD_OUT_VAL = ("coco", "nuswide")


class SplitTooSmallError(ValueError):
    """A split cannot serve the run (empty validation, less than one training batch)."""


class SplitEmptiedError(SplitTooSmallError):
    """Unreadable images left a split empty: the remedy is in the data, not in a flag."""


class NothingToLearnError(SplitTooSmallError):
    """Every training image carries every class, so the model could only ever predict
    them all (one class whose negatives have no label, say)."""


def _hash_fraction(image_id: str, salt: str = "") -> float:
    digest = hashlib.sha1((salt + image_id).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def hold_out(examples: list[Example], fraction: float, salt: str = ""
             ) -> tuple[list[Example], list[Example]]:
    """`(kept, held_out)`: each example goes by the hash of its image id."""
    chosen: Callable[[Example], bool] = lambda e: _hash_fraction(e.image_id, salt) < fraction
    return [e for e in examples if not chosen(e)], [e for e in examples if chosen(e)]


def load_examples(dataset: str, paths: dict, val_fraction: float
                  ) -> tuple[dict[str, list[Example]], LabelMap]:
    """The examples of train, val and test, and their label map.

    Args:
        dataset: a name of `ofrnn_tf.data.registry.DATASETS`.
        paths: `load_split` path arguments (``data_dir`` or ``manifest``).
        val_fraction: share of train held out as validation where there is no val split
            (and, for a single manifest file, as test too).
    """
    if dataset == "manifest" and paths.get("manifest"):
        if val_fraction >= 0.5:
            raise SplitTooSmallError(
                f"--data.val_fraction={val_fraction}: one manifest file gives that share of "
                f"its images to test and as much again to validation, which leaves none to "
                f"train; use a value below 0.5 (the default is 0.05)")
        examples, label_map, stats = load_split(dataset, "train", **paths)
        log(f"manifest {stats}")
        check_distinct_images({f"the manifest {paths['manifest']}": examples})
        rest, test = hold_out(examples, val_fraction, salt="test:")
        if not test:
            raise SplitTooSmallError(
                f"one manifest file: no image of the {len(examples)} found was held out for "
                f"test: raise --data.val_fraction (test takes that share, as validation "
                f"does; {val_fraction} now) or list more images")
        train, val = hold_out(rest, val_fraction / (1.0 - val_fraction))
        log(f"one manifest file: {len(val)} images held out for validation and "
            f"{len(test)} for test")
        _refuse_all_held_out(train, len(examples), val_fraction, "validation and test")
        check_something_to_learn(train, label_map, stats.dropped_unlabeled)
        splits = {"train": train, "val": val, "test": test}
        warn_of_copies_across_splits(splits)
        return splits, label_map

    splits: dict[str, list[Example]] = {}
    label_map = None
    unlabeled = 0
    for split in ("train", "test", "val"):
        if split == "val" and dataset in HOLD_OUT_VAL:
            break
        val_file = None
        if split == "val" and dataset == "manifest":
            val_file = manifest_file(paths["data_dir"], "val") if paths.get("data_dir") else None
            if val_file is None:  # a manifest folder may have no val file
                break
        examples, split_map, stats = load_split(dataset, split, label_map=label_map, **paths)
        label_map = label_map or split_map
        unlabeled += stats.dropped_unlabeled
        log(f"{dataset} {split}: {stats}")
        if val_file is not None and not examples:
            raise SplitTooSmallError(
                f"{val_file}: no labelled image, so the validation split is empty: list "
                f"validation images in it, or remove the file to hold out "
                f"--data.val_fraction of train instead")
        if split == "test" and not examples and stats.dropped_unlabeled:
            raise SplitTooSmallError(
                f"{stats.source}: no labelled image, so the test split is empty: give each "
                f"test image its labels (images without a label are left out; give them a "
                f"class such as 'none')")
        splits[split] = examples
    check_distinct_images(splits)
    if "val" not in splits:
        given = len(splits["train"])
        splits["train"], splits["val"] = hold_out(splits["train"], val_fraction)
        log(f"held out {len(splits['val'])} training images as the validation split")
        _refuse_all_held_out(splits["train"], given, val_fraction, "validation")
    check_something_to_learn(splits["train"], label_map, unlabeled)
    if dataset == "manifest":
        warn_of_copies_across_splits(splits)
    return {split: splits[split] for split in SPLITS}, label_map


def check_something_to_learn(train: list[Example], label_map: LabelMap,
                             unlabeled: int) -> None:
    """Refuses, before any work, training images that all carry every class: the model
    would learn to predict them all on any image, and score 100 on a test split of such
    images. Images with no label are left out of every split (a row with no label is no
    negative example), which is how one class with negatives comes to this.

    Args:
        train: the training split.
        label_map: the classes.
        unlabeled: the images of the data set left out for having no label.

    Raises:
        NothingToLearnError: naming the classes and the images left out.
    """
    classes = label_map.num_classes
    if not train or any(len(set(example.label_ids)) < classes for example in train):
        return
    shown = ", ".join(repr(n) for n in label_map.names[:5])
    more = " ..." if label_map.num_classes > 5 else ""
    raise NothingToLearnError(
        f"each of the {len(train)} training images carries every class ({shown}{more}), so "
        f"the model could only learn to predict all of them on any image; {unlabeled} "
        f"listed image(s) with no label were left out of every split (an image with no "
        f"label is not a negative example here). Give the images without these classes a "
        f"class of their own (e.g. 'none' or 'no_defect'), or add images of other classes")


def _real_path_of(directories: dict[str, str], path: str) -> str:
    """`os.path.realpath(path)`, resolving each folder once (one ``lstat`` per file)."""
    absolute = os.path.abspath(path)
    if os.path.islink(absolute):
        return os.path.normcase(os.path.realpath(absolute))
    folder, name = os.path.split(absolute)
    if folder not in directories:
        directories[folder] = os.path.realpath(folder)
    return os.path.normcase(os.path.join(directories[folder], name))


def check_distinct_images(splits: dict[str, list[Example]]) -> None:
    """Refuses an image file (its resolved real path: ``./img/a.jpg`` and ``img/a.jpg``,
    a symbolic link and its target) listed twice, in one split or in two: test metrics
    would be computed on training images, a validation image would pick τ on itself.

    Raises:
        DataFileError: naming the file, the split(s) and how each lists it.
    """
    first: dict[str, tuple[str, str]] = {}
    directories: dict[str, str] = {}
    for split, examples in splits.items():
        for example in examples:
            if not isinstance(example.image, str):
                continue
            real = _real_path_of(directories, example.image)
            if real not in first:
                first[real] = (split, example.image_id)
                continue
            other_split, other_id = first[real]
            if other_split == split:
                where, why = f"twice in {split}", ""
            else:
                where = f"in {other_split} and in {split}"
                why = " (its scores would be measured on an image the run saw elsewhere)"
            raise DataFileError(
                f"the image {real} is listed {where} (as {other_id!r} and "
                f"{example.image_id!r}): each image may be in one split only, once{why}; "
                f"remove one of the two")


def _file_digest(path: str, head: Optional[int] = None) -> Optional[str]:
    """The SHA-256 of a file's bytes (of its first `head` bytes, if given), or None where
    it cannot be read (the extraction names such a file)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            if head is not None:
                digest.update(f.read(head))
            else:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


# The first bytes compared before files of one size are read whole: images of one size
# (a data set of BMPs, whose size is set by their pixel count) differ within them.
_HEAD_BYTES = 8192


def _by_digest(size: int, group: list[tuple[str, Example]]
               ) -> Iterator[list[tuple[str, Example]]]:
    """The files of `group` (of `size` bytes, in split order) with the same bytes, in
    groups that span two splits or more: told apart by their first `_HEAD_BYTES` first,
    so that only those that agree there are read whole."""
    for same_head in _spanning(_grouped(group, lambda path: _file_digest(path, _HEAD_BYTES))):
        yield from (_spanning(_grouped(same_head, _file_digest)) if size > _HEAD_BYTES
                    else [same_head])


def _grouped(group: list[tuple[str, Example]], key: Callable[[str], Optional[str]]
             ) -> list[list[tuple[str, Example]]]:
    """`group` split by the `key` of each file (None: passed over), in order."""
    found: dict[str, list[tuple[str, Example]]] = defaultdict(list)
    for split, example in group:
        value = key(example.image)
        if value is not None:
            found[value].append((split, example))
    return list(found.values())


def _spanning(groups: list[list[tuple[str, Example]]]) -> list[list[tuple[str, Example]]]:
    """The groups whose files are in two splits or more."""
    return [group for group in groups if len({split for split, _ in group}) > 1]


# What an image of the second split with a copy in the first does to the run's numbers.
_COPY_CONSEQUENCE = {
    ("train", "val"): "validation chooses the best epoch and τ on images the run trained on",
    ("train", "test"): "the test metrics count images the run trained on",
    ("val", "test"): "validation chooses the best epoch and τ on test images",
}
# Copies a warning names before it counts the rest.
_NAMED_COPIES = 3


def copies_across_splits(splits: dict[str, list[Example]]
                         ) -> dict[tuple[str, str], list[tuple[Example, Example]]]:
    """The images of each split whose bytes an earlier split (in `SPLITS` order) lists
    under another path (a copy, a hard link), as `{(earlier, later): [(its image there,
    the copy), ...]}`. Only files of one size listed in two splits are read, and read
    whole only where their first bytes agree (`_by_digest`), so a data set without such
    pairs costs one ``stat`` per image, or a few kilobytes of each file where all are of
    one size (BMPs of one pixel count); files that cannot be read, and empty ones
    (failed downloads: no image, so no metric counts them), are passed over (the
    extraction names them)."""
    by_size: dict[int, list[tuple[str, Example]]] = defaultdict(list)
    for split in SPLITS:
        for example in splits.get(split, ()):
            if not isinstance(example.image, str):
                continue
            try:
                size = os.stat(example.image).st_size
            except OSError:
                continue
            if size:
                by_size[size].append((split, example))
    found: dict[tuple[str, str], list[tuple[Example, Example]]] = defaultdict(list)
    for size, group in by_size.items():
        if len({split for split, _ in group}) < 2:
            continue
        for same in _by_digest(size, group):
            earlier, original = same[0]
            for split, example in same[1:]:
                if split != earlier:
                    found[(earlier, split)].append((original, example))
    return {pair: found[pair] for pair in _COPY_CONSEQUENCE if found.get(pair)}


def warn_of_copies_across_splits(splits: dict[str, list[Example]]) -> None:
    """Says, for each pair of splits, how many images of the later one are byte-for-byte
    copies of an image of the earlier one under another path, naming the first, and what
    that does to the run's numbers. A warning, not a refusal: two files of the same bytes
    may be two observations (blank frames, renders), which only the user can tell; one
    path listed twice is refused (`check_distinct_images`)."""
    for (earlier, later), pairs in copies_across_splits(splits).items():
        named = "; ".join(f"{copy.image} = {original.image}"
                          for original, copy in pairs[:_NAMED_COPIES])
        more = f"; and {len(pairs) - _NAMED_COPIES} more" if len(pairs) > _NAMED_COPIES else ""
        log(f"WARNING: {len(pairs)} {later} image(s) hold the same bytes as a {earlier} "
            f"image under another name ({named}{more}): "
            f"{_COPY_CONSEQUENCE[(earlier, later)]}; unless they are distinct images that "
            f"happen to be equal, remove one of each pair from its list")


def _refuse_all_held_out(train: list[Example], given: int, val_fraction: float,
                         held_for: str) -> None:
    """Refuses a training split that `--data.val_fraction`'s hold-out emptied (told to
    lower the batch size, the user could not)."""
    if given and not train:
        raise SplitTooSmallError(
            f"--data.val_fraction={val_fraction} held out every one of the {given} training "
            f"image(s) for {held_for}, leaving none to train on (each image is held out by "
            f"the hash of its id, so a few images may all go): lower it, or add images")


def check_split_sizes(splits: dict[str, list[Example]], batch_size: int) -> None:
    """Refuses, before any work, splits too small for the run, naming the fix."""
    train, val = len(splits["train"]), len(splits["val"])
    if not train:
        raise SplitTooSmallError("the train split is empty: add training images")
    if train < batch_size:
        raise SplitTooSmallError(
            f"the train split has {train} image(s), fewer than one batch of {batch_size}: "
            f"lower --train.batch_size (to at most {max(train, 1)}) or add training images")
    if val == 0:
        raise SplitTooSmallError(
            f"the validation split is empty (train has {train} image(s)): raise "
            f"--data.val_fraction so that at least one image is held out, or give a val split")
    if not splits["test"]:
        raise SplitTooSmallError("the test split is empty: give test images (a test manifest, "
                                 "or the data set's test split)")


def check_extracted_sizes(written: dict[str, int], skipped: dict[str, int], batch_size: int,
                          meta_file: str) -> None:
    """Refuses, before training, splits left too small by the images the extraction
    skipped (those the served model would refuse, `extract.decode_failure`).

    Args:
        written: examples written to the feature cache, per split.
        skipped: images of each split the extraction skipped.
        batch_size: the run's global batch size.
        meta_file: the feature cache's ``meta.json``, which lists the skipped images.
    """
    def lost(split: str) -> str:
        return (f"{skipped[split]} of its {written[split] + skipped[split]} image(s) were "
                f"skipped, unreadable or in a format the served model refuses (listed with "
                f"the reason under 'skipped' in {meta_file})")

    # The fingerprint of own data covers each file's size, so a replaced image of
    # another size gives another cache anyway; the benchmark's is known by image ids
    # and labels alone (see ofrnn_tf.features.cache), and so is a file replaced by one
    # of the same size.
    remedy = (f"remove those images from the data, or replace them with readable files "
              f"(a new feature cache is then extracted beside "
              f"{os.path.dirname(meta_file)}, which can be deleted once no run uses it; "
              f"a file of the same size as before needs that folder deleted first)")
    if not written["train"]:
        raise SplitEmptiedError(
            f"the train split has no example after feature extraction: {lost('train')}; "
            f"{remedy}")
    if written["train"] < batch_size:
        raise SplitTooSmallError(
            f"the train split has {written['train']} example(s) after feature extraction, "
            f"fewer than one batch of {batch_size}: {lost('train')}; {remedy}, or lower "
            f"--train.batch_size (to at most {written['train']})")
    for split, name in (("val", "validation"), ("test", "test")):
        if not written[split]:
            raise SplitEmptiedError(
                f"the {name} split has no example after feature extraction: {lost(split)}; "
                f"{remedy}")


def label_statistics(examples: list[Example], num_classes: int) -> tuple[list[int], int]:
    """Per-class counts and the largest label count of an image (T_max)."""
    counts = [0] * num_classes
    longest = 0
    for example in examples:
        for c in example.label_ids:
            counts[c] += 1
        longest = max(longest, len(example.label_ids))
    return counts, longest
