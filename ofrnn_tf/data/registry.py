"""One entry point from a data-set name and a split to `Example` records.

========================  ===========================  ================================
dataset                   paths                        splits
========================  ===========================  ================================
``fashion_canvases``      ``data_dir`` (built by        train, val, test
                          ``build_fashion_canvases``)
``coco``                  ``data_dir`` holding          train, val (``test`` reads
                          ``annotations/instances_      val2014, the usual protocol);
                          {train,val}2014.json`` and    or ``annotation_file`` +
                          ``{train,val}2014/`` (or      ``image_dir`` for any split name
                          2017's: ``coco_release``)
``nuswide``               ``data_dir`` (the release)    train, test
``manifest``              ``manifest`` (a file), or     any: ``data_dir/<split>.csv``
                          ``data_dir``                  or ``.jsonl``
========================  ===========================  ================================

Every data set also takes ``label_map`` (a `LabelMap`: data whose classes differ is
refused, naming both) and ``check_files`` (drop and count listed images that are
missing; default True).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ofrnn_tf.data import DataFileError, DataNotFoundError
from ofrnn_tf.data.adapters.coco import load_coco
from ofrnn_tf.data.adapters.manifest import load_manifest
from ofrnn_tf.data.adapters.nuswide import load_nuswide
from ofrnn_tf.data.canvas_store import load_benchmark_split
from ofrnn_tf.data.example import Example, LoadStats
from ofrnn_tf.labels import LabelMap

DATASETS = ("fashion_canvases", "coco", "nuswide", "manifest")
_COCO_SPLITS = {"train": "train", "val": "val", "test": "val"}
COCO_RELEASES = ("2014", "2017")  # the paper's first
MANIFEST_EXTENSIONS = ("csv", "jsonl", "json")


def coco_annotation_file(data_dir: str, name: str) -> str:
    return os.path.join(data_dir, "annotations", f"instances_{name}.json")


def coco_release(data_dir: str, split: str = "train") -> Optional[str]:
    """The MS-COCO release a ``data_dir`` holds, by its training annotations (else by
    those of `split`): 2014 (the paper's) where it holds both, else 2017 (the same
    images in other splits, as most copies are now); None where it holds neither."""
    for name in dict.fromkeys(("train", _COCO_SPLITS[split])):
        for release in COCO_RELEASES:
            if os.path.isfile(coco_annotation_file(data_dir, name + release)):
                return release
    return None


def _coco_files(data_dir: str, split: str, release: str) -> tuple[str, str]:
    """The annotation file and image folder of `split` in `release` (``auto``:
    `coco_release`) of the COCO folder `data_dir`."""
    if split not in _COCO_SPLITS:
        raise ValueError(f"coco split must be one of {sorted(_COCO_SPLITS)}, "
                         f"got {split!r} (or pass annotation_file and image_dir)")
    asked = release
    if release == "auto":
        found = coco_release(data_dir, split)
        if found is None:
            first, then = (f"{_COCO_SPLITS[split]}{r}" for r in COCO_RELEASES)
            raise DataNotFoundError(
                f"COCO annotation file not found: {coco_annotation_file(data_dir, first)} "
                f"(nor the {COCO_RELEASES[1]} release's instances_{then}.json)")
        release = found
    elif release not in COCO_RELEASES:
        raise ValueError(f"coco release must be auto or one of {list(COCO_RELEASES)}, "
                         f"got {release!r}")
    name = _COCO_SPLITS[split] + release
    annotation_file = coco_annotation_file(data_dir, name)
    if not os.path.isfile(annotation_file) and asked != "auto":
        other = [f"instances_{_COCO_SPLITS[split]}{r}.json" for r in COCO_RELEASES
                 if r != release and os.path.isfile(
                     coco_annotation_file(data_dir, _COCO_SPLITS[split] + r))]
        raise DataNotFoundError(
            f"COCO annotation file not found: {annotation_file} (--data.coco_release="
            f"{release}" + (f"; the folder holds {other[0]})" if other else ")"))
    return annotation_file, os.path.join(data_dir, name)


def manifest_candidates(data_dir: str, split: str) -> list[str]:
    """The files a manifest folder may hold `split` in, in the order they are looked for."""
    return [os.path.join(data_dir, f"{split}.{ext}") for ext in MANIFEST_EXTENSIONS]


def manifest_file(data_dir: str, split: str) -> Optional[str]:
    """The manifest of `split` in the folder `data_dir`, or None when it has none;
    `DataFileError` when the folder holds two (``train.csv`` and ``train.jsonl``)."""
    found = [c for c in manifest_candidates(data_dir, split) if os.path.exists(c)]
    if len(found) > 1:
        raise DataFileError(f"{data_dir}: {' and '.join(os.path.basename(f) for f in found)} "
                            f"both hold the {split} split: keep one of them")
    return found[0] if found else None


def load_split(dataset: str, split: str, **paths: Any
               ) -> tuple[list[Example], LabelMap, LoadStats]:
    """Loads one split of a named data set.

    Args:
        dataset: one of `DATASETS`.
        split: the split name (see the module table).
        **paths: ``data_dir``, ``annotation_file``, ``image_dir``, ``manifest``,
            ``coco_release`` (``auto``, ``2014`` or ``2017``), ``label_map``,
            ``check_files`` as the data set needs.

    Returns:
        (examples, label map, load statistics).
    """
    label_map = paths.pop("label_map", None)
    check_files = paths.pop("check_files", True)
    data_dir = paths.pop("data_dir", None)
    annotation_file = paths.pop("annotation_file", None)
    image_dir = paths.pop("image_dir", None)
    manifest = paths.pop("manifest", None)
    release = paths.pop("coco_release", "auto")
    if paths:
        raise TypeError(f"load_split: unknown arguments {sorted(paths)}")

    if dataset == "fashion_canvases":
        _need(dataset, data_dir=data_dir)
        examples, lm, stats = load_benchmark_split(data_dir, split, check_files=check_files)
        if label_map is not None:
            label_map.check_same(lm)
        return examples, lm, stats

    if dataset == "coco":
        if annotation_file is None:
            _need(dataset, data_dir=data_dir)
            annotation_file, release_images = _coco_files(data_dir, split, release)
            image_dir = image_dir or release_images
        _need(dataset, image_dir=image_dir)
        return load_coco(annotation_file, image_dir, label_map, check_files=check_files)

    if dataset == "nuswide":
        _need(dataset, data_dir=data_dir)
        return load_nuswide(data_dir, split, label_map, check_files=check_files)

    if dataset == "manifest":
        if manifest is None:
            _need(dataset, data_dir=data_dir)
            manifest = manifest_file(data_dir, split)
            if manifest is None:
                hint = ""
                if os.path.isfile(data_dir):  # a manifest named where its folder goes
                    hint = (f"; {data_dir} is a file, not a folder: give one manifest file "
                            f"as --data.manifest={data_dir}")
                raise DataNotFoundError(f"no manifest for split {split!r}: none of "
                                        f"{manifest_candidates(data_dir, split)} exists{hint}")
        return load_manifest(manifest, label_map, check_files=check_files)

    raise ValueError(f"unknown dataset {dataset!r}; known: {list(DATASETS)}")


def _need(dataset: str, **values: Any) -> None:
    for name, value in values.items():
        if not value:
            flag = " (--data.data_dir: the folder of its files" if name == "data_dir" else ""
            if flag:
                flag += ", or --data.manifest=FILE)" if dataset == "manifest" else ")"
            raise DataNotFoundError(f"dataset {dataset!r} needs {name}{flag}")
