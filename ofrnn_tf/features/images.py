"""Image decoding shared by feature extraction and the serving signature, and the check
that an image decodes as the served model decodes it. The reading of an image's header
before it is decoded, free of TensorFlow, is in `image_headers`; its names are also
importable from here.

Resize policy: the whole image is stretched to ``S x S`` with bilinear
interpolation and antialiasing (no crop, aspect ratio not kept), so that objects
near the borders — which a multi-label image may well have — stay in view. An image
already ``S x S`` is passed through untouched (the resize would be the identity; it
costs four times the JPEG decode of a 224x224 image). The
same function runs inside the ``tf.data`` extraction pipeline and inside the
exported SavedModel, so cached features and served predictions see identical pixels.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from ofrnn_tf.features.image_headers import (  # noqa: F401 - also importable from here
    ACCEPTED_MAGIC, BMP_BGRA_MASKS, BMP_BIT_DEPTHS, BMP_BITFIELDS, BMP_COMPRESSIONS,
    BMP_FIELDS_BYTES, BMP_MASKS_AT, BMP_MASKS_CUT, BMP_MASKS_PROBLEM, BMP_REMEDY,
    BMP_TRUNCATED, FORMAT_MAGIC, GIF_REMEDY, GIF_RUN, GIF_SPAN, IMAGE_FORMATS,
    JPEG_SCANS_PROBLEM, JPEG_SEGMENTS_PROBLEM, MAX_GIF_BLOCKS, MAX_GIF_STEPS, MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS, MISTAKEN_FORMAT_BYTES, MISTAKEN_FORMATS, GifFrames, bmp_problem,
    colour_table_bytes, format_hint, gif_colour_table_end, gif_frames, pixel_limit_error,
    read_image_header)
from ofrnn_tf.tf_errors import op_error_text

_BMP_HEADER_BYTES = 54  # file header (14) and BITMAPINFOHEADER (40)


def out_of_line(fn=None, *, input_signature=None):
    """``fn`` as a graph function that stays one op in its caller's graph.

    A ``tf.cond`` is lowered into its caller's graph with both branches, and the
    ops of the branch not taken still cost: each is visited to propagate "dead".
    Rare branches call such functions, so that passing them by costs one op.
    """
    if fn is None:
        return lambda f: out_of_line(f, input_signature=input_signature)
    return tf.function(fn, input_signature=input_signature, autograph=False,
                       experimental_attributes={"_noinline": True})


def _little_endian(header: tf.Tensor, offset: int, size: int) -> tf.Tensor:
    return sum(header[offset + k] * 256 ** k for k in range(size))


def decode_rgb(image_bytes: tf.Tensor, colour_tables: bool = True) -> tf.Tensor:
    """Decodes one encoded image to ``uint8 [H, W, 3]`` RGB, as the model sees it.

    TensorFlow's BMP decoder returns an 8-bit BMP's palette indices as gray levels,
    whatever its colour table says; the colours are looked up here, so a 256-colour
    BMP is seen in its colours (a gray one, whose table is the identity, is unchanged).
    Raises ``InvalidArgumentError`` for bytes that are not a decodable image.

    ``colour_tables=False`` leaves that step out, for callers that never pass a BMP:
    inside ``tf.map_fn`` the step's cond costs about 0.2 ms an image even when not taken
    (in ``tf.data``, about a tenth of that).
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False,
                               dtype=tf.uint8)
    image.set_shape([None, None, 3])
    if not colour_tables:
        return image
    is_bmp = tf.equal(tf.strings.substr(image_bytes, 0, 2), "BM")
    return tf.cond(is_bmp, lambda: _bmp_colours(image_bytes, image), lambda: image)


@out_of_line(input_signature=[tf.TensorSpec([], tf.string),
                              tf.TensorSpec([None, None, 3], tf.uint8)])
