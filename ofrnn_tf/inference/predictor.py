"""In-process prediction from a finished run: image files or bytes → label sets.

`Predictor` holds the run's frozen backbone, its best weights and the decoding
settings calibrated after training (τ, K, `min_labels` from `calibration.json`).
One `tf.function` runs backbone + beam search (DESIGN §2) on a batch of decoded
images; decoding of the files happens image by image first, so a corrupt or
unreadable file costs only its own entry (an ``error`` field), never its batch.

Each result also carries the probability of every chosen label at the step it
was chosen (`sigmoid(p_t[l_t])`, Eq. 11's factors), obtained by replaying the
decoder along the best path: beam search itself returns the path total only.

Example:
    >>> predictor = Predictor.from_workdir("runs/order_free")
    >>> predictor.predict_files(["a.jpg"])[0]["labels"]
    ['Bag', 'Sneaker']
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from ofrnn_tf.decoding.beam_search import make_decoder
from ofrnn_tf.features.images import clean_tf_error, decode_and_resize
from ofrnn_tf.labels import LABEL_MAP_FILENAME, LabelMap

DEFAULT_BATCH_SIZE = 32


def path_step_probabilities(model, features: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Probability of each label of a given path at the step it was chosen.

    Replays the decoder (`start` / `step` / `step_log_probs` / `advance`) feeding
    `labels` in order, so `sum_t log(result[:, t])` is the path log-probability
    that beam search reports for that path (Eq. 11).

    Args:
        model: a built `OrderFreeRNN`.
        features: `[B, m, k]` feature maps.
        labels: int32 `[B, T]` label ids in decoding order, -1 padded.

    Returns:
        float32 `[B, T]`, 0 at the padding. For the `baseline` mode (no decoder) it
        is `v_prob` of each label.
    """
    labels = tf.convert_to_tensor(labels, tf.int32)
    valid = labels >= 0
    safe = tf.maximum(labels, 0)
    if not model.uses_decoder:
        v_prob = tf.sigmoid(tf.cast(model(features, training=False), tf.float32))
        return tf.where(valid, tf.gather(v_prob, safe, batch_dims=1), 0.0)
    context, state = model.start(features, training=False)
    probabilities = []
    for t in range(labels.shape[1]):
        logits, _, h, c = model.step(context, state, training=False)
        step_log_prob = model.step_log_probs(tf.cast(logits, tf.float32), state)
        chosen = tf.gather(step_log_prob, safe[:, t], batch_dims=1)
        probabilities.append(tf.where(valid[:, t], tf.exp(chosen), 0.0))
        state = model.advance(state, h, c, logits, safe[:, t])
    if not probabilities:
        return tf.zeros(tf.shape(labels), tf.float32)
    return tf.stack(probabilities, axis=1)


def _read_json(path: str) -> dict:
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None


