"""The walk over a JPEG's marker segments to its frame header (SOFn): the table of
steps it reads, the window of the first bytes the header pass walks in at once
(`ofrnn_tf.features.image_guards.layouts._read_headers`), and `_walk_on`, the loop
that goes on beyond that window."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ofrnn_tf.features.image_guards.reading import _FRAME_BYTES, _GAVE_UP, _read
from ofrnn_tf.features.images import out_of_line

# JPEG marker walk. The word (big-endian) at a position gives the bytes to skip:
# a segment skips 2 + its length, the next word (_SEGMENT is larger than any
# length, so the step is min(_STEP[word], length + 2)); RSTn and TEM, markers
# without a length, skip 2; and 0 stops. Between markers the walk reads as
# libjpeg's next_marker does, which skips what is not a marker (with a warning,
# "Corrupt JPEG data: N extraneous bytes before marker") and decodes on: a byte
# that is not FF skips 1, a fill byte (FF FF) 1, and FF 00 2. The walk stops at a
# frame header SOFn, and at SOI, EOI or SOS, which libjpeg refuses before a frame
# header too. Past the end of the file it stops as well (the steps of the zeros
# read there do not count; see `_walk_on`).
_SOF_MARKERS = tuple(m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC))
_SEGMENT = 1 << 20
_STEP = np.ones(65536, np.int32)
_STEP[0xFF00:] = _SEGMENT
_STEP[0xFF00] = 2
_STEP[0xFFFF] = 1
_STEP[[0xFF01, *range(0xFFD0, 0xFFD8)]] = 2
_STEP[[0xFFD8, 0xFFD9, 0xFFDA, *(0xFF00 + m for m in _SOF_MARKERS)]] = 0

# The walk first follows the segments inside the first _WINDOW bytes: a table of
# the next segment's position for every offset, then _WINDOW_STEPS lookups in it.
# The usual libjpeg layout (APP0, DQT, DQT, SOFn at byte 158) needs nothing more;
# a file with longer segments (EXIF, ICC profiles), or bytes between its segments,
# goes on in a tf.while_loop that reads _JUMP bytes per step wherever they are: a
# segment per step, or a jump over what is not a marker to the next one among them.
_WINDOW = 256
_WINDOW_STEPS = 6
_JUMP = 32
# For `_walk_on`, with the word at every offset k of the bytes read: _MARKER_KEY + k
# is k where a marker starts (FF, then neither FF nor 00), at least _JUMP - 1
# elsewhere; _MARKER_STEP is _STEP for a marker, 0 for the other words.
_IS_MARKER = np.zeros(65536, bool)
_IS_MARKER[0xFF01:0xFFFF] = True
_MARKER_KEY = np.where(_IS_MARKER, 0, _JUMP - 1).astype(np.int32)
_MARKER_STEP = np.where(_IS_MARKER, _STEP, 0).astype(np.int32)
_OFFSETS = np.arange(_JUMP - 1, dtype=np.int32)


@out_of_line
def _walk_on(images, pos, is_jpeg, max_steps):
    """Follows JPEG marker segments from ``pos``, reading _JUMP bytes per step.

    A step follows one segment, or jumps over bytes that are no marker (stray bytes,
    fill bytes, FF 00) to the next marker among the _JUMP bytes read, or to the last
    of them. Returns where each image stopped and the frame header bytes there; for
    an image still walking after ``max_steps`` steps the first byte is _GAVE_UP.
    The other formats stop at once, at their end.
    """
    length = tf.strings.length(images)
    # The window walk may have gone past the end of a short file: that is the end.
    pos = tf.where(is_jpeg, tf.minimum(pos, length), length)
    jump = tf.fill(tf.shape(pos), _JUMP)
    marker_key, marker_step = tf.constant(_MARKER_KEY), tf.constant(_MARKER_STEP)

    def body(pos, step):
        del step
        chunk = tf.cast(_read(images, pos, _JUMP, length=jump), tf.int32)
        words = chunk[:, :-1] * 256 + chunk[:, 1:]
        # The offset of the first marker, or _JUMP - 1; then the segment there, if at 0.
        next_marker = tf.reduce_min(tf.gather(marker_key, words) + _OFFSETS, axis=1)
        step = next_marker + tf.minimum(tf.gather(marker_step, words[:, 0]), words[:, 2] + 2)
        # Past the end the read gives zeros, no marker: a walk that reaches the end (a
        # cut-off file, or one with no marker after some segment) stops there.
        moved = tf.minimum(pos + step, length)
        return moved, moved - pos

    pos, step = tf.while_loop(lambda pos, step: tf.reduce_any(step > 0), body,
                              (pos, tf.ones_like(pos)), maximum_iterations=max_steps)
    frame = tf.cast(_read(images, pos, _FRAME_BYTES), tf.int32)
    gave_up = tf.one_hot(tf.zeros_like(pos), _FRAME_BYTES, on_value=_GAVE_UP, off_value=0)
    return pos, tf.where((step > 0)[:, None], gave_up, frame)
