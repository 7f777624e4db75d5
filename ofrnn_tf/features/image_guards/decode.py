"""The entry points: `check_encoded_images`, the header checks alone, and
`decode_images`, what the served signatures run: the checks, then decoding that names
an image whose data cannot be decoded (see the package docstring,
`ofrnn_tf.features.image_guards`)."""

from __future__ import annotations

import tensorflow as tf

from ofrnn_tf.features.image_guards.layouts import (
    _F_HEIGHT, _F_WIDTH, _LAYOUT_FORMATS, _looks_complete, _read_headers)
from ofrnn_tf.features.image_guards.messages import _header_message, _str
from ofrnn_tf.features.images import MAX_JPEG_SEGMENTS, decode_and_resize

DEFAULT_MAX_JPEG_SEGMENTS = MAX_JPEG_SEGMENTS  # the Python header reader's cap too

NAME_DECODE_FAILURES = ("auto", "always", "never")


def _failing(message: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """``value`` behind an assertion that fails with ``message``."""
    with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
        return tf.identity(value)


def _header_pass(images, max_image_pixels, max_jpeg_segments):
    """``(images, limit, headers, passed, ok)``: ``passed`` says which images pass,
    ``ok`` that the whole batch does."""
    images = tf.convert_to_tensor(images, tf.string)
    if images.shape.rank is not None and images.shape.rank != 1:
        raise ValueError(f"images must be a vector of encoded images, got shape {images.shape}")
    limit = tf.cast(tf.convert_to_tensor(max_image_pixels), tf.int64)
    info = _read_headers(images, max_jpeg_segments)
    passed = tf.logical_and(info.valid, info.pixels <= limit)
    return images, limit, info, passed, _all_passed(passed)


def _all_passed(passed: tf.Tensor) -> tf.Tensor:
    return tf.logical_and(tf.size(passed) > 0, tf.reduce_all(passed))


@tf.autograph.experimental.do_not_convert
def check_encoded_images(images, max_image_pixels,
                         max_jpeg_segments: int = DEFAULT_MAX_JPEG_SEGMENTS) -> tf.Tensor:
    """Checks the headers of a batch of encoded images, without decoding them.

    Args:
        images: ``tf.string [N]`` of encoded image files.
        max_image_pixels: the largest width x height accepted, an integer tensor or
            variable (cast to int64).
        max_jpeg_segments: JPEG marker segments walked looking for the frame header
            before the file is refused.

    Returns:
        ``images`` itself, computed only once the checks passed: feed the returned
        tensor, not the argument, to the decoder, so that the checks run first.
        Running the graph raises ``InvalidArgumentError`` if the batch is empty or
        if an image is empty, not a JPEG/PNG/GIF/BMP, has a truncated or corrupt
        header, no pixels, or more than ``max_image_pixels`` pixels; the message
        names the first such image as ``images[i]``.
    """
    images, limit, _, passed, ok = _header_pass(images, max_image_pixels, max_jpeg_segments)
    # The message is built in the false branch only: passing costs one cond.
    checked = tf.cond(ok, lambda: tf.constant(True), lambda: _failing(
        _header_message(images, limit, passed, max_jpeg_segments), tf.constant(False)))
    with tf.control_dependencies([checked]):
        return tf.identity(images)


def _decode_naming_failures(images: tf.Tensor, image_size: int,
                            max_jpeg_segments: int) -> tf.Tensor:
    """`decode_and_resize` on every image through ``tf.data``; a failure names its index."""
    n = tf.size(images, out_type=tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(n), images))
    dataset = dataset.map(lambda index, encoded: (index, decode_and_resize(encoded, image_size)))
    # ignore_errors drops the images that failed to decode; the indices of the others
    # tell which. The empty batch appended turns "all failed" into one element too.
    nothing = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int64),
                                            tf.zeros([0, image_size, image_size, 3], tf.uint8)))
    decoded, pixels = (dataset.ignore_errors().batch(n).concatenate(nothing).take(1)
                       .get_single_element())
    decoded_count = tf.size(decoded, out_type=tf.int64)

    def message():
        # The survivors keep their order: decoded[k] == k up to the first failure.
        i = tf.reduce_sum(tf.cast(tf.equal(decoded, tf.range(decoded_count)), tf.int32))
        info = _read_headers(images[i:i + 1], max_jpeg_segments)
        layout, fields = info.layout[0], info.fields[0]
        return tf.strings.join([
            "images[", _str(i), "] could not be decoded: its ",
            tf.gather(_LAYOUT_FORMATS, layout), " header (", _str(fields[_F_WIDTH + layout]),
            "x", _str(fields[_F_HEIGHT + layout]),
            ") is sound but the data behind it is truncated or corrupt"])

    return tf.cond(tf.equal(decoded_count, n), lambda: pixels,
                   lambda: _failing(message(), pixels))


