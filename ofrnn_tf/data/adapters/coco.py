"""MS-COCO style ``instances_*.json`` files, read through pycocotools.

Also reads the embedded benchmark (its canvases are written in the same format) and
COCO files written by other tools: image ids may start at 0, categories may have no
annotation, and images without any annotation are dropped and counted.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from typing import Any, Sequence

from pycocotools.coco import COCO

from ofrnn_tf.data import (
    DataFileError, DataNotFoundError, ImagesNotFoundError, file_label_map)
from ofrnn_tf.data.example import Box, Example, LoadStats
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.status import progress_bar


def load_coco(annotation_file: str,
              image_dir: str,
              label_map: LabelMap | None = None,
              *,
              check_files: bool = True,
              progress: bool = True) -> tuple[list[Example], LabelMap, LoadStats]:
    """Reads a COCO instances file into `Example` records.

    The label map is the category names ordered by category id (as text where the ids
    are strings: "10" before "2"), every category included (also those no annotation
    uses), so a model trained on one split of a data set reads the other split with the
    same ids.

    `Example.label_areas` holds, per label, the bounding-box area (``w * h``) of the
    largest object of that class divided by the image area. The bounding box is used
    rather than the ``area`` field (the segment area in MS-COCO) because every
    instances file has boxes, while segment areas depend on how masks were drawn; the
    ``area`` field is used only for objects that have no ``bbox``.

    Args:
        annotation_file: path of the ``instances_*.json`` file.
        image_dir: folder the images' ``file_name`` entries are relative to.
        label_map: the label map the caller expects; a file whose categories differ
            is refused with an error naming both.
        check_files: drop (and count) images whose file does not exist.
        progress: show a progress bar on large files.

    Returns:
        (examples in file order, label map, load statistics).

    Raises:
        DataNotFoundError: the annotation file does not exist.
        DataFileError: the file is not valid COCO JSON, an annotation refers to an
            unknown image or category, a number (box, area, image size) is not a
            finite number, or two images have the same file (the message names the
            annotation or image id).
        DataLabelMapError: the categories differ from `label_map` (a
            `LabelMapMismatchError`).
    """
    dataset = _read_json(annotation_file)
    _check_structure(dataset, annotation_file)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()

    cat_ids = sorted(coco.cats)
    label_map = file_label_map([coco.cats[c]["name"] for c in cat_ids], annotation_file,
                               label_map, where="categories")
    label_of_cat = {c: i for i, c in enumerate(cat_ids)}
    _check_references(dataset, coco, annotation_file)

    images = dataset.get("images", [])
    stats = LoadStats(annotation_file, len(images))
    examples: list[Example] = []
    image_of_file: dict[str, Any] = {}
    for img in progress_bar(images, desc=f"coco {os.path.basename(annotation_file)}",
                            unit="img", enabled=progress and len(images) >= 20000):
        path = os.path.join(image_dir, img["file_name"])
        file_key = os.path.normcase(os.path.normpath(path))
        if file_key in image_of_file:
            raise DataFileError(
                f"{annotation_file}: image ids {image_of_file[file_key]!r} and {img['id']!r} "
                f"have the same file {img['file_name']!r}: list each image once, with all "
                f"of its annotations")
        image_of_file[file_key] = img["id"]
        anns = coco.imgToAnns.get(img["id"], [])
        if not anns:
            stats.dropped_unlabeled += 1
            continue
        if check_files and not os.path.exists(path):
            stats.missing(path, f"image id {img['id']!r}")
            continue
        examples.append(_example(img, anns, label_of_cat, path))
    stats.images = len(examples)

    if images and not examples and stats.dropped_missing:
        raise ImagesNotFoundError(
            f"{annotation_file}: none of the {stats.dropped_missing} labelled images "
            f"exists under image_dir {image_dir!r} (first: {stats.first_missing})")
    return examples, label_map, stats


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise DataNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataFileError(f"{path}: not a valid JSON file ({e})") from None
    except OSError as e:
        raise OSError(f"cannot read COCO annotation file {path}: {e}") from None


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_records(path: str, records: list, key: str, kind: str, field: str) -> None:
    """Each of `records` is an object with an `id` (an integer or a string) and a non-empty
    string `field`; ids are unique, also as strings (they become `Example.image_id`)."""
    seen: set = set()
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "id" not in record or field not in record:
            raise DataFileError(f"{path}: {key}[{i}] needs 'id' and '{field}'")
        if not _is_id(record["id"]):
            raise DataFileError(f"{path}: {key}[{i}] has id {record['id']!r} (expected an integer "
                             f"or a string)")
        if not isinstance(record[field], str) or not record[field]:
            raise DataFileError(f"{path}: {kind} id {record['id']!r} has {field} "
                             f"{record[field]!r} (expected a non-empty string)")
        if str(record["id"]) in seen:
            raise DataFileError(f"{path}: duplicate {kind} id {record['id']!r}")
        seen.add(str(record["id"]))


def _check_structure(dataset: Any, path: str) -> None:
    if not isinstance(dataset, dict):
        raise DataFileError(f"{path}: expected a JSON object with 'images', 'annotations' "
                         f"and 'categories', got {type(dataset).__name__}")
    for key in ("images", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DataFileError(f"{path}: missing or malformed '{key}' list")
    if not isinstance(dataset.get("annotations", []), list):
        raise DataFileError(f"{path}: malformed 'annotations' (expected a list)")
    if not dataset["categories"]:
        raise DataFileError(f"{path}: no categories")

    _check_records(path, dataset["images"], "images", "image", "file_name")
    _check_records(path, dataset["categories"], "categories", "category", "name")
    ids = [c["id"] for c in dataset["categories"]]
    numbers = [i for i in ids if isinstance(i, int)]
    if numbers and len(numbers) < len(ids):  # the label map orders classes by category id
        text = next(i for i in ids if not isinstance(i, int))
        raise DataFileError(f"{path}: categories have integer ids ({numbers[0]!r}) and string "
                            f"ids ({text!r}), which have no order together: give every "
                            f"category an id of one kind")
    for i, ann in enumerate(dataset.get("annotations", [])):
        if not isinstance(ann, dict):
            raise DataFileError(f"{path}: annotations[{i}] is not an object")
        for key in ("image_id", "category_id"):
            if key not in ann:
                raise DataFileError(f"{path}: annotation {_ann_name(ann, i)} has no '{key}'")
            if not _is_id(ann[key]):
                raise DataFileError(f"{path}: annotation {_ann_name(ann, i)} has {key} "
                                 f"{ann[key]!r} (expected an integer or a string)")
        # pycocotools indexes annotations by id; some writers leave it out.
        ann.setdefault("id", f"#{i}")
        if not _is_id(ann["id"]):
            raise DataFileError(f"{path}: annotations[{i}] has id {ann['id']!r} (expected an "
                             f"integer or a string)")


def _check_references(dataset: dict, coco: COCO, path: str) -> None:
    for i, ann in enumerate(dataset.get("annotations", [])):
        if ann["image_id"] not in coco.imgs:
            raise DataFileError(f"{path}: annotation {_ann_name(ann, i)} refers to unknown "
                             f"image id {ann['image_id']!r}")
        if ann["category_id"] not in coco.cats:
            raise DataFileError(f"{path}: annotation {_ann_name(ann, i)} refers to unknown "
                             f"category id {ann['category_id']!r}")
        bbox = ann.get("bbox")
        if bbox is not None and (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                                 or not all(_is_number(v) for v in bbox)):
            raise DataFileError(f"{path}: annotation {_ann_name(ann, i)} has a malformed "
                             f"bbox {bbox!r} (expected four finite numbers [x, y, width, "
                             f"height])")
        if bbox is None and ann.get("area") is not None and not _is_number(ann["area"]):
            raise DataFileError(f"{path}: annotation {_ann_name(ann, i)} has area "
                             f"{ann['area']!r} (expected a finite number)")
    for img in dataset["images"]:
        for key in ("width", "height"):
            if img.get(key) is not None and not _is_number(img[key]):
                raise DataFileError(f"{path}: image id {img['id']!r} has {key} {img[key]!r} "
                                 f"(expected a finite number, or none)")


def _ann_name(ann: dict, index: int) -> str:
    if "id" in ann and not str(ann["id"]).startswith("#"):
        return f"id {ann['id']!r}"
    return f"#{index} (no id)"


def _example(img: dict, anns: Sequence[dict], label_of_cat: dict, path: str) -> Example:
    width, height = img.get("width"), img.get("height")
    image_area = float(width) * float(height) if width and height else None
    areas_of: dict[int, list[float | None]] = {}
    boxes: list[tuple[int, Box]] = []
    for ann in anns:
        label = label_of_cat[ann["category_id"]]
        bbox = ann.get("bbox")
        if bbox is not None:
            x, y, w, h = (float(v) for v in bbox)
            boxes.append((label, (x, y, w, h)))
            area = w * h
        else:
            area = float(ann["area"]) if "area" in ann else None
        areas_of.setdefault(label, []).append(area)
    label_ids = tuple(sorted(areas_of))
    label_areas = None
    if image_area and all(a is not None for v in areas_of.values() for a in v):
        label_areas = tuple(max(areas_of[k]) / image_area for k in label_ids)
    boxes.sort(key=lambda b: (b[0], b[1]))
    return Example(image_id=str(img["id"]), image=path, label_ids=label_ids,
                   label_areas=label_areas, boxes=tuple(boxes) if boxes else None)
