"""In-process prediction from a finished run: image files or bytes → label sets.

`Predictor` runs a run's `InferenceModule` (backbone + best weights + the decoding
settings calibrated after training) on batches of images. Files are decoded one by
one first, so a corrupt or unreadable file costs only its own entry (an ``error``
field), never its batch; an image whose header declares more than the module's
``max_image_pixels`` is refused before it is decoded (an array, before it is encoded).

Each result also carries the probability of every chosen label at the step it was
chosen (`sigmoid(p_t[l_t])`, Eq. 11's factors).

Usage::

    predictor = Predictor.from_run("runs/order_free")
    predictor.predict_files(["a.jpg"])[0]["labels"]  # e.g. ['Bag', 'Sneaker']
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from ofrnn_tf.features.images import decode_checked
from ofrnn_tf.features.pixel_limit import PIXEL_LIMIT_WORDS
from ofrnn_tf.inference.module import InferenceModule
from ofrnn_tf.input_files import read_input_file
from ofrnn_tf.status import progress_bar
from ofrnn_tf.tf_errors import op_error_text

DEFAULT_BATCH_SIZE = 32


class Predictor:
    """An `InferenceModule` applied to image files or bytes, batch by batch.

    Args:
        module: the run's `InferenceModule` (see `InferenceModule.from_run`).
        batch_size: images per backbone + decoder call.

    Results (`predict_bytes`, `predict_files`, `iter_files`) are dicts, one per input, in
    order:
        image: the path (or the given name).
        labels, label_ids: the predicted labels in decoding order.
        scores: per predicted label, its score (the ranking score mAP uses).
        step_probabilities: per predicted label, its probability at the step that
            chose it.
        log_prob: the path log-probability.
        attention: float32 `[n_labels, H, W]`, α_t of each step (when requested and
            the model attends; the `baseline` and `no_attention` variants do not): an
            array, which ``json.dumps`` does not take (``attention=False`` leaves it out).
        all_scores: `{class name: score}` for every class (when requested).
        image_bytes: the bytes the image was decoded from (`iter_files` and
            `predict_files` with ``keep_bytes=True``): the image drawn or kept without
            reading its input again, which a pipe would not give twice.
    or, for an input that cannot be read or decoded, `{"image", "error"}` with
    ``error = "<path>: <reason>"``.
    """

    def __init__(self, module: InferenceModule, batch_size: int = DEFAULT_BATCH_SIZE):
        if (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                or batch_size < 1):
            raise ValueError(f"batch_size must be an integer ≥ 1; got {batch_size!r}")
        self.module = module
        self.batch_size = int(batch_size)
        self.label_map = module.label_map
        self.image_size = module.image_size
        height, width, _ = module.feature_shape
        self.attention_shape = (height, width)

    @classmethod
    def from_run(cls, run_dir, *, batch_size: int = DEFAULT_BATCH_SIZE, **kwargs) -> "Predictor":
        """A predictor for a finished run (keyword arguments: `InferenceModule.from_run`)."""
        return cls(InferenceModule.from_run(run_dir, **kwargs), batch_size=batch_size)

    # -- prediction ---------------------------------------------------------------------
    def decode_image(self, data: bytes) -> np.ndarray:
        """Encoded bytes → uint8 `[S, S, 3]` as the model sees them (ValueError or a TF
        error naming the problem for bytes that are not a decodable image, or too large)."""
        limit = int(self.module.max_image_pixels.numpy())
        return decode_checked(data, self.image_size, limit).numpy()

    def predict_pixels(self, pixels) -> dict[str, np.ndarray]:
        """Raw batch outputs for uint8 `[N, S, S, 3]` images: those of
        `InferenceModule.serve_images` (`labels`, `label_names`, `num_labels`, `scores`,
        `log_prob`, `attention [N, T, H, W]`) plus `step_probabilities [N, T]`. Images of
        another size or channel count: `predict_arrays`."""
        pixels = tf.convert_to_tensor(pixels)
        if pixels.dtype != tf.uint8 or pixels.shape.rank != 4 or tuple(pixels.shape[1:]) != (
                self.image_size, self.image_size, 3):
            raise ValueError(f"pixels must be uint8 [N, {self.image_size}, {self.image_size}, 3]; "
                             f"got {pixels.dtype.name} {pixels.shape}")
        return {key: value.numpy() for key, value in self.module.predict_pixels(pixels).items()}

    def predict_bytes(self, images: Sequence[bytes], names: Optional[Sequence[str]] = None, *,
                      attention: bool = True, all_scores: bool = True,
                      progress: bool = False) -> list[dict]:
        """Predicts encoded images (JPEG/PNG/BMP/GIF bytes); `names` label the results."""
        if isinstance(images, (bytes, bytearray)):
            raise TypeError("images must be a list of encoded images; got one bytes object "
                            "(pass [data] for a single image)")
        for i, data in enumerate(images):
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"images[{i}] must be bytes; got {type(data).__name__}")
        return list(self._predict(_names(names, len(images)), lambda i: bytes(images[i]),
                                  attention=attention, all_scores=all_scores, progress=progress))

    def predict_arrays(self, images: Sequence[np.ndarray], names: Optional[Sequence[str]] = None,
                       *, attention: bool = True, all_scores: bool = True,
                       progress: bool = False) -> list[dict]:
        """Predicts decoded images of any size: uint8 `[H, W]`, `[H, W, 1]` (gray),
        `[H, W, 3]` (RGB) or `[H, W, 4]` (RGBA, alpha dropped), or PIL images
        (`pil_pixels`: a palette, CMYK or 16-bit one in its colours, not its raw array).
        Each is stored as a PNG, which loses nothing, and read back as `predict_bytes`
        reads any file (keyword arguments: those of `predict_bytes`), so it is resized
        exactly as in training and serving. An array of more than the module's
        `max_image_pixels` pixels gets an error entry, as a file that declares as many
        does, without being encoded."""
        if isinstance(images, (np.ndarray, tf.Tensor)):
            if len(images.shape) != 4:  # one image would be read row by row
                raise TypeError(f"images must be a list of images or a [N, H, W, C] batch; "
                                f"got one array of shape {tuple(images.shape)} (pass [image] "
                                f"for a single image)")
            images = list(np.asarray(images))  # a batch of equal-sized images
        pil = sys.modules.get("PIL.Image")
        if pil is not None and isinstance(images, pil.Image):
            raise TypeError(f"images must be a list of images; got one PIL image of mode "
                            f"{images.mode} (pass [image] for a single image)")
        arrays = []
        for i, image in enumerate(images):
            given = pil_pixels(image, f"images[{i}]")
            array = given[..., np.newaxis] if given.ndim == 2 else given
            if (array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3, 4)
                    or 0 in array.shape):
                raise ValueError(f"images[{i}] must be uint8 [H, W], [H, W, 1], [H, W, 3] or "
                                 f"[H, W, 4] with H, W ≥ 1; got {given.dtype} {given.shape}")
            arrays.append(array)
        limit = int(self.module.max_image_pixels.numpy())

        def encoded(i: int) -> bytes:
            height, width = arrays[i].shape[:2]
            if height * width > limit:  # refused before the seconds a huge PNG takes
                raise ValueError(f"array of {height}x{width} (H x W) = {height * width} pixels "
                                 f"is {PIXEL_LIMIT_WORDS} {limit} pixels")
            return tf.io.encode_png(arrays[i]).numpy()

        return list(self._predict(_names(names, len(arrays)), encoded, attention=attention,
                                  all_scores=all_scores, progress=progress))

    def predict_files(self, paths: Sequence[str], *, attention: bool = True,
                      all_scores: bool = True, progress: bool = False,
                      keep_bytes: bool = False) -> list[dict]:
        """Predicts image files; a file that cannot be read or decoded gets an error entry,
        as does a device and a pipe nothing writes to (`read_input_file`). With
        `keep_bytes`, each predicted result holds the bytes read (``image_bytes``)."""
        return list(self.iter_files(paths, attention=attention, all_scores=all_scores,
                                    progress=progress, keep_bytes=keep_bytes))

    def iter_files(self, paths: Sequence[str], *, attention: bool = True,
                   all_scores: bool = True, progress: bool = False,
                   keep_bytes: bool = False) -> Iterator[dict]:
        """`predict_files`, each result given as soon as its batch is predicted: a long
        job's results can be written as they come, and kept when it is stopped."""
        if isinstance(paths, (str, bytes, os.PathLike)):
            raise TypeError(f"paths must be a list of image files; got the single path "
                            f"{os.fsdecode(paths)!r} (pass [path] for a single image)")
        paths = [os.fspath(p) for p in paths]
        return self._predict(paths, lambda i: read_input_file(paths[i]), attention=attention,
                             all_scores=all_scores, progress=progress, keep_bytes=keep_bytes)

    def _predict(self, names: list[str], load: Callable[[int], bytes], *, attention: bool,
                 all_scores: bool, progress: bool, keep_bytes: bool = False
                 ) -> Iterator[dict]:
        with progress_bar(total=len(names), desc="predicting", unit="img",
                          enabled=progress) as bar:
            for start in range(0, len(names), self.batch_size):
                indices = range(start, min(start + self.batch_size, len(names)))
                batch: list[Optional[dict]] = []
                pixels, slots, read = [], [], []
                for i in indices:
                    try:
                        data = load(i)
                        pixels.append(self.decode_image(data))
                    except OSError as error:
                        batch.append(_error(names[i], error.strerror or str(error)))
                    except (tf.errors.OpError, ValueError) as error:
                        batch.append(_error(names[i], op_error_text(error)))
                    else:
                        slots.append(len(batch))
                        batch.append(None)
                        read.append(data if keep_bytes else None)
                if pixels:
                    outputs = self.predict_pixels(np.stack(pixels))
                    for row, slot in enumerate(slots):
                        batch[slot] = self._result(names[indices[slot]], outputs, row,
                                                   attention=attention, all_scores=all_scores)
                        if keep_bytes:
                            batch[slot]["image_bytes"] = read[row]
                bar.update(len(batch))
                yield from batch

    def _result(self, name: str, outputs: dict, row: int, *, attention: bool,
                all_scores: bool) -> dict:
        count = int(outputs["num_labels"][row])
        ids = [int(c) for c in outputs["labels"][row][:count]]
        scores = outputs["scores"][row]
        log_prob = float(outputs["log_prob"][row])
        result = {
            "image": name,
            "labels": self.label_map.names_of(ids),
            "label_ids": ids,
            "scores": [float(scores[c]) for c in ids],
            "step_probabilities": [float(p) for p in outputs["step_probabilities"][row][:count]],
            "log_prob": log_prob if math.isfinite(log_prob) else None,
        }
        if attention and self.module.has_attention:
            steps = outputs["attention"][row][:count]
            result["attention"] = steps.reshape((len(steps),) + self.attention_shape)
        if all_scores:
            result["all_scores"] = {n: float(s) for n, s in zip(self.label_map.names, scores)}
        return result


