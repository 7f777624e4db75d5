"""Where each accepted format stores its width and height, and the header pass that
reads them: the layouts (the formats, plus BMP variants) and the signatures that tell
them apart, the header fields one matrix product reads and their bounds per layout,
the BMP layouts TensorFlow does not decode, how complete files end; `_read_headers`,
which walks to the JPEG frame header (`jpeg_walk`) and the GIF image descriptors
(`gif_walk`) and counts a progressive JPEG's scans, `has_accepted_bmp_layout` and
`_looks_complete`."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ofrnn_tf.features.image_guards.gif_walk import _GIF_DESCRIPTOR, _gif_blocks
from ofrnn_tf.features.image_guards.jpeg_walk import _STEP, _WINDOW, _WINDOW_STEPS, _walk_on
from ofrnn_tf.features.image_guards.reading import _FRAME_BYTES, _read
from ofrnn_tf.features.image_headers import (
    DECODER_LIMIT, JPEG_DECODED_PROCESSES, JPEG_MAX_SIDE)
from ofrnn_tf.features.images import (
    BMP_BGRA_MASKS, BMP_BIT_DEPTHS, BMP_BITFIELDS, BMP_FIELDS_BYTES, BMP_MASKS_AT,
    FORMAT_MAGIC, MAX_JPEG_SCANS)

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP")

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_MAX_SIDE = 2 ** 31 - 1  # PNG's limit; it also keeps width * height inside int64
_ANY = None  # a wildcard byte in a pattern

# ---------------------------------------------------------------------------
# Layouts: where width and height are stored. The formats, plus BMP variants.
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _BMP_TOP_DOWN, _BMP_CORE = range(7)
_LAYOUT_FORMATS = ("unknown", "JPEG", "PNG", "GIF", "BMP", "BMP", "BMP")
_N_LAYOUTS = len(_LAYOUT_FORMATS)

# Magic bytes and the layout each implies. When several match, the highest layout
# wins: a BMP is refined by the top byte of its height (FF: negative, rows stored
# top-down) and, above that, by its header size (12: BITMAPCOREHEADER, where byte 25
# is no longer the height's).
_BM = tuple(FORMAT_MAGIC["BMP"][0])
_SIGNATURES = tuple(
    (layout, magic) for name, layout in (("JPEG", _JPEG), ("PNG", _PNG), ("GIF", _GIF),
                                         ("BMP", _BMP))
    for magic in FORMAT_MAGIC[name]) + (
    (_BMP_TOP_DOWN, _BM + (_ANY,) * 23 + (0xFF,)),
    (_BMP_CORE, _BM + (_ANY,) * 12 + (12, 0, 0, 0)),
)
_SIGNATURE_BYTES = 26
_SIGNATURE_VALUES = np.zeros((len(_SIGNATURES), _SIGNATURE_BYTES), np.int32)
_SIGNATURE_WILDCARDS = np.ones((len(_SIGNATURES), _SIGNATURE_BYTES), bool)
for _row, (_, _pattern) in enumerate(_SIGNATURES):
    for _k, _byte in enumerate(_pattern):
        if _byte is not _ANY:
            _SIGNATURE_VALUES[_row, _k], _SIGNATURE_WILDCARDS[_row, _k] = _byte, False
_SIGNATURE_LAYOUTS = np.array([layout for layout, _ in _SIGNATURES], np.int32)

# ---------------------------------------------------------------------------
# Header fields. One matrix product turns the bytes read (the first 32 of the
# file, the 10 of the JPEG frame header or GIF image descriptor) plus the length
# and the frame position into all of these fields, for every layout at once; the
# layout then picks.
_HEAD_BYTES = 32
_IN_LENGTH = _HEAD_BYTES + _FRAME_BYTES
_IN_POS = _IN_LENGTH + 1
_INPUTS = _IN_POS + 1
_F_WIDTH = 0  # the width of each layout, then the height of each
_F_HEIGHT = _N_LAYOUTS
_F_FRAME_KIND = 2 * _N_LAYOUTS  # JPEG: SOFn, sample precision, components
_F_MARKER = _F_FRAME_KIND + 1  # JPEG, GIF: the word where the walk stopped
_F_AVAILABLE = _F_MARKER + 1  # JPEG, GIF: bytes from the frame header/image descriptor on
_F_CHUNK = _F_MARKER + 2  # PNG: type of the first chunk
_F_LENGTH = _F_MARKER + 3  # the other formats: bytes from the file start on
_N_FIELDS = _F_MARKER + 4
_FIELD_GROUPS = (_N_LAYOUTS, _N_LAYOUTS, 1, _N_FIELDS - _F_MARKER)  # widths, heights, ...


def _weights(offset: int, size: int, big_endian: bool, scale: int = 1) -> np.ndarray:
    """The column of weights that reads an unsigned integer from the inputs."""
    column = np.zeros(_INPUTS, np.int64)
    for k in range(size):
        column[offset + k] = scale * 256 ** (size - 1 - k if big_endian else k)
    return column


_FIELD_WEIGHTS = np.zeros((_INPUTS, _N_FIELDS), np.int64)
_FIELD_BIAS = np.zeros(_N_FIELDS, np.int64)
for _layout, (_width, _height) in {
        _JPEG: ((_HEAD_BYTES + 7, 2, True), (_HEAD_BYTES + 5, 2, True)),  # SOFn: Y, then X
        _PNG: ((16, 4, True), (20, 4, True)),  # IHDR
        _GIF: ((_HEAD_BYTES + 5, 2, False), (_HEAD_BYTES + 7, 2, False)),  # image descriptor
        _BMP: ((18, 4, False), (22, 4, False)),  # BITMAPINFOHEADER and successors
        _BMP_CORE: ((18, 2, False), (20, 2, False)),  # BITMAPCOREHEADER
        _BMP_TOP_DOWN: ((18, 4, False), (22, 4, False, -1)),  # |height| = 2^32 - it
}.items():
    _FIELD_WEIGHTS[:, _F_WIDTH + _layout] = _weights(*_width)
    _FIELD_WEIGHTS[:, _F_HEIGHT + _layout] = _weights(*_height)
_FIELD_BIAS[_F_HEIGHT + _BMP_TOP_DOWN] = 2 ** 32
_FIELD_WEIGHTS[:, _F_FRAME_KIND] = (_weights(_HEAD_BYTES + 1, 1, True, 65536)
                                    + _weights(_HEAD_BYTES + 4, 1, True, 256)
                                    + _weights(_HEAD_BYTES + 9, 1, True))
_FIELD_WEIGHTS[:, _F_MARKER] = _weights(_HEAD_BYTES, 2, True)  # GIF: 2C, then a byte
_FIELD_WEIGHTS[_IN_LENGTH, _F_AVAILABLE] = 1
_FIELD_WEIGHTS[_IN_POS, _F_AVAILABLE] = -1
_FIELD_WEIGHTS[:, _F_CHUNK] = _weights(12, 4, True)
_FIELD_WEIGHTS[_IN_LENGTH, _F_LENGTH] = 1

# A header is valid when each of its fields lies within the bounds of its layout.
_LOWER = np.full((_N_LAYOUTS, _N_FIELDS), _INT64_MIN, np.int64)
_UPPER = np.full((_N_LAYOUTS, _N_FIELDS), _INT64_MAX, np.int64)
_LOWER[_UNKNOWN, _F_LENGTH], _UPPER[_UNKNOWN, _F_LENGTH] = 1, 0  # never valid
# Bytes needed: the JPEG frame header and the GIF image descriptor (from where the
# walk stopped); the PNG signature and IHDR chunk; the BMP fields read.
_WALKED = (_JPEG, _GIF)
_NEEDED = {_JPEG: _FRAME_BYTES, _PNG: 33, _GIF: _FRAME_BYTES, _BMP: BMP_FIELDS_BYTES,
           _BMP_CORE: BMP_FIELDS_BYTES, _BMP_TOP_DOWN: BMP_FIELDS_BYTES}
_NEEDED_BYTES = np.zeros(_N_LAYOUTS, np.int64)
for _layout, _needed in _NEEDED.items():
    _LOWER[_layout, [_F_WIDTH + _layout, _F_HEIGHT + _layout]] = 1
    _UPPER[_layout, [_F_WIDTH + _layout, _F_HEIGHT + _layout]] = _MAX_SIDE
    _LOWER[_layout, _F_AVAILABLE if _layout in _WALKED else _F_LENGTH] = _needed
    _NEEDED_BYTES[_layout] = _needed
# The walk stops on a SOFn or on an error, and no error stop is an FF Cn word.
_LOWER[_JPEG, _F_MARKER], _UPPER[_JPEG, _F_MARKER] = 0xFFC0, 0xFFCF
# The GIF walk stops at a block start: the descriptor is the one accepted.
_LOWER[_GIF, _F_MARKER] = _GIF_DESCRIPTOR * 256
_UPPER[_GIF, _F_MARKER] = _GIF_DESCRIPTOR * 256 + 255
_LOWER[_PNG, _F_CHUNK] = _UPPER[_PNG, _F_CHUNK] = int.from_bytes(b"IHDR", "big")
# A BMP's DIB header size is not checked: TF reads every BMP header as a
# BITMAPINFOHEADER, whatever its size field says (0, 20, 200, ...), and so does the
# guard, but for 12: a BITMAPCOREHEADER, which TF misreads and the guard refuses.

# BMPs TensorFlow's decoder does not read (`ofrnn_tf.features.image_headers.bmp_problem`):
# why, by kind; the info header's bit depth (bytes 28-29), compression (30-33) and,
# for bit fields, its colour masks.
_BMP_READ, _BMP_OS2, _BMP_DEPTH, _BMP_COMPRESSED, _BMP_MASKS_CUT, _BMP_MASKS = range(6)
_BMP_BGRA_BYTES = np.frombuffer(b"".join(m.to_bytes(4, "little") for m in BMP_BGRA_MASKS),
                                np.uint8).astype(np.int32)

# ---------------------------------------------------------------------------
# Complete files (see the package docstring): how they end, as a pattern on their
# last bytes (never matched for the other layouts: 256 is no byte), and the JPEG
# frames libjpeg decodes everywhere: Huffman baseline, extended or progressive,
# 8-bit samples, 1 or 3 components.
_TAIL_BYTES = 12
_ENDINGS = {_JPEG: b"\xff\xd9", _PNG: b"\x00\x00\x00\x00IEND\xaeB`\x82", _GIF: b";"}
_ENDING_VALUES = np.full((_N_LAYOUTS, _TAIL_BYTES), 256, np.int32)
_ENDING_WILDCARDS = np.zeros((_N_LAYOUTS, _TAIL_BYTES), bool)
for _layout, _ending in _ENDINGS.items():
    _ENDING_WILDCARDS[_layout] = True
    _ENDING_VALUES[_layout, _TAIL_BYTES - len(_ending):] = list(_ending)
    _ENDING_WILDCARDS[_layout, _TAIL_BYTES - len(_ending):] = False
_PLAIN_JPEG_FRAMES = np.array([m * 65536 + 8 * 256 + c for m in (0xC0, 0xC1, 0xC2)
                               for c in (1, 3)], np.int64)
del _row, _pattern, _k, _byte, _layout, _width, _height, _needed, _ending


_PROGRESSIVE_JPEG_FRAMES = np.array([0xC2, 0xC6, 0xCA, 0xCE], np.int32)  # SOF2, 6, 10, 14


def _jpeg_scans(images: tf.Tensor, progressive: tf.Tensor) -> tf.Tensor:
    """int64 [N]: the SOS markers (FF DA) in the bytes of each image where `progressive`,
    else 0 (`ofrnn_tf.features.image_headers.MAX_JPEG_SCANS`)."""
    counted = tf.where(progressive, images, "")
    return tf.strings.split(counted, sep=b"\xff\xda").row_lengths() - 1


class _Headers:
    """What the header pass found, one entry per image."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)


