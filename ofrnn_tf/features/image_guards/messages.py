"""Why a batch is refused, built in the graph only once it is: `_header_message`, in
a function its caller's graph does not inline, reads the first refused image's header
again and says what is wrong with it, naming it ``images[i]``."""

from __future__ import annotations

import tensorflow as tf

from ofrnn_tf.features.image_guards.gif_walk import _GIF_DESCRIPTOR, _GIF_TRAILER, _gif_frames
from ofrnn_tf.features.image_guards.layouts import (
    ACCEPTED_FORMATS, _BMP, _BMP_COMPRESSED, _BMP_DEPTH, _BMP_MASKS, _BMP_MASKS_CUT, _BMP_OS2,
    _BMP_TOP_DOWN, _F_AVAILABLE, _F_CHUNK, _F_HEIGHT, _F_LENGTH, _F_WIDTH, _GIF, _JPEG,
    _LAYOUT_FORMATS, _LOWER, _MAX_SIDE, _NEEDED_BYTES, _PNG, _UNKNOWN, _read_headers)
from ofrnn_tf.features.image_guards.reading import _GAVE_UP
from ofrnn_tf.features.image_headers import (
    BMP_COMPRESSIONS, BMP_MASKS_CUT, BMP_MASKS_PROBLEM, BMP_REMEDY, BMP_TRUNCATED,
    GIF_REMEDY, JPEG_DECODED_PROCESSES, JPEG_PROCESSES, JPEG_SCANS_PROBLEM, JPEG_TOO_LARGE,
    JPEG_UNREAD, MAX_GIF_BLOCKS, MAX_GIF_STEPS, MAX_JPEG_SCANS, MISTAKEN_FORMAT_BYTES,
    MISTAKEN_FORMATS, PNG_TOO_LARGE)
from ofrnn_tf.features.images import out_of_line
from ofrnn_tf.features.pixel_limit import PIXEL_LIMIT_WORDS

# Every byte in hex; the names of the markers a JPEG walk stops at before a frame header.
_HEX = tuple(f"{b:02x}" for b in range(256))
_JPEG_MARKER_NAMES = tuple({0xD8: " (SOI)", 0xD9: " (EOI)", 0xDA: " (SOS)"}.get(b, "")
                           for b in range(256))
_JPEG_DECODED = tuple(int(b in JPEG_DECODED_PROCESSES) for b in range(256))


def _hex(data: tf.Tensor) -> tf.Tensor:
    """Space-separated hex of a scalar string's bytes."""
    return tf.strings.reduce_join(
        tf.gather(_HEX, tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)), separator=" ")


def _str(value: tf.Tensor) -> tf.Tensor:
    return tf.strings.as_string(value)


def _format(template: str, value: tf.Tensor) -> tf.Tensor:
    """``template.format(value)`` in the graph, for a template with one ``{}``."""
    before, after = template.split("{}")
    return tf.strings.join([before, _str(value), after])


def _first(cases, default):
    """The value of the first ``(condition, value)`` whose scalar condition holds."""
    result = tf.constant(default) if isinstance(default, str) else default
    for condition, value in reversed(cases):
        result = tf.where(condition, value, result)
    return result


def _format_hint(image: tf.Tensor) -> tf.Tensor:
    """A hint for frequent mistakes, e.g. " (this looks like WebP, ...)", or "" (the
    table of `ofrnn_tf.features.image_headers.format_hint`)."""
    # Padded, so that every substr below is in range whatever the length.
    head = tf.strings.join([tf.strings.substr(image, 0, MISTAKEN_FORMAT_BYTES),
                            "\0" * MISTAKEN_FORMAT_BYTES])

    def at(offset, magics):
        return tf.reduce_any(tf.stack([
            tf.equal(tf.strings.substr(head, offset, len(magic)), magic) for magic in magics]))

    return _first([(tf.reduce_all(tf.stack([at(offset, magics) for offset, magics in checks])),
                    f" ({hint})") for hint, checks in MISTAKEN_FORMATS], "")


@out_of_line
def _header_message(images: tf.Tensor, limit: tf.Tensor, passed: tf.Tensor,
                    max_jpeg_segments: int) -> tf.Tensor:
    """Why a batch is refused: empty, or the first refused image and why (``passed``:
    which images the header pass accepted).

    Runs only once a batch failed: it reads the refused image's header again and looks
    closer.
    """
    return tf.cond(tf.size(images) > 0,
                   lambda: _image_message(images, limit, passed, max_jpeg_segments),
                   lambda: tf.constant("images is an empty batch: send at least one image"))


