"""Image decoding shared by feature extraction and the serving signature.

Resize policy: the whole image is stretched to ``S x S`` with bilinear
interpolation and antialiasing (no crop, aspect ratio not kept), so that objects
near the borders — which a multi-label image may well have — stay in view. An image
already ``S x S`` is passed through untouched (the resize would be the identity; it
costs four times the JPEG decode of a 224x224 image). The
same function runs inside the ``tf.data`` extraction pipeline and inside the
exported SavedModel, so cached features and served predictions see identical pixels.
"""

from __future__ import annotations

import re

import tensorflow as tf


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one encoded image and resizes it to ``[image_size, image_size, 3]``.

    Args:
        image_bytes: scalar ``tf.string`` holding a JPEG, PNG, BMP or GIF (first
            frame) file.
        image_size: output side length S.

    Returns:
        ``uint8 [S, S, 3]`` RGB. Grayscale and RGBA inputs are converted to RGB.
        Raises ``InvalidArgumentError`` for bytes that are not a decodable image.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False,
                               dtype=tf.uint8)
    image.set_shape([None, None, 3])

    def resize() -> tf.Tensor:
        resized = tf.image.resize(image, [image_size, image_size],
                                  method=tf.image.ResizeMethod.BILINEAR, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
    out = tf.cond(same, lambda: image, resize)
    out.set_shape([image_size, image_size, 3])
    return out


_TF_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")
_TF_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\].*$", re.S)


def clean_tf_error(error: BaseException) -> str:
    """The human part of a TensorFlow op error message (no node names, no op tag)."""
    message = getattr(error, "message", None) or str(error)
    message = _TF_FUNCTION_NODE.sub("", message)
    message = _TF_OP_SUFFIX.sub("", message)
    return message.strip() or type(error).__name__