def _window_and_layout(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The first `_WINDOW` bytes of every image (int32, zero-padded) and its layout."""
    window = tf.cast(tf.io.decode_raw(tf.strings.substr(images, 0, _WINDOW), tf.uint8,
                                      fixed_length=_WINDOW), tf.int32)
    matches = tf.reduce_all(tf.logical_or(
        tf.equal(window[:, None, :_SIGNATURE_BYTES], _SIGNATURE_VALUES), _SIGNATURE_WILDCARDS),
        axis=2)
    return window, tf.reduce_max(tf.cast(matches, tf.int32) * _SIGNATURE_LAYOUTS, axis=1)


def has_accepted_bmp_layout(image: tf.Tensor) -> tf.Tensor:
    """Whether the scalar encoded `image` is no BMP of a layout the served model refuses
    (`ofrnn_tf.features.image_headers.bmp_problem`); true of the other formats. Feature
    extraction skips such BMPs with it, in a few graph ops."""
    window, layout = _window_and_layout(image[None])
    problem, _, _ = _bmp_problems(window, layout, tf.strings.length(image[None]))
    return tf.equal(problem[0], _BMP_READ)


def _read_headers(images: tf.Tensor, max_jpeg_segments: int) -> _Headers:
    """The header pass: layout, fields and validity of every image (see the constants)."""
    length = tf.strings.length(images)
    window, layout = _window_and_layout(images)
    is_jpeg = tf.equal(layout, _JPEG)

    # JPEG walk inside the window. For every offset p: the step there and the next
    # position, or p itself when that is outside the window (the frame header read
    # there has to fit too). So a position that stays put is a stop where the step
    # is 0, and elsewhere a step that leaves the window. The zeros read past the end
    # of a short file step 1 each (as stray bytes would): a walk there ends with a
    # step > 0 and goes on to `_walk_on`, which stops it at the end. (Slices, not
    # tf.roll: its kernel hands the work to other threads, 100 us and more on a busy CPU.)
    words = window[:, :-1] * 256 + window[:, 1:]
    step = tf.minimum(tf.gather(_STEP, words[:, :-2]), words[:, 2:] + 2)
    offsets = tf.range(_WINDOW - 3)
    target = offsets + step
    following = tf.where(target <= _WINDOW - _FRAME_BYTES, target, offsets)
    # After SOI. The other formats walk too (their bytes step 1 mostly), for nothing:
    # their checks read from the file start (_F_LENGTH), not from pos.
    pos = tf.where(is_jpeg, 2, 0)
    for _ in range(_WINDOW_STEPS):
        pos = tf.gather(following, pos, batch_dims=1)
    frame = tf.gather(window, tf.expand_dims(pos, 1) + tf.range(_FRAME_BYTES), batch_dims=1)
    moving = tf.logical_and(is_jpeg, tf.gather(step, pos, batch_dims=1) > 0)
    pos, frame = tf.cond(
        tf.reduce_any(moving),
        lambda: _walk_on(images, pos, is_jpeg, max(max_jpeg_segments - _WINDOW_STEPS, 1)),
        lambda: (pos, frame))
    # GIFs walk to their first image descriptor, then over all their frames, out of
    # line: other batches pay one cond (and the maximum below).
    is_gif = tf.equal(layout, _GIF)
    pos, frame, gif_pixels = tf.cond(
        tf.reduce_any(is_gif),
        lambda: _gif_blocks(images, window[:, 10], pos, frame, is_gif),
        lambda: (pos, frame, tf.zeros_like(length, tf.int64)))

    inputs = tf.concat([window[:, :_HEAD_BYTES], frame, tf.stack([length, pos], axis=1)],
                       axis=1)
    fields = tf.matmul(tf.cast(inputs, tf.int64), _FIELD_WEIGHTS) + _FIELD_BIAS
    valid = tf.reduce_all(tf.logical_and(fields >= tf.gather(_LOWER, layout),
                                         fields <= tf.gather(_UPPER, layout)), axis=1)
    bmp_problem, bmp_bits, bmp_compression = _bmp_problems(window, layout, length)
    valid = tf.logical_and(valid, tf.equal(bmp_problem, _BMP_READ))
    # The walk stopped at the frame header: its marker says whether the JPEG is progressive.
    progressive = tf.logical_and(is_jpeg, tf.reduce_any(
        tf.equal(frame[:, 1:2], _PROGRESSIVE_JPEG_FRAMES), axis=1))
    # A frame TensorFlow's JPEG decoder does not read (`jpeg_frame_problem`): its
    # process (byte 1 of the frame header read) or its sample precision (byte 4).
    jpeg_unread = tf.logical_and(is_jpeg, tf.logical_or(
        tf.reduce_all(tf.not_equal(frame[:, 1:2], JPEG_DECODED_PROCESSES), axis=1),
        tf.not_equal(frame[:, 4], 8)))
    valid = tf.logical_and(valid, tf.logical_not(jpeg_unread))
    scans = tf.cond(tf.reduce_any(progressive), lambda: _jpeg_scans(images, progressive),
                    lambda: tf.zeros_like(length, tf.int64))
    valid = tf.logical_and(valid, scans <= MAX_JPEG_SCANS)
    widths, heights, frame_kind, _ = tf.split(fields, _FIELD_GROUPS, axis=1)
    pixels = tf.maximum(tf.gather(widths * heights, layout, batch_dims=1), gif_pixels)
    # Larger than TensorFlow's JPEG or PNG decoder reads (`DECODER_LIMIT`): a JPEG's
    # bytes are a pixel's for each of its components (byte 9 of its frame header).
    side = tf.maximum(tf.gather(widths, layout, batch_dims=1),
                      tf.gather(heights, layout, batch_dims=1))
    too_large = tf.where(is_jpeg, tf.logical_or(
        side > JPEG_MAX_SIDE, tf.cast(frame[:, 9], tf.int64) * pixels >= DECODER_LIMIT),
        tf.logical_and(tf.equal(layout, _PNG), pixels >= DECODER_LIMIT))
    valid = tf.logical_and(valid, tf.logical_not(too_large))
    return _Headers(length=length, layout=layout, is_jpeg=is_jpeg, pos=pos, frame=frame,
                    fields=fields, frame_kind=frame_kind, valid=valid, pixels=pixels,
                    scans=scans, jpeg_unread=jpeg_unread, too_large=too_large,
                    bmp_problem=bmp_problem,
                    bmp_bits=bmp_bits,
                    bmp_compression=bmp_compression)


def _bmp_problems(window: tf.Tensor, layout: tf.Tensor, length: tf.Tensor):
    """``(problem, bit depth, compression)`` [N] of every image: why TensorFlow's BMP
    decoder does not read it (`_BMP_OS2`, ...), or `_BMP_READ` (for other formats too)."""
    bits = window[:, 28] + 256 * window[:, 29]
    compression = tf.reduce_sum(tf.cast(window[:, 30:34], tf.int64)
                                * np.array([1, 256, 65536, 16777216], np.int64), axis=1)
    info = tf.logical_or(tf.equal(layout, _BMP), tf.equal(layout, _BMP_TOP_DOWN))
    bitfields = tf.logical_and(tf.equal(compression, BMP_BITFIELDS), tf.equal(bits, 32))
    masks = window[:, BMP_MASKS_AT:BMP_MASKS_AT + len(_BMP_BGRA_BYTES)]
    problem = tf.where(tf.equal(layout, _BMP_CORE), _BMP_OS2, _BMP_READ)
    for kind, found in (
            (_BMP_DEPTH, tf.reduce_all(tf.not_equal(bits[:, None], BMP_BIT_DEPTHS), axis=1)),
            (_BMP_COMPRESSED, tf.logical_and(tf.not_equal(compression, 0),
                                             tf.logical_not(bitfields))),
            (_BMP_MASKS_CUT, tf.logical_and(bitfields, length < BMP_MASKS_AT + 12)),
            (_BMP_MASKS, tf.logical_and(bitfields, tf.reduce_any(
                tf.not_equal(masks, _BMP_BGRA_BYTES), axis=1)))):
        problem = tf.where(tf.logical_and(info, tf.logical_and(
            tf.equal(problem, _BMP_READ), found)), kind, problem)
    return problem, bits, compression


def _looks_complete(images: tf.Tensor, info: _Headers) -> tf.Tensor:
    """bool [N]: whether each image ends the way a complete file of its format does."""
    tail_length = tf.minimum(info.length, _TAIL_BYTES)
    tail = tf.cast(_read(images, info.length - tail_length, _TAIL_BYTES, length=tail_length),
                   tf.int32)
    ends = tf.reduce_all(tf.logical_or(tf.equal(tail, tf.gather(_ENDING_VALUES, info.layout)),
                                       tf.gather(_ENDING_WILDCARDS, info.layout)), axis=1)
    plain = tf.reduce_any(tf.equal(info.frame_kind, _PLAIN_JPEG_FRAMES), axis=1)
    return tf.logical_and(ends, tf.logical_or(plain, tf.logical_not(info.is_jpeg)))
