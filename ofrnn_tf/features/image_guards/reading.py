"""Bytes of a batch of encoded images read in the graph, for the header pass
(`ofrnn_tf.features.image_guards.layouts`) and its walks over JPEG segments
(`jpeg_walk`) and GIF blocks (`gif_walk`), which both read, where they stop, the
10 bytes of a JPEG frame header or a GIF image descriptor."""

from __future__ import annotations

import tensorflow as tf

# Where a walk stops it reads _FRAME_BYTES bytes: a JPEG frame header, or as many of a
# GIF image descriptor (2C, left, top, width, height, flags). _GAVE_UP marks a walk
# that ran out of steps (JPEG segments, GIF blocks).
_FRAME_BYTES = 10  # FF Cn, length (2), precision, height (2), width (2), components
_GAVE_UP = 256  # a first frame "byte" no byte has: too many segments


def _read(images: tf.Tensor, pos: tf.Tensor, count: int, dtype=tf.uint8,
          length: tf.Tensor | None = None) -> tf.Tensor:
    """``images[i][pos[i]:pos[i] + count]`` as big-endian ``dtype``, zero-padded past the end.

    ``pos[i]`` must not exceed the length of ``images[i]``; ``length``, if given,
    reads fewer bytes (the rest is padding).
    """
    length = tf.fill(tf.shape(pos), count) if length is None else length
    chunk = tf.strings.substr(images, pos, length)
    return tf.io.decode_raw(chunk, dtype, little_endian=False, fixed_length=count)
