"""NUS-WIDE (81 concepts) in the layout of its standard release.

::

    root/Concepts81.txt                                   concept names, one a line
                                                          (or root/ConceptsList/Concepts81.txt,
                                                          where the release keeps it)
    root/ImageList/TrainImagelist.txt                     actor\\0001_2124494179.jpg ...
    root/ImageList/TestImagelist.txt
    root/Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 a line,
    root/Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt    aligned with the list
    root/Flickr/actor/0001_2124494179.jpg                 the images

Images with no positive concept are dropped and counted (about a fifth of the
release), as are listed images missing from ``Flickr/`` (many Flickr downloads of the
original release failed).
"""

from __future__ import annotations

import os

import numpy as np

from ofrnn_tf.data import (
    DataFileError, DataNotFoundError, ImagesNotFoundError, file_label_map)
from ofrnn_tf.data.example import Example, LoadStats
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.status import progress_bar

SPLITS = {"train": ("TrainImagelist.txt", "Train"), "test": ("TestImagelist.txt", "Test")}
CONCEPTS_LOCATIONS = ("Concepts81.txt", os.path.join("ConceptsList", "Concepts81.txt"))


def concepts_file(root: str) -> str:
    """The concept list: at the release root, or in ``ConceptsList/`` as distributed."""
    for relative in CONCEPTS_LOCATIONS:
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(f"NUS-WIDE concept list not found: looked for "
                            f"{' and '.join(os.path.join(root, r) for r in CONCEPTS_LOCATIONS)}")


def load_nuswide(root: str,
                 split: str,
                 label_map: LabelMap | None = None,
                 *,
                 check_files: bool = True,
                 progress: bool = True) -> tuple[list[Example], LabelMap, LoadStats]:
    """Reads one split of NUS-WIDE.

    The label map is the concept list in the order of ``Concepts81.txt``.

    Args:
        root: the release folder (holding ``Concepts81.txt`` or
            ``ConceptsList/Concepts81.txt``).
        split: "train" or "test".
        label_map: the label map the caller expects; a different concept list is
            refused with an error naming both.
        check_files: drop (and count) listed images missing under ``root/Flickr``.
        progress: show a progress bar while reading the label files.

    Returns:
        (examples in image-list order, label map, load statistics). `image_id` is
        the image's path relative to ``Flickr/`` with forward slashes.

    Raises:
        DataNotFoundError: a file of the layout is missing (named in the message).
        DataFileError: a label file's length differs from the image list, or holds a
            value other than 0/1 (file and line named).
        DataLabelMapError: the concept list differs from `label_map`.
    """
    if split not in SPLITS:
        raise ValueError(f"NUS-WIDE split must be one of {sorted(SPLITS)}, got {split!r}")
    list_name, suffix = SPLITS[split]
    concepts_path = concepts_file(root)
    concepts = [c.strip() for c in _read_lines(concepts_path) if c.strip()]
    # Names in NFC; the label files keep the list's spelling.
    label_map = file_label_map(concepts, concepts_path, label_map)

    list_file = os.path.join(root, "ImageList", list_name)
    listed = [(n, _relative_path(p))
              for n, p in enumerate(_read_lines(list_file), start=1) if p.strip()]
    paths = [rel for _, rel in listed]
    if not paths:
        raise DataFileError(f"{list_file}: empty image list")

    labels = np.zeros((len(paths), len(concepts)), dtype=bool)
    label_dir = os.path.join(root, "Groundtruth", "TrainTestLabels")
    for k, concept in enumerate(progress_bar(concepts, desc=f"nus-wide {split} labels",
                                             unit="concept", enabled=progress)):
        label_file = os.path.join(label_dir, f"Labels_{concept}_{suffix}.txt")
        labels[:, k] = _read_label_file(label_file, len(paths), list_file)

    stats = LoadStats(list_file, len(paths))
    examples: list[Example] = []
    flickr = os.path.join(root, "Flickr")
    for i, rel in enumerate(paths):
        ids = np.flatnonzero(labels[i])
        if ids.size == 0:
            stats.dropped_unlabeled += 1
            continue
        path = os.path.join(flickr, *rel.split("/"))
        if check_files and not os.path.exists(path):
            stats.missing(path, f"line {listed[i][0]} of {os.path.basename(list_file)}")
            continue
        examples.append(Example(image_id=rel, image=path,
                                label_ids=tuple(int(j) for j in ids)))
    stats.images = len(examples)
    if not examples and stats.dropped_missing:
        raise ImagesNotFoundError(
            f"{list_file}: none of the {stats.dropped_missing} labelled images exists "
            f"under {flickr} (first: {stats.first_missing})")
    return examples, label_map, stats


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataNotFoundError(f"NUS-WIDE file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def _relative_path(line: str) -> str:
    """``actor\\0001_2124494179.jpg`` (or a full ``C:\\...\\Flickr\\actor\\...`` path)
    → ``actor/0001_2124494179.jpg``."""
    rel = line.strip().replace("\\", "/")
    marker = "Flickr/"
    if marker in rel:
        rel = rel[rel.rindex(marker) + len(marker):]
    return rel.lstrip("/")


def _read_label_file(path: str, expected: int, list_file: str) -> np.ndarray:
    values = [v.strip() for v in _read_lines(path)]
    while values and not values[-1]:
        values.pop()
    if len(values) != expected:
        raise DataFileError(f"{path}: {len(values)} labels but {list_file} lists "
                         f"{expected} images")
    arr = np.asarray(values)
    ones, zeros = arr == "1", arr == "0"
    bad = np.flatnonzero(~(ones | zeros))
    if bad.size:
        raise DataFileError(f"{path}: line {bad[0] + 1}: expected 0 or 1, got "
                         f"{values[bad[0]]!r}")
    return ones
