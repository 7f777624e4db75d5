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

import struct
from typing import Sequence

import tensorflow as tf

from ofrnn_tf.tf_errors import op_error_text

IMAGE_FORMATS = "JPEG/PNG/GIF/BMP"


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


_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            raise ValueError(f"corrupt JPEG: no marker at byte {i}")
        while i < n and data[i] == 0xFF:  # fill bytes may precede a marker code
            i += 1
        if i >= n:
            break
        code = data[i]
        i += 1
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # markers without a length field
            continue
        if code in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise ValueError("corrupt JPEG: no frame header before the image data")
        if i + 2 > n:
            break
        (length,) = struct.unpack(">H", data[i:i + 2])
        if length < 2:
            raise ValueError(f"corrupt JPEG: segment length {length} at byte {i}")
        if code in _JPEG_SOF:
            if i + 7 > n:
                break
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            return width, height
        i += length
    raise ValueError(f"truncated JPEG: header ends after {n} bytes without a frame header")


def read_image_header(data: bytes) -> tuple[str, int, int]:
    """Returns ``(format, width, height)`` from an encoded image's header.

    Only the first bytes are parsed (PNG IHDR, GIF logical screen, BMP info header,
    JPEG SOF segment), so a small file that declares a huge image costs nothing.
    Raises ValueError with the reason when the bytes are not a JPEG/PNG/GIF/BMP
    image or the header is truncated or corrupt.
    """
    if data[:3] == b"\xff\xd8\xff":
        fmt, (width, height) = "JPEG", _jpeg_size(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ValueError("truncated or corrupt PNG: no IHDR chunk")
        fmt, (width, height) = "PNG", struct.unpack(">II", data[16:24])
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        if len(data) < 10:
            raise ValueError("truncated GIF header")
        fmt, (width, height) = "GIF", struct.unpack("<HH", data[6:10])
    elif data[:2] == b"BM":
        if len(data) < 26:
            raise ValueError("truncated BMP header")
        (info_size,) = struct.unpack("<I", data[14:18])
        if info_size == 12:
            width, height = struct.unpack("<HH", data[18:22])
        elif 40 <= info_size <= 124:
            width, height = struct.unpack("<ii", data[18:26])
            height = abs(height)  # negative height: rows stored top-down
        else:
            raise ValueError(f"corrupt BMP header (info header size {info_size})")
        fmt = "BMP"
    else:
        raise ValueError(f"not a {IMAGE_FORMATS} image (starts with {data[:8]!r})")
    if width <= 0 or height <= 0:
        raise ValueError(f"{fmt} header gives an empty image ({width}x{height})")
    return fmt, width, height


def find_undecodable(key: str, images: Sequence[bytes]) -> str | None:
    """Names the first image TensorFlow's decoder refuses (``key[i]: ...``), or None if
    all decode (run eagerly, where a model's batched decoder failed and named none)."""
    for i, encoded in enumerate(images):
        try:
            tf.io.decode_image(encoded, channels=3, expand_animations=False)
        except tf.errors.OpError as e:
            return f"{key}[{i}]: image cannot be decoded: {op_error_text(e)}"
    return None