# PIL modes whose array holds the image's pixels as `predict_arrays` reads them.
_PIL_ARRAY_MODES = ("L", "RGB", "RGBA")


def pil_pixels(image, name: str) -> np.ndarray:
    """`image` as an array (`np.asarray`), but a PIL image as its file would be read.

    The array of a PIL image is its pixels only in modes L, RGB and RGBA: a palette
    image's (a GIF, many PNGs: mode P) holds its palette indices, which would be read as
    gray levels, and a CMYK JPEG's four inks, which would be read as RGBA. Those and the
    other modes Pillow converts to RGB are converted (Pillow's colour conversion;
    transparency dropped, as a file's is), and 16-bit gray (a scan's, I;16) is shifted to
    8 bits as TensorFlow's PNG decoder does. Modes I and F, whose range is unknown, and
    those Pillow cannot convert are refused (ValueError, naming `name`)."""
    pil = sys.modules.get("PIL.Image")  # loaded already wherever a PIL image is passed
    if pil is None or not isinstance(image, pil.Image):
        return np.asarray(image)
    if image.mode in _PIL_ARRAY_MODES:
        return np.asarray(image)
    if image.mode.startswith("I;16"):
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    remedy = ("convert it to 'L' or 'RGB' with the scaling it needs first, or pass its "
              "file to predict_files")
    if image.mode in ("I", "F"):
        raise ValueError(f"{name} is a PIL image of mode {image.mode} (32-bit values of no "
                         f"set range): {remedy}")
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:  # a mode Pillow does not convert (La, ...)
        raise ValueError(f"{name} is a PIL image of mode {image.mode}, which Pillow does not "
                         f"convert to RGB ({error}): {remedy}") from None


def _names(names: Optional[Sequence[str]], count: int) -> list[str]:
    """The names of `count` results: `names`, one per image, or ``<image i>``."""
    if names is None:
        return [f"<image {i}>" for i in range(count)]
    if isinstance(names, (str, bytes)):
        raise TypeError(f"names must be a list, one per image; got the single "
                        f"{type(names).__name__} {names!r} (pass [name] for one image)")
    if len(names) != count:
        raise ValueError(f"{len(names)} names for {count} images")
    return list(names)


def _error(name: str, reason: str) -> dict:
    return {"image": name, "error": f"{name}: {reason}"}