def _bmp_colours(image_bytes: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """A decoded BMP in the colours of its table when it has 8 bits per pixel."""
    header = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, 0, _BMP_HEADER_BYTES),
                                      tf.uint8, fixed_length=_BMP_HEADER_BYTES), tf.int32)
    header_size = _little_endian(header, 14, 4)
    palette = tf.logical_and(header_size >= 40, tf.equal(_little_endian(header, 28, 2), 8))

    def coloured() -> tf.Tensor:
        used = _little_endian(header, 46, 4)
        entries = tf.where(tf.logical_or(used <= 0, used > 256), 256, used)
        table = tf.io.decode_raw(tf.strings.substr(image_bytes, 14 + header_size, 4 * entries),
                                 tf.uint8)
        rgb = tf.reverse(tf.reshape(table, [-1, 4])[:, :3], axis=[1])  # stored B, G, R, 0
        index = tf.cast(image[..., 0], tf.int32)
        check = tf.debugging.assert_less(
            tf.reduce_max(index), tf.shape(rgb)[0],
            message="8-bit BMP with a pixel past its colour table (corrupt or cut off)")
        with tf.control_dependencies([check]):
            return tf.gather(rgb, index)

    return tf.cond(palette, coloured, lambda: image)


def decode_and_resize(image_bytes: tf.Tensor, image_size: int,
                      colour_tables: bool = True) -> tf.Tensor:
    """Decodes one encoded image and resizes it to ``[image_size, image_size, 3]``.

    Args:
        image_bytes: scalar ``tf.string`` holding a JPEG, PNG, BMP or GIF (first
            frame) file.
        image_size: output side length S.
        colour_tables: see `decode_rgb`.

    Returns:
        ``uint8 [S, S, 3]`` RGB (`decode_rgb`). Grayscale and RGBA inputs are converted
        to RGB.
        Raises ``InvalidArgumentError`` for bytes that are not a decodable image.
    """
    image = decode_rgb(image_bytes, colour_tables)

    def resize() -> tf.Tensor:
        resized = tf.image.resize(image, [image_size, image_size],
                                  method=tf.image.ResizeMethod.BILINEAR, antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    shape = tf.shape(image)
    same = tf.logical_and(tf.equal(shape[0], image_size), tf.equal(shape[1], image_size))
    out = tf.cond(same, lambda: image, resize)
    out.set_shape([image_size, image_size, 3])
    return out



def has_accepted_format(data: tf.Tensor) -> tf.Tensor:
    """Whether the scalar encoded bytes `data` start as a JPEG, PNG, GIF or BMP does
    (`FORMAT_MAGIC`): the served model's first check, in a few graph ops."""
    return tf.reduce_any(tf.stack([tf.equal(tf.strings.substr(data, 0, len(magic)), magic)
                                   for magic in ACCEPTED_MAGIC]))


def decode_checked(data: bytes, image_size: int | None,
                   max_image_pixels: int | None = None) -> tf.Tensor:
    """`data` decoded (and resized to `image_size` unless None) as the served model reads
    it, or ValueError in its words: a JPEG, PNG, GIF or BMP header (`read_image_header`)
    of at most `max_image_pixels` pixels (None: no limit; a GIF's frames count too),
    then data that decode (`image_guards`)."""
    image_format, width, height = read_image_header(data, max_image_pixels)
    try:
        if image_size is None:
            return decode_rgb(tf.constant(data))
        return decode_and_resize(tf.constant(data), image_size)
    except (tf.errors.OpError, UnicodeDecodeError) as error:
        # UnicodeDecodeError: TensorFlow's error text quoted bytes of the image.
        detail = (f" ({op_error_text(error)})" if isinstance(error, tf.errors.OpError)
                  else "")
        raise ValueError(f"its {image_format} header ({width}x{height}) is sound but the "
                         f"data behind it is truncated or corrupt{detail}") from None


def find_undecodable(key: str, images: Sequence[bytes]) -> str | None:
    """Names the first image TensorFlow's decoder refuses (``key[i]: ...``), or None if
    all decode (run eagerly, where a model's batched decoder failed and named none)."""
    for i, encoded in enumerate(images):
        try:
            tf.io.decode_image(encoded, channels=3, expand_animations=False)
        except tf.errors.OpError as e:
            return f"{key}[{i}]: image cannot be decoded: {op_error_text(e)}"
    return None