def _image_message(images: tf.Tensor, limit: tf.Tensor, passed: tf.Tensor,
                   max_jpeg_segments: int) -> tf.Tensor:
    i = tf.argmax(tf.cast(tf.logical_not(passed), tf.int32), output_type=tf.int32)
    image = images[i:i + 1]
    info = _read_headers(image, max_jpeg_segments)
    image, length, layout, fields = image[0], info.length[0], info.layout[0], info.fields[0]
    pos, frame, pixels = info.pos[0], info.frame[0], info.pixels[0]
    bmp_problem, bmp_bits = info.bmp_problem[0], _str(info.bmp_bits[0])
    width, height = fields[_F_WIDTH + layout], fields[_F_HEIGHT + layout]
    is_jpeg, is_gif = tf.equal(layout, _JPEG), tf.equal(layout, _GIF)
    available = tf.where(tf.logical_or(is_jpeg, is_gif), fields[_F_AVAILABLE],
                         fields[_F_LENGTH])
    is_bmp_info = tf.logical_or(tf.equal(layout, _BMP), tf.equal(layout, _BMP_TOP_DOWN))

    name = tf.strings.join(["images[", _str(i), "]"])
    a_format = tf.strings.join([name, " is a ", tf.gather(_LAYOUT_FORMATS, layout)])
    found = tf.strings.reduce_join(tf.gather(_HEX, tf.minimum(frame[:2], 255)), separator=" ")
    truncated = tf.strings.join([a_format, tf.where(
        layout >= _BMP, _format(BMP_TRUNCATED, length),
        _format(" cut off inside its header ({} bytes), before its width and height", length))])

    def corrupt(*parts):
        return tf.strings.join([a_format, " with a corrupt header: ", *parts])

    size = tf.strings.join([_str(width), "x", _str(height)])
    sof = tf.clip_by_value(frame[1] - 0xC0, 0, 15)  # n of SOFn, where the walk found one
    accepted = ", ".join(ACCEPTED_FORMATS[:-1]) + " or " + ACCEPTED_FORMATS[-1]
    return _first([
        (tf.equal(length, 0), tf.strings.join([name, " is empty (0 bytes)"])),
        (tf.equal(layout, _UNKNOWN),
         tf.strings.join([name, " is not a ", accepted, " file: it starts with ",
                          _hex(tf.strings.substr(image, 0, 12)), _format_hint(image)])),
        (tf.logical_and(is_jpeg, tf.equal(frame[0], _GAVE_UP)),
         corrupt(f"no frame header (SOFn) in its first {max_jpeg_segments} marker segments")),
        # The walk stops at a marker, or at the end (then the frame read is zeros).
        (tf.logical_and(is_jpeg, tf.logical_or(available < 2, tf.not_equal(frame[0], 0xFF))),
         truncated),
        (tf.logical_and(is_jpeg, tf.logical_or(frame[1] < 0xC0, frame[1] > 0xCF)),
         corrupt("marker ", found, tf.gather(_JPEG_MARKER_NAMES, frame[1]), " at byte ",
                 _str(pos), " comes before any frame header (SOFn)")),
        (tf.logical_and(is_gif, tf.equal(frame[0], _GAVE_UP)),
         corrupt(f"no image descriptor in its first {MAX_GIF_BLOCKS} blocks")),
        # The GIF walk stops at a block start: the descriptor, something else, or the end.
        (tf.logical_and(is_gif, available <= 0), truncated),
        (tf.logical_and(is_gif, tf.equal(frame[0], _GIF_TRAILER)),
         corrupt("its trailer (3b) at byte ", _str(pos), " comes before any image")),
        (tf.logical_and(is_gif, tf.not_equal(frame[0], _GIF_DESCRIPTOR)),
         corrupt("byte ", tf.gather(_HEX, tf.minimum(frame[0], 255)), " at byte ", _str(pos),
                 " is no GIF block (an image descriptor 2c, an extension 21 or the "
                 "trailer 3b)")),
        (available < tf.gather(_NEEDED_BYTES, layout), truncated),
        (tf.logical_and(tf.equal(layout, _PNG),
                        tf.not_equal(fields[_F_CHUNK], _LOWER[_PNG, _F_CHUNK])),
         corrupt("its first chunk is not IHDR")),
        (tf.equal(bmp_problem, _BMP_OS2),
         tf.strings.join([a_format, " with an OS/2 header (BITMAPCOREHEADER)", BMP_REMEDY])),
        (tf.equal(bmp_problem, _BMP_DEPTH),
         tf.strings.join([a_format, " of bit depth ", bmp_bits, BMP_REMEDY])),
        (tf.equal(bmp_problem, _BMP_COMPRESSED),
         tf.strings.join([a_format, " of bit depth ", bmp_bits, " compressed with ",
                          tf.gather(BMP_COMPRESSIONS, tf.minimum(
                              info.bmp_compression[0], len(BMP_COMPRESSIONS) - 1)),
                          " (compression ", _str(info.bmp_compression[0]), ")", BMP_REMEDY])),
        (tf.equal(bmp_problem, _BMP_MASKS_CUT),
         tf.strings.join([a_format, _format(BMP_MASKS_CUT, length)])),
        (tf.equal(bmp_problem, _BMP_MASKS), tf.strings.join([a_format, BMP_MASKS_PROBLEM])),
        # The frame header was read (a shorter one is cut off, above).
        (tf.logical_and(info.jpeg_unread[0], tf.not_equal(
            tf.gather(_JPEG_DECODED, tf.minimum(frame[1], 255)), 1)),
         tf.strings.join([a_format, " of the ", tf.gather(JPEG_PROCESSES, sof), " process (SOF",
                          _str(sof), ")", JPEG_UNREAD])),
        (info.jpeg_unread[0],
         tf.strings.join([a_format, " of ", _str(frame[4]), "-bit samples", JPEG_UNREAD])),
        (tf.logical_or(tf.equal(width, 0), tf.equal(height, 0)),
         tf.strings.join([a_format, " of ", size, " pixels: an empty image"])),
        (tf.logical_and(is_bmp_info, width > _MAX_SIDE), corrupt("its width is negative")),
        (tf.maximum(width, height) > _MAX_SIDE,
         corrupt("its width or height is 2^31 or more")),
        # Before the pixel limit, whose remedy (raising it) cannot help such an image.
        (tf.logical_and(info.too_large[0], is_jpeg),
         tf.strings.join([a_format, " of ", size, " pixels by ", _str(frame[9]),
                          " colour component(s)",
                          _format(JPEG_TOO_LARGE, tf.cast(frame[9], tf.int64) * width * height)])),
        (info.too_large[0], tf.strings.join([a_format, " of ", size, " = ",
                                             _str(width * height), " pixels", PNG_TOO_LARGE])),
        (width * height > limit,
         tf.strings.join([a_format, " of ", size, " = ", _str(width * height),
                          f" pixels, {PIXEL_LIMIT_WORDS} ", _str(limit), " pixels"])),
        (tf.logical_and(is_gif, pixels > limit), tf.cond(
            tf.logical_and(is_gif, pixels > limit),
            lambda: _gif_frames_message(image[None], pos[None], limit, a_format),
            lambda: tf.constant(""))),
        (info.scans[0] > MAX_JPEG_SCANS,
         tf.strings.join([a_format, _format(JPEG_SCANS_PROBLEM, info.scans[0])])),
    ], tf.strings.join([a_format, " with an invalid header"]))


@out_of_line
def _gif_frames_message(image, pos, limit, a_format):
    """Why a GIF whose first frame is within ``limit`` is refused: its frames' canvas,
    their pixels together, or a walk that ran out of steps (`_gif_frames`)."""
    stats, unchecked = _gif_frames(image, pos, tf.ones([1], tf.bool))
    frames, pixels, width, height = tf.unstack(stats[0])
    canvas = width * height
    over = tf.strings.join([f" pixels in all, {PIXEL_LIMIT_WORDS} ", _str(limit), " pixels"])
    return tf.strings.join([_first([
        (unchecked[0], tf.strings.join([a_format, f" with more frames or blocks than the "
                                                  f"check reads ({MAX_GIF_STEPS} steps of its "
                                                  f"walk over the frames)"])),
        (canvas > limit,
         tf.strings.join([a_format, " whose frames make a canvas of ", _str(width), "x",
                          _str(height), " = ", _str(canvas), " pixels (the width of its widest "
                          f"frame by the height of its tallest), {PIXEL_LIMIT_WORDS} ",
                          _str(limit), " pixels"])),
    ], tf.strings.join([a_format, " whose ", _str(frames), " frames hold ", _str(pixels),
                        over])), GIF_REMEDY])
