"""The exported SavedModel: image bytes (or feature maps) in, label sets out.

`ServingModule` holds the frozen backbone, the trained `OrderFreeRNN` and the
decoding constants (label names, τ, K, T_max), and has one `tf.function` per
serving input type (DESIGN §5):

- `serving_default`: `images` string [N] (JPEG/PNG/BMP/GIF bytes) → decode, resize,
  backbone, beam search.
- `predict_features`: `features` float32 [N, H, W, k] → beam search.

Both return `labels` int32 [N, T_max] (-1 padded), `label_names` string [N, T_max]
("" padded), `num_labels` int32 [N], `scores` float32 [N, C], `log_prob` float32
[N], `attention` float32 [N, T_max, H, W].
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence

import tensorflow as tf

from ofrnn_tf.decoding.beam_search import beam_search
from ofrnn_tf.export.warmup import write_warmup_requests
from ofrnn_tf.features.images import decode_and_resize
from ofrnn_tf.labels import LabelMap

SIGNATURES = ("serving_default", "predict_features")
OUTPUT_KEYS = ("labels", "label_names", "num_labels", "scores", "log_prob", "attention")


class ServingModule(tf.Module):
    """Backbone + decoder with the constants of decoding baked in.

    Args:
        model: a trained, built `OrderFreeRNN`.
        backbone: the frozen `Backbone` the features were extracted with.
        label_map: the class names, in label-id order.
        tau: the calibrated threshold τ (path probability; v_prob for `baseline`).
        beam_size: K.
        max_steps: T_max.
        min_labels: labels every image gets at least.
        jit_compile: XLA-compile the decoder.
    """

    def __init__(self, model, backbone, label_map: LabelMap, *, tau: float, beam_size: int,
                 max_steps: int, min_labels: int = 1, jit_compile: bool = False):
        super().__init__(name="ofrnn")
        self.model = model
        self.backbone = backbone
        self.feature_shape = tuple(backbone.feature_shape)
        self.image_size = backbone.image_size
        self.num_classes = label_map.num_classes
        # Saved as variables so a loaded SavedModel carries its own decoding settings.
        self.label_names = tf.Variable(list(label_map.names), trainable=False, name="label_names")
        self.tau = tf.Variable(float(tau), trainable=False, name="tau")
        self.beam_size = tf.Variable(int(beam_size), trainable=False, name="beam_size")
        self.max_steps = tf.Variable(int(max_steps), trainable=False, name="max_steps")
        self.min_labels = tf.Variable(int(min_labels), trainable=False, name="min_labels")
        self._settings = dict(beam_size=int(beam_size), max_steps=int(max_steps),
                              threshold=float(tau), min_labels=int(min_labels))
        self._jit_compile = jit_compile
        height, width, depth = self.feature_shape
        self.serving_default = tf.function(
            self._serve_images, input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        self.predict_features = tf.function(
            self._serve_features,
            input_signature=[tf.TensorSpec([None, height, width, depth], tf.float32, name="features")])
        self._decode = tf.function(self._decode_features, jit_compile=jit_compile)

    def _decode_features(self, features):
        height, width, depth = self.feature_shape
        flat = tf.reshape(features, [-1, height * width, depth])
        return beam_search(self.model, flat, **self._settings)

    def _outputs(self, features):
        out = self._decode(features)
        height, width, _ = self.feature_shape
        labels = out["labels"]
        names = tf.where(labels >= 0, tf.gather(self.label_names, tf.maximum(labels, 0)), "")
        attention = tf.reshape(out["attention"],
                               [-1, self._settings["max_steps"], height, width])
        return {"labels": labels, "label_names": names, "num_labels": out["num_labels"],
                "scores": out["scores"], "log_prob": out["log_prob"], "attention": attention}

    def _serve_features(self, features):
        return self._outputs(features)

    def _serve_images(self, images):
        pixels = tf.map_fn(
            lambda encoded: decode_and_resize(encoded, self.image_size), images,
            fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.uint8))
        return self._outputs(self.backbone(pixels))


def next_version(export_base: str) -> int:
    """One more than the largest integer version folder (TF Serving layout), else 1."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(d) for d in os.listdir(export_base) if re.fullmatch(r"\d+", d)]
    return max(versions, default=0) + 1


def save_serving_module(module: ServingModule, export_base: str, version: Optional[int] = None,
                        warmup_images: Sequence[bytes] = (), model_name: str = "ofrnn") -> str:
    """Writes `export_base/<version>/` atomically (a temp folder renamed at the end)."""
    version = next_version(export_base) if version is None else int(version)
    final = os.path.join(export_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; pick another --version")
    tmp = os.path.join(export_base, f".tmp-{version}")
    tf.io.gfile.makedirs(export_base)
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures={
        "serving_default": module.serving_default.get_concrete_function(),
        "predict_features": module.predict_features.get_concrete_function(),
    })
    LabelMap([n.decode() for n in module.label_names.numpy()]).save(
        os.path.join(tmp, "assets.extra"))
    if warmup_images:
        write_warmup_requests(tmp, list(warmup_images), model_name=model_name,
                              batch_sizes=(1, 8))
    os.replace(tmp, final)
    return final


def export_run(workdir: str, export_base: str, *, version: Optional[int] = None,
               warmup_images: Sequence[bytes] = (), jit_compile: bool = False,
               model_name: str = "ofrnn") -> str:
    """Exports a finished run: best weights, its backbone, the calibrated τ."""
    from ofrnn_tf.evaluation.predictor import load_run

    run = load_run(workdir)
    module = ServingModule(**run, jit_compile=jit_compile)
    if not warmup_images:
        warmup_images = [_gray_jpeg(module.image_size)]
    return save_serving_module(module, export_base, version, warmup_images, model_name)


def _gray_jpeg(size: int) -> bytes:
    return tf.io.encode_jpeg(tf.fill([size, size, 3], tf.constant(128, tf.uint8))).numpy()