@tf.autograph.experimental.do_not_convert
def decode_images(images, image_size: int, max_image_pixels, *,
                  name_decode_failures: str = "auto",
                  max_jpeg_segments: int = DEFAULT_MAX_JPEG_SEGMENTS) -> tf.Tensor:
    """Checks, decodes and resizes a batch of encoded images, as feature extraction does.

    Args:
        images: ``tf.string [N]`` of JPEG, PNG, GIF (first frame) or BMP files.
        image_size: output side length S.
        max_image_pixels: the largest width x height accepted (see
            `check_encoded_images`).
        name_decode_failures: how an image whose header is sound but whose data
            cannot be decoded is reported (see the package docstring): ``"auto"``
            names ``images[i]`` in a batch of several, and a single image when it is
            cut off; ``"always"`` names it in every case, at a cost on every request;
            ``"never"`` leaves TensorFlow's own message.
        max_jpeg_segments: see `check_encoded_images`.

    Returns:
        ``uint8 [N, S, S, 3]``: for each image, the pixels `decode_and_resize` gives.
        Running the graph raises ``InvalidArgumentError`` naming ``images[i]`` for
        the refusals of `check_encoded_images`, and for images that cannot be
        decoded as ``name_decode_failures`` says.
    """
    if name_decode_failures not in NAME_DECODE_FAILURES:
        raise ValueError(f"name_decode_failures must be one of {NAME_DECODE_FAILURES}, "
                         f"got {name_decode_failures!r}")
    images, limit, info, passed, ok = _header_pass(images, max_image_pixels, max_jpeg_segments)

    def refuse():
        return _failing(_header_message(images, limit, passed, max_jpeg_segments),
                        tf.zeros([0, image_size, image_size, 3], tf.uint8))

    # Under "auto" this plain path only takes a single image that looks complete, which a
    # BMP never does: the BMP colour step (costly inside map_fn) is left out.
    colour_tables = name_decode_failures == "never"

    def decode_all():
        return tf.map_fn(lambda encoded: decode_and_resize(encoded, image_size, colour_tables),
                         images,
                         fn_output_signature=tf.TensorSpec([image_size, image_size, 3],
                                                           tf.uint8))

    def decode_naming_failures():
        return _decode_naming_failures(images, image_size, max_jpeg_segments)

    # One cond in front of the decoder. Its predicate is the header checks, and for
    # "auto" a single image that looks complete; the other branch takes the checks'
    # verdict (a GIF's frames are walked once a request).
    if name_decode_failures == "auto":
        # One image alone is the only one a failure can be about; in a batch of several,
        # the index is worth a tf.data pipeline (a few per cent of a batch's decoding).
        alone = tf.equal(tf.size(images), 1)
        plain = tf.logical_and(ok, tf.logical_and(
            alone, tf.reduce_all(_looks_complete(images, info))))
        pixels = tf.cond(plain,
                         decode_all, lambda: _check_then_decode_naming_failures(
                             images, limit, passed, image_size, max_jpeg_segments))
    else:
        pixels = tf.cond(ok, decode_all if name_decode_failures == "never"
                         else decode_naming_failures, refuse)
    pixels.set_shape([None, image_size, image_size, 3])
    return pixels


def _check_then_decode_naming_failures(images: tf.Tensor, limit: tf.Tensor, passed: tf.Tensor,
                                       image_size: int, max_jpeg_segments: int) -> tf.Tensor:
    """The other branch of "auto": refuse the headers (``passed``: the header pass's
    verdict on each image), or decode through ``tf.data``."""
    return tf.cond(_all_passed(passed),
                   lambda: _decode_naming_failures(images, image_size, max_jpeg_segments),
                   lambda: _failing(_header_message(images, limit, passed, max_jpeg_segments),
                                    tf.zeros([0, image_size, image_size, 3], tf.uint8)))
