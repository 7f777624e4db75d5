"""The walks over a GIF's blocks: to its first image descriptor (`_gif_descriptors`,
whose 10 bytes the header pass reads where it reads a JPEG's frame header), then over
every frame (`_gif_frames`), for the pixels its decoder allocates; `_gif_blocks`
runs both for the GIFs of a batch."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ofrnn_tf.features.image_guards.reading import _FRAME_BYTES, _GAVE_UP, _read
from ofrnn_tf.features.images import (
    GIF_RUN, GIF_SPAN, MAX_GIF_BLOCKS, MAX_GIF_STEPS, out_of_line)

# GIF walk to the first image descriptor (2C, left, top, width, height, flags: 10
# bytes, as many as a JPEG frame header, so it takes the JPEG's `pos` and `frame`).
# Its blocks start after the global colour table. An extension is read as giflib's
# DGifSlurp reads it: 21, a label and a first sub-block (a size byte and that many
# bytes), then sub-blocks up to an empty one; an empty first sub-block does not end
# it. A step follows an extension header (21, label, first sub-block) or a further
# sub-block; at a block start any byte but 21 stops the walk (2C is the descriptor,
# the others are refused). First a window of _GIF_WINDOW bytes read where the
# blocks start, a table of the next state of every state in it (a position, at a
# block start or at a sub-block), and _GIF_WINDOW_STEPS lookups in it: PIL writes a
# NETSCAPE2.0 loop (3 steps), a comment (2 for a short one) and a graphics control
# extension (2). GIFs whose walk goes on (more blocks, or blocks beyond the window:
# long comments, XMP packets) walk again from the start in a tf.while_loop, a step
# per iteration, MAX_GIF_BLOCKS steps at most (the cap ofrnn-predict's
# `read_image_header` has too).
_GIF_WINDOW = 256
_GIF_WINDOW_STEPS = 16
_GIF_EXTENSION, _GIF_DESCRIPTOR, _GIF_TRAILER = 0x21, 0x2C, 0x3B

# GIF walk over every frame (`_gif_frames`; `ofrnn_tf.features.image_headers.gif_frames` is
# its twin and says what it reads), a step per iteration of a tf.while_loop: an image
# descriptor; a run of up to GIF_RUN sub-blocks of one size, checked with one strided
# read (a substr of a byte at each place a sub-block of that size would start); then
# the blocks and sub-blocks within GIF_SPAN bytes, by pointer doubling over a table of
# next states (_GIF_SPAN_ROUNDS squarings of the table follow a path of up to GIF_SPAN
# moves, each at least a byte forward). Its statistics: frames, their pixels together,
# the widest frame's width, the tallest frame's height.
_GIF_SPAN_ROUNDS = int(np.ceil(np.log2(GIF_SPAN)))
_GIF_STAT_FRAMES, _GIF_STAT_PIXELS, _GIF_STAT_WIDTH, _GIF_STAT_HEIGHT = range(4)
_GIF_UNCHECKED = np.iinfo(np.int64).max  # the pixels of a GIF whose walk ran out of steps


def _colour_table_bytes(flags):
    """The bytes of the GIF colour tables whose flags (int32) are `flags`, as
    `ofrnn_tf.features.image_headers.colour_table_bytes` counts them."""
    return tf.where(tf.bitwise.bitwise_and(flags, 0x80) > 0,
                    tf.bitwise.left_shift(6, tf.bitwise.bitwise_and(flags, 7)), 0)


@out_of_line
def _gif_descriptors(images, flags, pos, frame, is_gif):
    """``pos`` and ``frame`` with, for each GIF, the position of its first image
    descriptor and its 10 bytes, or of the block that stopped the walk (zeros past the
    end of the file; the first is _GAVE_UP after MAX_GIF_BLOCKS steps). See the GIF
    constants."""
    length = tf.strings.length(images)
    # The blocks start after the header (13 bytes) and the global colour table.
    start = 13 + _colour_table_bytes(flags)
    start = tf.where(is_gif, start, length)  # the others read nothing: zeros, a stop
    read = tf.cast(_read(images, tf.minimum(start, length), _GIF_WINDOW + 2), tf.int32)
    window, first_size = read[:, :_GIF_WINDOW], read[:, 2:]
    # States: p, at a block start, and _GIF_WINDOW + p, at a sub-block. The next state
    # of each, or the state itself at a stop (a block start but 21) and where the next
    # lies outside the window. Zeros past the end of the file read as empty sub-blocks,
    # then a stop: the walk ends there.
    offsets = tf.range(_GIF_WINDOW)
    header_end = offsets + 3 + first_size  # an extension's second sub-block
    block_next = tf.where(tf.logical_and(tf.equal(window, _GIF_EXTENSION),
                                         header_end < _GIF_WINDOW),
                          header_end + _GIF_WINDOW, offsets)
    sub_target = offsets + 1 + window
    sub_next = tf.where(tf.equal(window, 0),
                        tf.where(offsets + 1 < _GIF_WINDOW, offsets + 1, offsets + _GIF_WINDOW),
                        tf.where(sub_target < _GIF_WINDOW, sub_target + _GIF_WINDOW,
                                 offsets + _GIF_WINDOW))
    # Flat, with every row's states after the previous rows': one small gather a step
    # (a gather with batch_dims=1 costs a dozen ops).
    row = tf.range(tf.shape(images)[0]) * _GIF_WINDOW
    first = 2 * row
    following = tf.reshape(tf.concat([block_next, sub_next], axis=1) + first[:, None], [-1])
    state = first
    for _ in range(_GIF_WINDOW_STEPS):
        state = tf.gather(following, state)
    state -= first
    sub = state >= _GIF_WINDOW
    offset = state - tf.where(sub, _GIF_WINDOW, 0)
    others_pos, others_frame = pos, frame
    pos = start + offset
    moving = tf.logical_and(is_gif, tf.logical_or(sub, tf.equal(
        tf.gather(tf.reshape(window, [-1]), row + offset), _GIF_EXTENSION)))

    def walk_on():  # those still moving, again from the start: the loop counts the steps
        walked_pos, walked_sub = _gif_walk_on(images, start, moving)
        return tf.where(moving, walked_pos, pos), tf.where(moving, walked_sub, sub)

    pos, sub = tf.cond(tf.reduce_any(moving), walk_on, lambda: (pos, sub))
    frame = tf.cast(_read(images, tf.minimum(pos, length), _FRAME_BYTES), tf.int32)
    # A walk that ended still moving ran out of steps.
    gave_up = tf.logical_and(is_gif, tf.logical_or(sub, tf.equal(frame[:, 0], _GIF_EXTENSION)))
    gave_up_frame = tf.one_hot(tf.zeros_like(pos), _FRAME_BYTES, on_value=_GAVE_UP, off_value=0)
    return (tf.where(is_gif, pos, others_pos),
            tf.where(is_gif[:, None], tf.where(gave_up[:, None], gave_up_frame, frame),
                     others_frame))


@out_of_line
def _gif_walk_on(images, start, is_gif):
    """Follows GIF blocks from ``start``, a step per iteration, until each GIF stops
    or has taken MAX_GIF_BLOCKS steps. Returns where each stopped and whether at a
    sub-block."""
    length = tf.strings.length(images)
    pos, sub, steps = start, tf.zeros_like(is_gif), tf.zeros_like(start)

    def body(pos, sub, steps, moved):
        del moved
        read = tf.cast(_read(images, tf.minimum(pos, length), 3), tf.int32)
        byte = read[:, 0]
        go = tf.logical_and(tf.logical_and(is_gif, steps < MAX_GIF_BLOCKS),
                            tf.logical_or(sub, tf.equal(byte, _GIF_EXTENSION)))
        # An extension goes past its header to its second sub-block; a sub-block to
        # the next, or, when empty, to the next block start.
        pos = tf.where(go, pos + tf.where(sub, 1 + byte, 3 + read[:, 2]), pos)
        sub = tf.where(go, tf.logical_or(tf.logical_not(sub), tf.not_equal(byte, 0)), sub)
        return pos, sub, steps + tf.cast(go, tf.int32), tf.reduce_any(go)

    pos, sub, _, _ = tf.while_loop(lambda pos, sub, steps, moved: moved, body,
                                   (pos, sub, steps, tf.constant(True)),
                                   maximum_iterations=MAX_GIF_BLOCKS + 1)
    return pos, sub


def _gif_frame_headers(images, length, pos, sub, done, stats):
    """A step's first part: each GIF at an image descriptor counts its frame, if the
    data hold its local colour table and code size byte (else its walk ends), and goes
    on to the frame's first sub-block."""
    head = tf.cast(_read(images, tf.minimum(pos, length), _FRAME_BYTES), tf.int32)
    at_frame = tf.logical_and(tf.logical_not(tf.logical_or(done, sub)),
                              tf.equal(head[:, 0], _GIF_DESCRIPTOR))
    data_start = pos + _FRAME_BYTES + _colour_table_bytes(head[:, 9]) + 1
    counted = tf.logical_and(at_frame, data_start <= length)
    size = tf.cast(head[:, 5:9:2] + 256 * head[:, 6:10:2], tf.int64)  # width, height
    frame = tf.concat([tf.ones_like(size[:, :1]), size[:, :1] * size[:, 1:]], axis=1)
    stats = tf.where(counted[:, None], tf.concat([stats[:, :2] + frame,
                                                  tf.maximum(stats[:, 2:], size)], axis=1),
                     stats)
    return (tf.where(counted, data_start, pos), tf.logical_or(sub, counted),
            tf.logical_or(done, tf.logical_and(at_frame, tf.logical_not(counted))), stats)


