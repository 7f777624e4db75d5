"""The exported SavedModel: a run's `InferenceModule` in TensorFlow Serving's layout.

``<export_base>/<version>/`` holds the signatures (docs/serving.md has the contract):

- ``serving_default``: ``images`` string [N] (JPEG/PNG/BMP/GIF bytes) → decode,
  resize, backbone, beam search;
- ``predict_with_threshold``: ``images`` and ``threshold`` (float32 [N], one τ in
  [0, 1] per image) → the same, decoding with those τ instead of the calibrated one;
- ``predict_features``: ``features`` float32 [N, H, W, k] → beam search.

All return ``labels`` int32 [N, L] (-1 padded; L = T_max, or C for M_map alone, the
``baseline`` variant), ``label_names`` string [N, L] ("" padded), ``num_labels`` int32
[N], ``scores`` float32 [N, C], ``log_prob`` float32 [N], ``attention`` float32
[N, T_max, H, W]. Label names, τ, the score mix and the image-size limit are variables
inside the SavedModel that its graph reads; no side file is needed at serving time. ``assets.extra/tf_serving_warmup_requests``
holds requests TF Serving replays at load time, ``assets.extra/label_map.json``
the class names for people reading the folder, and ``assets.extra/software.json`` the
versions of ofrnn_tf, TensorFlow, Keras and Python that wrote it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import tensorflow as tf

from ofrnn_tf.export.warmup import (
    DEFAULT_NUM_WARMUP_IMAGES, WARMUP_BATCH_SIZES, write_warmup_requests)
from ofrnn_tf.features.images import decode_checked
from ofrnn_tf.inference.module import InferenceModule
from ofrnn_tf.jsonio import write_json
from ofrnn_tf.processes import (
    not_removed, owner_tag, remove_dead_leftovers, remove_entry, removal_blocked)
from ofrnn_tf.run_dir import RunDir
from ofrnn_tf.serving.server_process import (
    DEFAULT_MODEL_NAME, MAX_VERSION, refuse_taken_version, refuse_version_folder,
    servable_version, version_folders)
from ofrnn_tf.software import software_versions
from ofrnn_tf.tf_errors import op_error_text


def next_version(export_base: str) -> int:
    """One more than the largest version (TF Serving layout), else 1; FileExistsError
    where that is `MAX_VERSION` already. A name of digits beyond it is no version (TF
    Serving never loads it): one such would otherwise number every later export beyond
    what a server reads."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(d) for d in os.listdir(export_base)
                if re.fullmatch(r"[0-9]+", d) and int(d) <= MAX_VERSION]
    latest = max(versions, default=0)
    if latest == MAX_VERSION:
        raise FileExistsError(f"{os.path.join(export_base, str(latest))} exists, the highest "
                              f"version TF Serving reads: none is left above it; pick a "
                              f"version below it")
    return latest + 1