def load_run(workdir: str, beam_size: Optional[int] = None, tau: Optional[float] = None, *,
             min_labels: Optional[int] = None, backbone=None) -> dict:
    """What a finished run decodes with: the keyword arguments of `Predictor` (and of
    the export's `ServingModule`) — `model` (best weights), `backbone`, `label_map`,
    `tau`, `beam_size`, `max_steps`, `min_labels`.

    τ, K and `min_labels` come from the run's `calibration.json` (written by
    train.py) unless given. `backbone` may pass an already built backbone of the run
    (it must be the run's backbone); by default the run's `config.backbone` /
    `config.feature_layer` is built, at the image size its features were extracted at
    when the feature cache is present. A backbone whose maps differ from the cached
    features, or a label map that differs from the run's, is refused.
    """
    from ofrnn_tf.evaluation.evaluate import CALIBRATION_FILENAME
    from ofrnn_tf.features.backbones import get_backbone
    from ofrnn_tf.training.run_config import RUN_CONFIG_FILENAME, RunConfig
    from ofrnn_tf.training.trainer import load_best_model

    if not os.path.exists(os.path.join(workdir, RUN_CONFIG_FILENAME)):
        raise FileNotFoundError(f"{workdir} is not a run directory ({RUN_CONFIG_FILENAME} "
                                f"missing): pass the --workdir of a train.py run")
    config = RunConfig.load(workdir)
    calibration_path = os.path.join(workdir, CALIBRATION_FILENAME)
    calibration = _read_json(calibration_path) if os.path.exists(calibration_path) else None
    if tau is None:
        if calibration is None:
            raise FileNotFoundError(
                f"{calibration_path} is missing: run train.py (it calibrates τ on "
                f"validation) first, or pass tau explicitly")
        if "tau" not in calibration:
            raise FileNotFoundError(f"{calibration_path} has no 'tau': rerun train.py "
                                    f"--mode=eval, or pass tau explicitly")
        tau = float(calibration["tau"])
    calibration = calibration or {}
    if beam_size is None:
        beam_size = int(calibration.get("beam_size", config.beam_size))
    if min_labels is None:
        min_labels = int(calibration.get("min_labels", config.min_labels))

    meta = _feature_meta(config.features_dir)
    if backbone is None:
        backbone = get_backbone(config.backbone, config.feature_layer or None,
                                image_size=meta.get("image_size"))
    elif backbone.name != config.backbone:
        raise ValueError(f"the run {workdir} was trained on {config.backbone} features; "
                         f"got a {backbone.name} backbone")
    if "feature_shape" in meta and list(backbone.feature_shape) != [
            int(d) for d in meta["feature_shape"]]:
        raise ValueError(f"backbone {backbone!r} gives {backbone.feature_shape} feature maps but "
                         f"the run was trained on {meta['feature_shape']} "
                         f"({config.features_dir})")
    if meta.get("feature_layer") and meta["feature_layer"] != backbone.feature_layer:
        raise ValueError(f"backbone {backbone!r} stops at layer {backbone.feature_layer!r} but "
                         f"the run's features come from {meta['feature_layer']!r} "
                         f"({config.features_dir})")
    height, width, depth = backbone.feature_shape
    model, config = load_best_model(workdir, (height * width, depth))
    label_map = LabelMap(config.label_names)
    if os.path.exists(os.path.join(workdir, LABEL_MAP_FILENAME)):
        LabelMap.load(workdir).check_same(label_map)
    return dict(model=model, backbone=backbone, label_map=label_map, tau=tau,
                beam_size=beam_size, max_steps=config.max_steps, min_labels=min_labels)