def _gif_chain_runs(images, length, pos, sub, done):
    """A step's second part: each GIF at a sub-block of size s > 0 goes past the run of
    sub-blocks of size s that follows (GIF_RUN at most), read at a stride of s + 1."""
    size = tf.cast(_read(images, tf.minimum(pos, length), 1)[:, 0], tf.int32)
    stride = size + 1
    k = tf.range(GIF_RUN)
    # The first byte of each of the next GIF_RUN sub-blocks of that size, if they are.
    at = tf.minimum(pos[:, None] + k * stride[:, None], length[:, None])
    sizes = tf.io.decode_raw(tf.strings.substr(images[:, None], at, tf.ones_like(at)),
                             tf.uint8, fixed_length=1)
    sizes = tf.cast(sizes[:, :, 0], tf.int32)
    # Zeros past the end of the file never match (size > 0).
    count = tf.reduce_min(tf.where(tf.equal(sizes, size[:, None]), GIF_RUN, k), axis=1)
    going = tf.logical_and(tf.logical_and(sub, tf.logical_not(done)), size > 0)
    return tf.where(going, pos + count * stride, pos)


def _gif_spans(images, length, pos, sub, done):
    """A step's last part: each GIF follows blocks and sub-blocks while the next starts
    less than GIF_SPAN bytes after where the part began. States: p, a block start at
    offset p, and GIF_SPAN + p, a sub-block. A state's next state is the state itself
    where the walk stops: at an image descriptor (it goes on there next step), at a
    move beyond the span (it goes on from that state), and where it ends (the end of
    the data, the trailer, any other byte at a block start)."""
    span = tf.cast(_read(images, tf.minimum(pos, length), GIF_SPAN + _FRAME_BYTES), tf.int32)
    byte = span[:, :GIF_SPAN]
    offsets = tf.range(GIF_SPAN)
    inside = offsets < (length - pos)[:, None]
    extension_end = offsets + 3 + span[:, 2:GIF_SPAN + 2]  # its first sub-block read
    extension = tf.equal(byte, _GIF_EXTENSION)
    block_beyond = tf.logical_and(extension, extension_end >= GIF_SPAN)
    block_next = tf.where(tf.logical_and(extension, tf.logical_not(block_beyond)),
                          extension_end + GIF_SPAN, offsets)
    sub_end = offsets + 1 + byte
    sub_beyond = tf.logical_and(inside, sub_end >= GIF_SPAN)
    sub_next = tf.where(tf.logical_or(tf.logical_not(inside), sub_beyond), offsets + GIF_SPAN,
                        tf.where(tf.equal(byte, 0), offsets + 1, sub_end + GIF_SPAN))
    goes_on = tf.concat([tf.logical_or(block_beyond, tf.equal(byte, _GIF_DESCRIPTOR)),
                         sub_beyond], axis=1)
    # Flat, every row's states after the previous rows'; squared _GIF_SPAN_ROUNDS times.
    row = tf.range(tf.shape(pos)[0]) * (2 * GIF_SPAN)
    following = tf.reshape(tf.concat([block_next, sub_next], axis=1) + row[:, None], [-1])
    for _ in range(_GIF_SPAN_ROUNDS):
        following = tf.gather(following, following)
    start = row + tf.where(sub, GIF_SPAN, 0)
    stop = tf.gather(following, start)
    state = stop - row
    goes_on = tf.gather(tf.reshape(goes_on, [-1]), stop)
    stopped_sub = state >= GIF_SPAN
    moved = pos + state - tf.where(stopped_sub, GIF_SPAN, 0)
    return (tf.where(done, pos, moved), tf.where(done, sub, stopped_sub),
            tf.logical_or(done, tf.logical_not(goes_on)))