def remove_old_versions(export_base: str, keep: int, written: Optional[str] = None,
                        on_left: Callable[[str, str], None] = lambda path, reason: None
                        ) -> list[str]:
    """Removes the version folders of `export_base` (`version_folders`) but the `keep`
    highest (TF Serving serves the highest by default) and `written` (the one just
    exported, whatever its number); returns the folders removed, highest first. Each is
    renamed to a temporary name first, so that a server polling the base path never
    reads a version half removed. A version another export removes meanwhile (two
    exports pruning the same base path) is passed over: it is gone, as asked.

    A version this user cannot remove (another user's, in a base path shared by several)
    is left whole, `on_left(path, reason)` hearing of it: `reason` says why (`not_removed`)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    spare = os.path.realpath(written) if written is not None else None
    removed = []
    for _, name in version_folders(export_base)[::-1][keep:]:
        path = os.path.join(export_base, name)
        if os.path.realpath(path) == spare:
            continue
        if os.path.islink(path):  # a link to a version kept elsewhere: only the link goes
            stopped = remove_entry(path)
        else:
            stopped = removal_blocked(path)
            if stopped is None:
                stopped = _remove_version(path, export_base, on_left)
        if stopped is not None:
            if os.path.lexists(path):  # else another process removed it first
                on_left(path, not_removed(path, stopped))
            continue
        removed.append(path)
    return removed


def _remove_version(path: str, export_base: str, on_left: Callable[[str, str], None]
                    ) -> Optional[OSError]:
    """Removes the version folder `path` by way of a temporary name; returns the error
    that stopped its rename (it is left whole), None once it is gone or where a removal
    stopped part way: `on_left` hears of the temporary folder left then."""
    doomed = os.path.join(export_base, f".tmp-{owner_tag()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, doomed)
    except OSError as error:
        return error
    stopped = remove_entry(doomed)
    if stopped is not None:
        on_left(doomed, f"(version {os.path.basename(path)}, removed part way) "
                        f"{not_removed(doomed, stopped)}")
    return None


def signatures(module: InferenceModule) -> dict:
    """The SavedModel's signatures, by name: `module`'s functions with input signatures.

    Given as `tf.function`s rather than concrete functions: `tf.saved_model.save`
    traces functions again inside its save context, so concrete functions traced
    before it would be traced twice."""
    return {"serving_default": module.serve_images,
            "predict_with_threshold": module.serve_images_with_threshold,
            "predict_features": module.serve_features}


def save_inference_module(module: InferenceModule, export_base: str,
                          version: Optional[int] = None, warmup_images: Sequence[bytes] = (),
                          model_name: str = DEFAULT_MODEL_NAME) -> str:
    """Writes `export_base/<version>/` atomically: a temporary folder of this export's
    own, renamed at the end. Should another export take the version meanwhile, an
    automatic version moves on to the next free one and a given one is refused.

    Every warm-up image is first checked as `module.serve_images` checks it
    (`check_warmup_images`): an image the export would refuse raises `WarmupImageError`
    naming it, before anything is written, rather than give a version whose warm-up
    replay fails when TF Serving loads it.
    """
    automatic = version is None
    version = next_version(export_base) if automatic else servable_version(version)
    refuse_taken_version(os.path.join(export_base, str(version)))
    warmup_images = list(warmup_images) or [_gray_jpeg(module)]
    warmup_pixels = check_warmup_images(module, warmup_images)
    tf.io.gfile.makedirs(export_base)
    remove_dead_leftovers(export_base, _EXPORT_TMP)
    # TF Serving never loads a folder whose name is not an integer.
    tmp = os.path.join(export_base, f".tmp-{owner_tag()}-{uuid.uuid4().hex[:8]}")
    try:
        tf.saved_model.save(module, tmp, signatures=signatures(module))
        module.label_map.save(os.path.join(tmp, "assets.extra"))
        write_json(os.path.join(tmp, "assets.extra", SOFTWARE_FILENAME), software_versions())
        # The maps of the images the requests hold alone: all of them at once would take
        # a backbone's activations for each (8.5 GB for 160 photos).
        sent = warmup_pixels[:max(WARMUP_BATCH_SIZES)]
        write_warmup_requests(tmp, warmup_images, model_name=model_name,
                              batch_sizes=WARMUP_BATCH_SIZES,
                              features=module.maps_of(sent).numpy())
        while True:
            final = os.path.join(export_base, str(version))
            try:
                os.rename(tmp, final)  # fails on an existing version, which stays as it is
                return final
            except OSError:
                if not (automatic and os.path.isdir(final)):
                    refuse_taken_version(final)
                    raise
                version = max(version + 1, next_version(export_base))
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# An export's temporary folder: ``.tmp-<owner tag>-<random>``, or ``.tmp-<version>`` as
# written before names carried their owner.
SOFTWARE_FILENAME = "software.json"  # in assets.extra/: what wrote the export
_EXPORT_TMP = re.compile(r"\.tmp-(?:(?P<owner>.+)-[0-9a-f]{8}|\d+)")


class WarmupImageError(ValueError):
    """A warm-up image the export refuses; `index` is its place in the list given."""

    def __init__(self, index: int, reason: str):
        super().__init__(f"warm-up image {index}: the export refuses it: {reason}")
        self.index, self.reason = index, reason


def check_warmup_images(module: InferenceModule, images: Sequence[bytes]) -> tf.Tensor:
    """The pixels `module.serve_images` decodes `images` to, uint8 ``[N, S, S, 3]``;
    WarmupImageError for the first one it would refuse.

    Decoded by `decode_checked`, the Python mirror of the signature's checks and
    decoding that ``ofrnn-predict`` and the local server decode with, in its words: the
    graph's own checks would be traced here once more than `tf.saved_model.save` traces
    them, about a sixth of an export's time."""
    limit = int(module.max_image_pixels.numpy())
    pixels = []
    for i, image in enumerate(images):
        try:
            pixels.append(decode_checked(image, module.image_size, limit))
        except (ValueError, tf.errors.OpError) as e:
            raise WarmupImageError(i, op_error_text(e)) from None
    if not pixels:
        return tf.zeros([0, module.image_size, module.image_size, 3], tf.uint8)
    return tf.stack(pixels)