class Predictor:
    """Backbone + `OrderFreeRNN` + beam search with fixed settings, in this process.

    Args:
        model: a trained, built `OrderFreeRNN` over `[m, k]` maps, m = H·W of the
            backbone.
        backbone: the frozen `Backbone` the run's features were extracted with.
        label_map: class names in label-id order.
        tau: threshold τ on the path probability (on `v_prob` for `baseline`).
        beam_size: K (1 = greedy).
        max_steps: T_max.
        min_labels: labels every image gets at least.
        batch_size: images per backbone + decoder call.
        jit_compile: XLA-compile backbone + decoder.

    Results (`predict_bytes`, `predict_files`) are dicts, one per input, in order:
        image: the path (or the given name).
        labels, label_ids: the predicted labels in decoding order.
        scores: per predicted label, its score (the largest step probability of that
            label along the best path; the ranking score mAP uses).
        step_probabilities: per predicted label, its probability at the step that
            chose it.
        log_prob: the path log-probability.
        attention: float32 `[n_labels, H, W]`, α_t of each step (when requested and
            the model attends; the `baseline` and `no_attention` variants do not).
        all_scores: `{class name: score}` for every class (when requested).
    or, for an input that cannot be read or decoded, `{"image", "error"}` with
    ``error = "<path>: <reason>"``.
    """

    def __init__(self, model, backbone, label_map: LabelMap, *, tau: float, beam_size: int,
                 max_steps: int, min_labels: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                 jit_compile: bool = False):
        if label_map.num_classes != model.num_classes:
            raise ValueError(f"label map has {label_map.num_classes} classes but the model "
                             f"{model.num_classes}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer ≥ 1; got {batch_size!r}")
        self.model = model
        self.backbone = backbone
        self.label_map = label_map
        self.tau = float(tau)
        self.beam_size = int(beam_size)
        self.max_steps = int(max_steps)
        self.min_labels = int(min_labels)
        self.batch_size = batch_size
        self.image_size = int(backbone.image_size)
        height, width, depth = backbone.feature_shape
        self.attention_shape = (int(height), int(width))
        self.has_attention = model.mode not in ("baseline", "no_attention")
        decoder = make_decoder(model, beam_size=self.beam_size, max_steps=self.max_steps,
                               threshold=self.tau, min_labels=self.min_labels,
                               feature_shape=(height * width, depth))
        size = self.image_size

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")],
                     jit_compile=jit_compile)
        def run(pixels):
            features = tf.reshape(backbone(pixels), [-1, height * width, depth])
            out = dict(decoder(features))
            out["step_probabilities"] = path_step_probabilities(model, features, out["labels"])
            return out

        self._run = run

    # -- construction from a run -------------------------------------------------------
    @classmethod
    def from_workdir(cls, workdir: str, beam_size: Optional[int] = None,
                     tau: Optional[float] = None, *, min_labels: Optional[int] = None,
                     batch_size: int = DEFAULT_BATCH_SIZE, backbone=None,
                     jit_compile: bool = False) -> "Predictor":
        """A predictor for the best weights of the run in `workdir` (see `load_run`)."""
        return cls(**load_run(workdir, beam_size, tau, min_labels=min_labels, backbone=backbone),
                   batch_size=batch_size, jit_compile=jit_compile)

    # -- prediction ---------------------------------------------------------------------
    def decode_image(self, data: bytes) -> np.ndarray:
        """Encoded bytes → uint8 `[S, S, 3]` as the model sees them (raises on bad bytes)."""
        return decode_and_resize(tf.constant(data), self.image_size).numpy()

    def predict_pixels(self, pixels) -> dict[str, np.ndarray]:
        """Raw batch outputs for uint8 `[N, S, S, 3]` images (see `beam_search`, plus
        `step_probabilities [N, T]`)."""
        pixels = tf.convert_to_tensor(pixels)
        if pixels.dtype != tf.uint8 or pixels.shape.rank != 4 or tuple(pixels.shape[1:]) != (
                self.image_size, self.image_size, 3):
            raise ValueError(f"pixels must be uint8 [N, {self.image_size}, {self.image_size}, 3]; "
                             f"got {pixels.dtype.name} {pixels.shape}")
        return {key: value.numpy() for key, value in self._run(pixels).items()}

    def predict_bytes(self, images: Sequence[bytes], names: Optional[Sequence[str]] = None, *,
                      attention: bool = True, all_scores: bool = True,
                      progress: bool = False) -> list[dict]:
        """Predicts encoded images (JPEG/PNG/BMP/GIF bytes); `names` label the results."""
        for i, data in enumerate(images):
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"images[{i}] must be bytes; got {type(data).__name__}")
        if names is None:
            names = [f"<image {i}>" for i in range(len(images))]
        elif len(names) != len(images):
            raise ValueError(f"{len(names)} names for {len(images)} images")
        return self._predict(list(names), lambda i: bytes(images[i]), attention=attention,
                             all_scores=all_scores, progress=progress)

    def predict_files(self, paths: Sequence[str], *, attention: bool = True,
                      all_scores: bool = True, progress: bool = False) -> list[dict]:
        """Predicts image files; a file that cannot be read or decoded gets an error entry."""
        paths = [os.fspath(p) for p in paths]

        def load(i: int) -> bytes:
            with open(paths[i], "rb") as f:
                return f.read()

        return self._predict(paths, load, attention=attention, all_scores=all_scores,
                             progress=progress)

    def _predict(self, names: list[str], load: Callable[[int], bytes], *, attention: bool,
                 all_scores: bool, progress: bool) -> list[dict]:
        results: list[dict] = []
        starts = range(0, len(names), self.batch_size)
        for start in tqdm(starts, desc="predicting", unit="batch", file=sys.stderr,
                          disable=not progress):
            indices = range(start, min(start + self.batch_size, len(names)))
            batch: list[Optional[dict]] = []
            pixels, slots = [], []
            for i in indices:
                try:
                    pixels.append(self.decode_image(load(i)))
                except OSError as error:
                    batch.append(_error(names[i], error.strerror or str(error)))
                except (tf.errors.OpError, ValueError) as error:
                    batch.append(_error(names[i], clean_tf_error(error)))
                else:
                    slots.append(len(batch))
                    batch.append(None)
            if pixels:
                outputs = self.predict_pixels(np.stack(pixels))
                for row, slot in enumerate(slots):
                    batch[slot] = self._result(names[indices[slot]], outputs, row,
                                               attention=attention, all_scores=all_scores)
            results.extend(batch)
        return results

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
        if attention and self.has_attention:
            steps = outputs["attention"][row][:count]
            result["attention"] = steps.reshape((len(steps),) + self.attention_shape)
        if all_scores:
            result["all_scores"] = {n: float(s) for n, s in zip(self.label_map.names, scores)}
        return result


def _error(name: str, reason: str) -> dict:
    return {"image": name, "error": f"{name}: {reason}"}


def _feature_meta(features_dir: str) -> dict:
    """The feature cache's meta.json, or {} when the cache is not on this machine."""
    from ofrnn_tf.features import tfrecords

    if not features_dir:
        return {}
    try:
        return tfrecords.read_meta(features_dir)
    except FileNotFoundError:
        return {}