@out_of_line
def _gif_frames(images, start, is_gif):
    """For each GIF whose first image descriptor is at ``start``: the statistics of its
    frames (int64 [N, 4]: see the GIF constants), and whether its walk ran out of
    MAX_GIF_STEPS steps (bool [N]). Images that are not GIFs (``is_gif`` false) take no
    step and get zeros."""
    length = tf.strings.length(images)
    stats = tf.zeros(tf.stack([tf.size(start), 4]), tf.int64)

    def body(pos, sub, done, stats):
        pos, sub, done, stats = _gif_frame_headers(images, length, pos, sub, done, stats)
        pos = _gif_chain_runs(images, length, pos, sub, done)
        pos, sub, done = _gif_spans(images, length, pos, sub, done)
        for value, shape in ((pos, start.shape), (sub, start.shape), (done, start.shape),
                             (stats, start.shape.concatenate([4]))):
            value.set_shape(shape)
        return pos, sub, done, stats

    _, _, done, stats = tf.while_loop(
        lambda pos, sub, done, stats: tf.logical_not(tf.reduce_all(done)), body,
        (start, tf.zeros_like(is_gif), tf.logical_not(is_gif), stats),
        maximum_iterations=MAX_GIF_STEPS)
    return stats, tf.logical_not(done)