def usable_example_images(module: InferenceModule, paths: Iterable[str], num: int,
                          on_refused: Callable[[str, str], None] = lambda path, reason: None
                          ) -> list[str]:
    """The first `num` of `paths` (a run's example images) that the export accepts as
    warm-up images (`check_warmup_images`); `on_refused(path, reason)` hears of each one
    left out. `paths` is read no further than that."""
    usable: list[str] = []
    if num < 1:
        return usable
    for path in paths:
        try:
            check_warmup_images(module, [Path(path).read_bytes()])
        except WarmupImageError as e:
            on_refused(path, e.reason)
        else:
            usable.append(path)
            if len(usable) == num:
                break
    return usable


def export_run(run_dir, export_base: str, *, version: Optional[int] = None,
               warmup_images: Optional[Sequence[bytes]] = None,
               num_warmup_images: int = DEFAULT_NUM_WARMUP_IMAGES,
               on_refused: Callable[[str, str], None] = lambda path, reason: None,
               model_name: str = DEFAULT_MODEL_NAME,
               on_module: Callable[[InferenceModule], None] = lambda module: None,
               **module_kwargs) -> str:
    """Exports a finished run, as `ofrnn-export` does (keyword arguments:
    `InferenceModule.from_run`); returns the version folder written. `on_module` hears of
    the module once it is built (its τ, K: what the version will decide with).

    The warm-up requests hold `warmup_images` (one the export refuses raises
    `WarmupImageError`), by default the first `num_warmup_images` of the run's example
    images that the export accepts, `on_refused(path, reason)` hearing of each one left
    out (a gray square where none is left). A `version` that exists already, or none
    left above the highest (`next_version`), is refused before the model is built, as is
    an `export_base` that is itself a version folder (ValueError).
    """
    refuse_version_folder(export_base)
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if version is None:
        next_version(export_base)
    else:
        refuse_taken_version(os.path.join(export_base, str(servable_version(version))))
    module = InferenceModule.from_run(run_dir, **module_kwargs)
    on_module(module)
    if warmup_images is None:
        def inside(paths):  # looked at in order, until enough are usable
            for path in paths:
                if run_dir.holds(path):
                    yield path
                else:  # an export is shipped: never with a file a link from elsewhere names
                    on_refused(path, "a link to a file outside the run folder, which the "
                                     "export does not read")

        warmup_images = [Path(path).read_bytes() for path in usable_example_images(
            module, inside(run_dir.example_images()), num_warmup_images, on_refused)]
    return save_inference_module(module, export_base, version, warmup_images, model_name)


def _gray_jpeg(module: InferenceModule) -> bytes:
    """A gray square of the backbone's side, or smaller if the image-size limit says so."""
    size = min(module.image_size, math.isqrt(int(module.max_image_pixels.numpy())))
    return tf.io.encode_jpeg(tf.fill([size, size, 3], tf.constant(128, tf.uint8))).numpy()
