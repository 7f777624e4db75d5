"""A run's example images: the first test images the exported model accepts, copied into
the run folder (the export warms up on them, the demos send them), indexed in
``examples.json`` with their true labels, and their attention pictures drawn."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil

from ofrnn_tf.data.example import Example
from ofrnn_tf.features.extract import decode_failure
from ofrnn_tf.features.image_guards import DEFAULT_MAX_IMAGE_PIXELS
from ofrnn_tf.inference.predictor import Predictor
from ofrnn_tf.jsonio import write_json
from ofrnn_tf.labels import LabelMap
from ofrnn_tf.run_dir import RunDir
from ofrnn_tf.status import log
from ofrnn_tf.visualization.attention_maps import CAPTIONS, fitting_stem, render_examples

NUM_EXAMPLE_IMAGES = 6
_NAMED_LEFT_OUT = 5  # test images left out of the examples that the log names


def _servable_examples(examples: list[Example], num: int) -> list[Example]:
    """The first `num` of `examples` stored as files that the served model accepts at its
    default pixel limit (`decode_failure`), as `ofrnn-predict` draws their pictures and
    the export warms up on them; the first ones left out are named with their reason."""
    chosen, left_out = [], 0
    for example in examples:
        if len(chosen) == num:
            break
        if not isinstance(example.image, str):
            continue
        reason = decode_failure(example.image, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS)
        if reason is None:
            chosen.append(example)
            continue
        left_out += 1
        if left_out <= _NAMED_LEFT_OUT:
            log(f"example images: {example.image} left out, the exported model would refuse "
                f"it: {reason}")
    if left_out > _NAMED_LEFT_OUT:
        log(f"example images: {left_out - _NAMED_LEFT_OUT} more test image(s) left out")
    return chosen


def _copy_name(index: int, image: str) -> str:
    """The run folder's name for its copy of test image `image`: prefixed with the index,
    as its attention picture is, so that test images of one name in different folders
    (class/000.jpg) stay apart; the stem shortened where the name, or its picture's
    (``.png``), would pass the file systems' 255 bytes."""
    stem, extension = os.path.splitext(f"{index:03d}_{os.path.basename(image)}")
    return fitting_stem(stem, extension, ".png") + extension


def _unlinked(folder: str) -> str:
    """`folder`, where a symbolic link there is removed first (not what it points to): the
    run removes and writes files in its folders."""
    if os.path.islink(folder):
        log(f"{folder} was a symbolic link to {os.readlink(folder)}: removed for a folder of "
            f"the run's own (what it pointed to is left as it was)")
        os.remove(folder)
    return folder


def save_examples(run_dir: RunDir, test_examples: list[Example], label_map: LabelMap,
                  num: int = NUM_EXAMPLE_IMAGES) -> list[str]:
    """Copies the first of `test_examples` the served model accepts into the run folder
    (export warm-up, demos), says in examples.json which test image each copy is, and
    draws their attention pictures; returns the copied paths."""
    chosen = _servable_examples(test_examples, num)
    os.makedirs(_unlinked(run_dir.examples_dir), exist_ok=True)
    targets = [os.path.join(run_dir.examples_dir, _copy_name(i, e.image))
               for i, e in enumerate(chosen)]
    for stale in set(run_dir.example_images()) - set(targets):  # an earlier call's copies
        if os.path.isfile(stale):
            os.remove(stale)
    copies, truth, index = [], {}, []
    for example, target in zip(chosen, targets):
        if os.path.islink(target):  # copied over, it would write where it points
            os.remove(target)
        shutil.copyfile(example.image, target)
        copies.append(target)
        truth[target] = label_map.names_of(example.label_ids)
        index.append({"file": os.path.relpath(target, run_dir.path),
                      "image_id": example.image_id, "labels": truth[target]})
    write_json(run_dir.examples_index_file, index)
    if os.path.isdir(_unlinked(run_dir.attention_dir)):  # an earlier call's pictures
        for stale in glob.glob(os.path.join(glob.escape(run_dir.attention_dir), "*.png")):
            if re.match(r"\d{3}_", os.path.basename(stale)):  # only the run's own
                os.remove(stale)
        with contextlib.suppress(FileNotFoundError):  # they described
            os.remove(os.path.join(run_dir.attention_dir, CAPTIONS))
    render_examples(Predictor.from_run(run_dir), copies, run_dir.attention_dir,
                    ground_truth=truth, max_images=num)
    return copies