def _gif_pixels(stats, unchecked):
    """int64 [N]: the larger of a GIF's canvas (widest width by tallest height) and its
    frames' pixels together; _GIF_UNCHECKED where the walk ran out of steps."""
    canvas = stats[:, _GIF_STAT_WIDTH] * stats[:, _GIF_STAT_HEIGHT]
    return tf.where(unchecked, tf.constant(_GIF_UNCHECKED, tf.int64),
                    tf.maximum(canvas, stats[:, _GIF_STAT_PIXELS]))


@out_of_line
def _gif_blocks(images, flags, pos, frame, is_gif):
    """`_gif_descriptors`, then the pixels of every GIF's frames (`_gif_pixels`) for
    those whose first image descriptor was found (zeros for the others). Only those
    rows are walked: each step of the walk works on every row it is given, so a batch
    of JPEGs with one long GIF among them would otherwise pay its steps on every row."""
    pos, frame = _gif_descriptors(images, flags, pos, frame, is_gif)
    rows = tf.where(tf.logical_and(is_gif, tf.equal(frame[:, 0], _GIF_DESCRIPTOR)))
    gifs = tf.gather_nd(images, rows)
    pixels = _gif_pixels(*_gif_frames(gifs, tf.gather_nd(pos, rows),
                                      tf.ones_like(gifs, tf.bool)))
    return pos, frame, tf.scatter_nd(rows, pixels, tf.shape(images, out_type=tf.int64))
